"""What the trainer hands to the optimizers, learning-rate schedules and samplers that plugins register.

Each is a registry filled through a hook (``trainhub_register_optimizers``, ``..._schedules``, ``..._samplers``;
core's own are registered the same way) and chosen by name in the config: ``train.optimizer``,
``train.schedule``, ``loader.sampler``, with extra keyword arguments from ``train.optimizer_args``,
``train.schedule_args`` and ``loader.sampler_args``. A factory is called as ``factory(target, settings,
**options)``; options it does not take are a one-line config error naming the key and what it takes.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

from trainhub.errors import ConfigError


@dataclass(frozen=True)
class OptimizerSettings:
    """The common optimizer settings: ``train`` values, overridden by the recipe's :class:`OptimizerSpec`."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    fused: bool  # use the fused kernel where the optimizer has one (``train.fused``; null: on for CUDA)
    device: Any  # the torch.device the parameters live on


@dataclass(frozen=True)
class ScheduleSettings:
    """What a schedule needs to know about the run; the factory returns ``multiplier(step) -> float`` (of the base
    lr after ``step`` optimizer steps), a pure function of the step, so a resume restores it by the step alone."""

    total_steps: int
    warmup_steps: int
    min_lr_ratio: float


@dataclass(frozen=True)
class SamplerSettings:
    """How the training set is split and ordered. The factory returns a
    :class:`~trainhub.training.data.ResumableSampler` (subclasses override ``epoch_order``)."""

    seed: int
    rank: int
    world: int
    shuffle: bool
    drop_last: bool
    group_window: int | None  # ``loader.group_window``


def warmup_then(settings: ScheduleSettings, decay: Callable[[float], float]) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then ``decay(progress)`` with progress going 0 -> 1 over the remaining
    steps: the shape of most schedules (the built-in cosine and linear are ``warmup_then`` of their curve)."""
    warmup, span = settings.warmup_steps, max(1, settings.total_steps - settings.warmup_steps)

    def multiplier(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, max(0.0, (step - warmup) / span)))

    return multiplier


def cosine_decay(settings: ScheduleSettings) -> Callable[[float], float]:
    low = settings.min_lr_ratio
    return lambda p: low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * p))


def call_factory(factory: Callable[..., Any], key: str, name: str, *args: Any, options: dict[str, Any]) -> Any:
    """``factory(*args, **options)``, with options the factory does not take refused as a config error naming ``key``."""
    params = inspect.signature(factory).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        takes = [p.name for p in params if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise ConfigError(f"{key}: {name} does not take {', '.join(unknown)}; it takes: {', '.join(takes) or 'nothing'}")
    try:
        return factory(*args, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {name} refused {options}: {e}") from None
