"""System and device memory readings (psutil, torch.cuda) and the >90% system-memory warning."""

from __future__ import annotations

import os
import warnings

import psutil
import torch

WARN_PERCENT = 90.0


_PROC: tuple[int, psutil.Process] | None = None


def _process() -> psutil.Process:
    global _PROC
    if _PROC is None or _PROC[0] != os.getpid():
        _PROC = (os.getpid(), psutil.Process())
    return _PROC[1]


def system_metrics(device: torch.device) -> dict[str, float]:
    """Process RSS, system memory use and CUDA peak allocation, in MB / percent."""
    proc = _process()
    vm = psutil.virtual_memory()
    out = {
        "rss_mb": proc.memory_info().rss / 2**20,
        "sys_mem_percent": vm.percent,
    }
    if device.type == "cuda":
        out["cuda_max_alloc_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class MemoryWatchdog:
    """Warns once when system memory use passes ``WARN_PERCENT``."""

    def __init__(self) -> None:
        self.warned = False

    def check(self, percent: float) -> bool:
        if percent >= WARN_PERCENT and not self.warned:
            self.warned = True
            warnings.warn(
                f"system memory at {percent:.1f}% (> {WARN_PERCENT:.0f}%): lower loader.num_workers, "
                "the batch size or dataset caches to avoid swapping or the OOM killer",
                ResourceWarning,
                stacklevel=2,
            )
            return True
        return False
