"""``train.batch_size: auto``: the largest per-device batch whose full training step fits in memory.

Trial steps (forward, backward, optimizer step, EMA) at 1, 2, 4, ... until one runs out of memory,
then bisection between the last fit and the first failure; the result is reduced by a safety
margin, the minimum over ranks is taken (one rank's OOM must not hang the others), and the run
directory remembers it so a resumed run does not probe again.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from trainhub.config import TrainConfig
from trainhub.errors import UserError
from trainhub.training import distributed as dist
from trainhub.training.devices import to_device


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


def choose(train_ds: Any, collate: Optional[Callable[[list[Any]], Any]], trial_step: Callable[[Any], None],
           tc: TrainConfig, world: int, device: torch.device, remembered: Optional[Path]) -> tuple[int, int, Optional[dict[str, int]]]:
    """``(batch_size, gradient_accumulation_steps, record)`` for ``train.batch_size: auto``.

    ``trial_step(batch)`` runs one full training step on a batch already on ``device``. ``remembered`` is the run
    directory's ``auto_batch_size.json``: read back instead of probing again when it exists; ``record`` is what to
    write there once the run is accepted (None when read back).
    """
    if remembered is not None and remembered.is_file():
        saved = json.loads(remembered.read_text())
        return saved["batch_size"], saved["gradient_accumulation_steps"], None
    n = len(train_ds)
    collate = collate or torch.utils.data.default_collate

    def trial(b: int) -> None:
        trial_step(to_device(collate([train_ds[i % n] for i in range(b)]), device, False, tc.channels_last))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    found = largest_fitting(trial, min(tc.auto_batch_max, n // world))
    found = dist.all_min_int(with_margin(found, tc.auto_batch_margin), device)
    if found < 1:
        raise UserError("batch_size auto: not even one sample fits in memory; reduce the model or use precision bf16")
    batch, accum = found, tc.gradient_accumulation_steps
    if tc.global_batch_size:
        batch, accum = accumulation_for(tc.global_batch_size, found, world)
    if dist.is_main():
        print(f"trainhub: batch_size auto -> {batch} per device (largest fitting {found} before margin and global batch), "
              f"gradient_accumulation_steps {accum}", flush=True)
    return batch, accum, {"batch_size": batch, "gradient_accumulation_steps": accum, "largest_fitting": found}
