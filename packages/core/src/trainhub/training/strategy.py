"""How a run's models are placed on its processes: the trainer's one seam for distribution.

:class:`Strategy` keeps whole models on every rank (one process, or DDP); :class:`trainhub.training.fsdp.FSDPStrategy`
shards them (``train.strategy: fsdp``). The trainer calls the same methods either way, so the loop holds no
``if sharded`` branches: what differs (wrapping, which files a checkpoint has, how eval swaps in the EMA weights)
lives here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from trainhub.recipe import Recipe


class Strategy:
    """Whole models on every rank: one process, or DDP over ``world`` processes (rank 0 writes checkpoints)."""

    def __init__(self, device: torch.device, rank: int, world: int, compile: bool) -> None:
        self.device, self.rank, self.world, self.compile = device, rank, world, compile
        self.sharded: tuple[str, ...] = ()  # models whose parameters are split over the ranks
        self._eval_copies: dict[str, nn.Module] = {}

    def setup(self, models: dict[str, nn.Module], trained: list[str], recipe: Recipe, amp_dtype: Optional[torch.dtype]) -> None:
        """Prepare the models before the optimizers see their parameters (FSDP shards them here)."""

    def wrap(self, models: dict[str, nn.Module], trained: list[str]) -> dict[str, nn.Module]:
        """What ``train_step`` calls: DDP around each trained model when there are several processes, then
        ``torch.compile`` when ``train.compile`` is on."""
        out = {}
        for name, m in models.items():
            w: nn.Module = m
            if self.world > 1 and name in trained and name not in self.sharded and any(p.requires_grad for p in m.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                w = nn.parallel.DistributedDataParallel(m, device_ids=ids, gradient_as_bucket_view=True)
            if self.compile:
                w = torch.compile(w)
            out[name] = w
        return out

    def describe(self) -> str:
        return "one process" if self.world == 1 else f"DDP over {self.world} processes"

    def check_auto_batch(self) -> None:
        """Raise where ``train.batch_size=auto`` cannot probe (trial steps run without collectives)."""

    # ---- checkpoints ----
    def whole(self, models: dict[str, Any]) -> dict[str, Any]:
        """The entries saved in the checkpoint's shared files (``model.safetensors``, ``ema_*.safetensors``)."""
        return {n: m for n, m in models.items() if n not in self.sharded}

    def save_parts(self, directory: Path, models: dict[str, nn.Module], emas: dict[str, Any],
                   optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Every rank's own files of a checkpoint (none here: rank 0 writes whole models)."""

    def optimizer_states(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """The optimizer states that go into ``optimizer.pt``."""
        return {n: o.state_dict() for n, o in optimizers.items()}

    def load_parts(self, directory: Path, models: dict[str, nn.Module], emas: dict[str, Any],
                   optimizers: dict[str, torch.optim.Optimizer], saved: dict[str, Any]) -> None:
        """Restore what :meth:`save_parts` and :meth:`optimizer_states` wrote (``saved``: ``optimizer.pt``'s states)."""
        for n, o in optimizers.items():
            o.load_state_dict(saved[n])

    def anywhere(self, flag: bool) -> bool:
        """``flag`` from this rank's own state, agreed over the ranks where they hold different parts."""
        return flag

    # ---- eval ----
    def eval_models(self, models: dict[str, nn.Module], emas: dict[str, Any]) -> dict[str, nn.Module]:
        """The models eval sees: copies holding the EMA weights where there is an EMA, the models themselves else."""
        out = {}
        for n, m in models.items():
            if n in emas:
                if n not in self._eval_copies:
                    self._eval_copies[n] = copy.deepcopy(m)
                emas[n].copy_to(self._eval_copies[n])
                out[n] = self._eval_copies[n]
            else:
                out[n] = m
        return out

    def after_eval(self, models: dict[str, nn.Module]) -> None:
        """Undo what :meth:`eval_models` changed in the training models (nothing: it used copies)."""

