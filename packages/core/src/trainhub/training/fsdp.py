"""FSDP2 (``fully_shard``) for ``train.strategy: fsdp``: :class:`FSDPStrategy` shards the trained models and saves
and loads their shards.

Each block the recipe names (:meth:`Recipe.blocks`, default: the children of every
``nn.ModuleList``) and then the whole model are sharded along dim 0 over all ranks. Checkpoints keep
the shards as they are: ``<model>_shard_rank<R>.safetensors`` (and ``ema_...``), ``optimizer_rank<R>.pt``
with plain local tensors, and ``fsdp_layout.json`` describing which keys are sharded on which dim, so
they load without pickle and resume exactly with the same world size; :func:`trainhub.training.checkpoint.consolidate`
reads them back as one ordinary state dict (``trainhub export``, or a single process loading them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainhub.errors import UserError
from trainhub.recipe import Recipe
from trainhub.training import checkpoint as ckpt
from trainhub.training import distributed as dist
from trainhub.training.strategy import Strategy


def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_dtensor(t) else t


def shard(model: nn.Module, units: Iterable[nn.Module], device: torch.device, world: int, param_dtype: Optional[torch.dtype]) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in model.state_dict().items():
        if is_dtensor(v):
            dims = [p.dim for p in v.placements if hasattr(p, "dim")]
            out[k] = {"dim": dims[0] if dims else None, "shape": list(v.shape)}
        else:
            out[k] = {"dim": None, "shape": list(v.shape)}
    return out


def local_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: local(v).detach().contiguous().cpu() for k, v in state.items()}


def save_shards(directory: Path, rank: int, models: dict[str, nn.Module], emas: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, m in models.items():
        save_file(local_state(m.state_dict()), str(directory / f"{name}_shard_rank{rank}.safetensors"))
    for name, ema in emas.items():
        save_file(local_state(ema.state_dict()), str(directory / ckpt.ema_file(name).replace(".safetensors", f"_shard_rank{rank}.safetensors")))
    torch.save({n: _local_optim_state(o.state_dict()) for n, o in optimizers.items()}, directory / f"optimizer_rank{rank}.pt")


def _local_optim_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {"state": {i: {k: local(v).detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in st.items()} for i, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def write_layout(directory: Path, models: dict[str, nn.Module], world: int) -> None:
    ckpt.write_json_atomic(directory / ckpt.FSDP_LAYOUT, {"world_size": world, "models": {n: layout(m) for n, m in models.items()}})


@torch.no_grad()
def load_shards(directory: Path, rank: int, models: dict[str, nn.Module], emas: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, m in models.items():
        saved = load_file(str(directory / f"{name}_shard_rank{rank}.safetensors"))
        for k, v in m.state_dict().items():
            local(v).copy_(saved[k])
    for name, ema in emas.items():
        ema.load_state_dict(load_file(str(directory / ckpt.ema_file(name).replace(".safetensors", f"_shard_rank{rank}.safetensors"))))
    opt_state = torch.load(directory / f"optimizer_rank{rank}.pt", map_location="cpu", weights_only=True)
    for n, opt in optimizers.items():
        opt.load_state_dict(opt_state[n])
        for group in opt.param_groups:  # state tensors shaped like a sharded parameter become DTensors again
            for p in group["params"]:
                for k, v in opt.state.get(p, {}).items():
                    if is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.to_local().shape and v.dim() > 0:
                        from torch.distributed.tensor import DTensor

                        opt.state[p][k] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                                             shape=p.shape, stride=p.stride())


class FSDPStrategy(Strategy):
    """The trained models sharded over the ranks: each block of :meth:`Recipe.blocks`, then the whole model.

    A checkpoint keeps every rank's shards as they are (``<model>_shard_rank<R>.safetensors``, the EMA's, and
    ``optimizer_rank<R>.pt``) plus ``fsdp_layout.json``; eval swaps the EMA weights into the sharded model itself
    (a copy would be a second sharded model) and swaps them back afterwards.
    """

    def setup(self, models: dict[str, nn.Module], trained: list[str], recipe: Recipe, amp_dtype: Optional[torch.dtype]) -> None:
        for name in trained:
            shard(models[name], recipe.blocks(models[name]), self.device, self.world, amp_dtype)
        self.sharded = tuple(trained)
        self._swapped: dict[str, dict[str, torch.Tensor]] = {}

    def describe(self) -> str:
        return f"FSDP over {self.world} process{'es' if self.world > 1 else ''}"

    def check_auto_batch(self) -> None:
        raise UserError("train.batch_size=auto is not supported with train.strategy=fsdp (trial steps would need every "
                        "rank in lockstep); set a number")

    def save_parts(self, directory: Path, models: dict[str, nn.Module], emas: dict[str, Any],
                   optimizers: dict[str, torch.optim.Optimizer]) -> None:
        sharded = {n: models[n] for n in self.sharded}
        save_shards(directory, self.rank, sharded, {n: e for n, e in emas.items() if n in self.sharded}, optimizers)
        if self.rank == 0:
            write_layout(directory, sharded, self.world)

    def optimizer_states(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        return {}  # in each rank's optimizer_rank<R>.pt

    def load_parts(self, directory: Path, models: dict[str, nn.Module], emas: dict[str, Any],
                   optimizers: dict[str, torch.optim.Optimizer], saved: dict[str, Any]) -> None:
        load_shards(directory, self.rank, {n: models[n] for n in self.sharded},
                    {n: e for n, e in emas.items() if n in self.sharded}, optimizers)

    def anywhere(self, flag: bool) -> bool:
        return dist.any_true(flag, self.device)  # each rank checked only its own shards

    def eval_models(self, models: dict[str, nn.Module], emas: dict[str, Any]) -> dict[str, nn.Module]:
        out = super().eval_models({n: m for n, m in models.items() if n not in self.sharded}, emas)
        for n in self.sharded:
            if n in emas:
                self._swapped[n] = {k: local(v).detach().clone() for k, v in models[n].state_dict().items()}
                emas[n].copy_to(models[n])
            out[n] = models[n]
        return out

    @torch.no_grad()
    def after_eval(self, models: dict[str, nn.Module]) -> None:
        for n, saved in self._swapped.items():
            for k, v in models[n].state_dict().items():
                local(v).copy_(saved[k])
        self._swapped = {}

