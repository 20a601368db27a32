"""System and device readings logged with every step (process RSS, system memory, CUDA memory, GPU
utilisation) and the >90% system-memory warning."""

from __future__ import annotations

import os
import warnings
from typing import Optional

import psutil
import torch

WARN_PERCENT = 90.0

_PROC: tuple[int, psutil.Process] | None = None
_GPU_UTIL_OK = True  # becomes False once torch.cuda.utilization is found unavailable (no NVML)


def _process() -> psutil.Process:
    global _PROC
    if _PROC is None or _PROC[0] != os.getpid():
        _PROC = (os.getpid(), psutil.Process())
    return _PROC[1]


def gpu_utilization(device: torch.device) -> Optional[float]:
    """Percent of the last sample period the GPU was busy (NVML through torch), or None where unavailable."""
    global _GPU_UTIL_OK
    if device.type != "cuda" or not _GPU_UTIL_OK:
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # no pynvml / amdsmi, or the driver refuses: stop asking
        _GPU_UTIL_OK = False
        return None


def system_metrics(device: torch.device) -> dict[str, float]:
    """Process RSS, system memory use, CUDA peak/reserved/total memory (MB) and GPU utilisation (%)."""
    proc = _process()
    vm = psutil.virtual_memory()
    out = {
        "rss_mb": proc.memory_info().rss / 2**20,
        "sys_mem_percent": vm.percent,
    }
    if device.type == "cuda":
        out["cuda_max_alloc_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_reserved_mb"] = torch.cuda.memory_reserved(device) / 2**20
        out["cuda_total_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
        util = gpu_utilization(device)
        if util is not None:
            out["gpu_util_percent"] = util
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
