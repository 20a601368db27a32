"""The built-in learning-rate schedules (registered as "constant", "cosine" and "linear"), each after a linear
warm-up of ``train.warmup_steps``."""

from __future__ import annotations

from typing import Callable

from trainhub.components import ScheduleSettings, cosine_decay, warmup_then


def constant(s: ScheduleSettings) -> Callable[[int], float]:
    return warmup_then(s, lambda p: 1.0)


def cosine(s: ScheduleSettings) -> Callable[[int], float]:
    """Half a cosine from 1 down to ``min_lr_ratio`` at the last step."""
    return warmup_then(s, cosine_decay(s))


def linear(s: ScheduleSettings) -> Callable[[int], float]:
    """A straight line from 1 down to ``min_lr_ratio`` at the last step."""
    low = s.min_lr_ratio
    return warmup_then(s, lambda p: low + (1.0 - low) * (1.0 - p))
