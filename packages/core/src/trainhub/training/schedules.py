"""Learning-rate schedules by optimizer step: constant, warmup + cosine, warmup + linear decay."""

from __future__ import annotations

import math
from typing import Callable


def lr_lambda(kind: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base lr after ``step`` optimizer steps (for ``LambdaLR``)."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        if kind == "cosine":
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
        raise ValueError(f"unknown schedule {kind!r}; allowed: constant, cosine, linear")

    return f
