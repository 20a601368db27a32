"""The recipe interface: what a model family writes so the shared trainer can run it.

A recipe is plain PyTorch: it builds models and datasets from its typed config, computes losses in
``train_step`` and metrics in ``evaluate``. The trainer owns devices, precision, distribution,
accumulation, clipping, optimizers, schedules, EMA, checkpoints and logging.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub.config import RunConfig
from trainhub.kit.progress import no_progress

if TYPE_CHECKING:
    from trainhub.kit.media import MediaWriter


@dataclass
class OptimizerSpec:
    """One optimizer over the parameters of the named models.

    Values left ``None`` come from ``config.train`` (optimizer, lr, betas, weight_decay, max_grad_norm);
    ``optimizer`` names a registered optimizer (``trainhub_register_optimizers``).
    """

    models: tuple[str, ...]
    lr: Optional[float] = None
    betas: Optional[tuple[float, float]] = None
    weight_decay: Optional[float] = None
    max_grad_norm: Optional[float] = None
    optimizer: Optional[str] = None


@dataclass
class ForeignResume:
    """What :meth:`Recipe.load_foreign` returns when it restored more than weights, optimizer and step.

    ``ema`` holds EMA weights by model name (keys as in the model's ``state_dict``), loaded into the
    trainer's EMA instead of restarting it from the raw weights; ``restored`` names what was read, for the
    line the trainer prints.
    """

    step: int
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    restored: tuple[str, ...] = ()


@dataclass
class StepContext:
    """What ``Recipe.train_step`` sees. Runs under the trainer's autocast."""

    models: dict[str, nn.Module]  # possibly DDP/compile-wrapped: call them, don't reach into them
    optimizer: str  # the optimizer whose loss is being computed ("model" for single-optimizer recipes)
    step: int  # optimizer steps completed so far
    epoch: int
    micro_step: int  # index inside gradient accumulation
    device: torch.device
    config: RunConfig
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the optimizer phases of one micro-batch

    def unwrap(self, name: str) -> nn.Module:
        """The plain module behind ``models[name]`` (no DDP/compile wrapper)."""
        from trainhub.training.distributed import unwrap

        return unwrap(self.models[name])


@dataclass
class EvalContext:
    """What ``Recipe.evaluate`` sees. Models are in eval mode, EMA weights when EMA is on."""

    models: dict[str, nn.Module]
    data: Optional[Iterable[Any]]  # the validation loader (this rank's shard, with a progress bar), or None
    device: torch.device
    config: RunConfig
    step: int
    run_dir: Optional[Path]
    is_main: bool
    autocast: Callable[[], Any]
    media: "MediaWriter"  # media.image(name, array) / media.audio(name, wave, sr): written under samples/
    progress: Callable[..., Iterable[Any]] = no_progress  # progress(iterable, "sampling", total): a bar on the console


class Recipe:
    """Subclass, set ``name`` and ``config_class``, implement the build/step methods.

    Every run (and every ``trainhub sample`` or ``eval``) builds its own instance, so what a recipe keeps on ``self``
    belongs to one run: set up what the run derives from its config in :meth:`build_models`, which every path calls
    first.

    Multi-optimizer recipes (a GAN) set ``optimizer_order`` and return one :class:`OptimizerSpec`
    per name from :meth:`optimizers`; ``train_step`` is then called once per optimizer per
    micro-batch, in that order, with ``ctx.optimizer`` naming the phase and ``ctx.cache`` shared by
    the phases of one micro-batch. Each phase is backpropagated, clipped and stepped before the
    next phase runs.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[RunConfig]] = RunConfig
    optimizer_order: ClassVar[tuple[str, ...]] = ("model",)

    # ---- building ----
    def build_models(self, config: RunConfig) -> dict[str, nn.Module]:
        """Return the models by name (``{"model": net}`` for most recipes). Called on every rank, under the run's seed,
        first in every path (train, sample, eval): the place for per-run state derived from the config."""
        raise NotImplementedError

    def build_data(self, config: RunConfig) -> tuple[Dataset, Optional[Dataset]]:
        """Return ``(train, val)``; items may be tensors, tuples or dicts of tensors.

        Augmentation randomness must come from the global generators (``random``, ``numpy``, ``torch``) inside
        ``__getitem__``: the loader seeds them per batch from (seed, epoch, position), which is what makes a resumed
        run see the same augmentations. Called again with the phase's data settings when ``train.data_schedule``
        changes them."""
        raise NotImplementedError

    def optimizers(self, config: RunConfig, models: dict[str, nn.Module]) -> dict[str, OptimizerSpec]:
        """Optimizers by name, one per entry of ``optimizer_order``. Default: one over ``models['model']``."""
        return {"model": OptimizerSpec(models=("model",))}

    def frozen_models(self, config: RunConfig) -> tuple[str, ...]:
        """Models that are never trained or saved (a distillation teacher, a frozen VAE): eval mode, no grad."""
        return ()

    def ema_models(self, config: RunConfig) -> tuple[str, ...]:
        """Models that keep an EMA copy (used for eval and sampling)."""
        return ("model",)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The repeated blocks of ``model``: the units FSDP shards separately and activation checkpointing
        recomputes (default: the children of every ``nn.ModuleList``)."""
        return [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]

    def collate_fn(self, config: RunConfig) -> Optional[Callable[[list[Any]], Any]]:
        """How items become a batch (default: torch's ``default_collate``)."""
        return None

    # ---- training ----
    def train_step(self, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Compute the losses for ``ctx.optimizer``: ``{"loss": total, "l1": ..., ...}``.

        ``batch`` is already on ``ctx.device``; the call runs under the trainer's autocast. ``loss`` is what gets
        backpropagated; every other entry is logged (detached, averaged over the logging window). Return no ``loss``
        to skip this optimizer for the step (a GAN's discriminator before it starts).
        """
        raise NotImplementedError

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Metrics on this rank's validation shard, averaged by the trainer over the ranks that return each (one that
        only the main rank computes, say from its samples, keeps the main rank's value).

        ``ctx.data`` yields CPU batches: move them to ``ctx.device`` and run forwards under ``with ctx.autocast():``.
        Models are in eval mode with EMA weights, gradients are off, and the training random streams are untouched.
        Write pictures and sounds with ``ctx.media``; ``ctx.progress`` puts a bar on long loops."""
        return {}

    def loss_ranges(self, config: RunConfig) -> list[Any]:
        """Expected ranges of loss terms per phase (:class:`trainhub.observe.watch.LossRange`); the trainer warns
        once per excursion."""
        return []

    def noise_schedule(self, models: dict[str, nn.Module]) -> Optional[dict[str, torch.Tensor]]:
        """Diffusion recipes: named schedule tensors (betas, alphas_cumprod, ...) for the parameter monitor."""
        return None

    def load_foreign(self, path: str, models: dict[str, nn.Module],
                     optimizers: dict[str, torch.optim.Optimizer]) -> "Optional[int | ForeignResume]":
        """``--resume PATH`` where PATH is not a trainhub checkpoint: load another implementation's
        checkpoint into ``models``/``optimizers`` and return the step to continue from (None: not ours), or a
        :class:`ForeignResume` when the checkpoint also carries EMA weights. EMAs it does not name restart
        from the loaded weights."""
        return None

    # ---- other commands ----
    def map_config(self, raw: dict[str, Any], path: Path) -> dict[str, Any]:
        """Convert a foreign config layout (e.g. a reference implementation's JSON) to ours."""
        return raw

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Extra flags for ``trainhub sample NAME``."""

    def sample(self, models: dict[str, nn.Module], config: RunConfig, args: argparse.Namespace, out_dir: Path) -> None:
        """Generate outputs for ``trainhub sample NAME --checkpoint DIR`` into ``out_dir``."""
        raise NotImplementedError(f"recipe {self.name!r} has no sample command")

    def command(self, args: list[str]) -> None:
        """``trainhub NAME ARGS...``: recipe-specific tools (e.g. ``trainhub dit precompute-latents``).

        Parse ``args`` yourself (argparse); raise :class:`trainhub.UserError` for bad input.
        """
        raise NotImplementedError(f"recipe {self.name!r} has no commands of its own")

    def prepare(self, args: list[str]) -> None:
        """``trainhub prepare NAME ARGS...``: dataset preparation, if the recipe has one."""
        raise NotImplementedError(f"recipe {self.name!r} has no prepare command")
