"""``train.batch_size: auto``: the largest per-device batch whose full training step fits in memory.

Trial steps (forward, backward, optimizer step, EMA) at 1, 2, 4, ... until one runs out of memory,
then bisection between the last fit and the first failure; the result is reduced by a safety
margin, the minimum over ranks is taken (one rank's OOM must not hang the others), and the run
directory remembers it so a resumed run does not probe again.
"""

from __future__ import annotations

import gc
from typing import Callable

import torch


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def largest_fitting(trial: Callable[[int], None], upper: int) -> int:
    """Largest ``b <= upper`` with ``trial(b)`` not running out of memory (0 if even 1 fails)."""

    def fits(b: int) -> bool:
        try:
            trial(b)
            return True
        except Exception as exc:
            if not is_oom(exc):
                raise
            return False
        finally:
            free_memory()

    good, bad = 0, None
    b = 1
    while b <= upper:
        if not fits(b):
            bad = b
            break
        good = b
        b *= 2
    if bad is None:  # every power of two up to ``upper`` fits
        return upper if good != upper and fits(upper) else good
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def with_margin(b: int, margin: float) -> int:
    return max(1, int(b * (1.0 - margin))) if b > 0 else 0


def accumulation_for(global_batch: int, per_device: int, world: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) reaching at least ``global_batch`` with at most ``per_device``."""
    accum = max(1, -(-global_batch // (per_device * world)))
    per_device = -(-global_batch // (accum * world))
    return per_device, accum
