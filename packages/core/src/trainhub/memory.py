"""System and device memory readings (psutil, torch.cuda), the >90% system-memory warning, and the
memory diagnosis of ``trainhub doctor`` (dataset size, workers x cache footprint, recommendations)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import psutil
import torch

WARN_PERCENT = 90.0
GiB = 2**30

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


# ---- doctor ------------------------------------------------------------------------------------

def human(n: float) -> str:
    """Bytes as KiB/MiB/GiB with two significant decimals."""
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def dataset_size(path: str | Path, max_files: int = 200_000) -> tuple[int, int, Counter, bool]:
    """(bytes, files, files per extension, complete) of a file or directory tree.

    Stops after ``max_files`` files (``complete`` is then False and the numbers are lower bounds).
    """
    p = Path(path)
    if p.is_file():
        return p.stat().st_size, 1, Counter({p.suffix.lower() or "(none)": 1}), True
    if not p.is_dir():
        from trainhub.errors import UserError

        raise UserError(f"dataset path {p} does not exist")
    total, files, exts = 0, 0, Counter()
    stack = [str(p)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file():
                    total += e.stat().st_size
                    files += 1
                    exts[os.path.splitext(e.name)[1].lower() or "(none)"] += 1
                    if files >= max_files:
                        return total, files, exts, False
            except OSError:
                continue
    return total, files, exts, True


def worker_base_bytes() -> int:
    """Estimated private memory of one DataLoader worker: pages a forked worker ends up copying
    (Python objects it touches, decode buffers); half this process's RSS, at least 256 MiB."""
    return max(256 * 2**20, _process().memory_info().rss // 2)


def doctor_report(dataset_path: Optional[str | Path] = None, cache_gb: Optional[float] = None,
                  num_workers: Optional[int] = None, shared_cache: bool = False,
                  local_processes: Optional[int] = None) -> list[str]:
    """Memory diagnosis lines for ``trainhub doctor``.

    ``cache_gb``: a per-dataset RAM cache size (e.g. a recipe's ``data.cache_gb``); it is held once
    per worker and per process unless ``shared_cache`` (shared memory). ``num_workers``: the planned
    ``loader.num_workers`` (default: the recommendation). ``local_processes``: training processes on
    this machine (default: the number of GPUs, at least 1).
    """
    lines: list[str] = []
    vm = psutil.virtual_memory()
    from trainhub.data import auto_workers

    cpus = os.cpu_count() or 1
    procs = local_processes or max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)
    rec_cpu = auto_workers(procs)  # what loader.num_workers=auto picks
    base = worker_base_bytes()
    main_rss = _process().memory_info().rss
    avail = vm.available
    budget = 0.8 * avail  # leave a fifth for the page cache and everything else

    data_bytes: Optional[int] = None
    if dataset_path is not None:
        data_bytes, files, exts, complete = dataset_size(dataset_path)
        kinds = ", ".join(f"{k} {n}" for k, n in exts.most_common(4))
        bound = "" if complete else "at least "
        lines.append(f"dataset  {dataset_path}: {bound}{files:,} files, {bound}{human(data_bytes)} on disk ({kinds})")

    cache = (cache_gb or 0.0) * GiB

    def footprint(workers: int) -> float:
        per_proc = main_rss + workers * base + cache * (1 if shared_cache or workers == 0 else workers)
        return procs * per_proc

    fit = 0
    while fit < 64 and footprint(fit + 1) <= budget:
        fit += 1
    rec = max(0, min(rec_cpu, fit)) if footprint(1) <= budget else 0
    why = (f"auto: {cpus} cpus / {procs} process{'es' if procs > 1 else ''} - 1, at most 8 = {rec_cpu}; "
           f"memory allows {fit}{'+' if fit >= 64 else ''}")
    lines.append(f"workers  recommended loader.num_workers={rec} ({why})")

    n = num_workers if num_workers is not None else rec
    need = footprint(n)
    cache_txt = ""
    if cache:
        where = "shared by all" if shared_cache else ("in each worker" if n else "in the main process")
        cache_txt = f" + cache {cache / GiB:.1f} GiB {where}"
    lines.append(
        f"memory   {procs} x (main {main_rss / GiB:.2f} GiB + {n} workers x ~{base / GiB:.2f} GiB{cache_txt}) = "
        f"{need / GiB:.1f} GiB of {avail / GiB:.1f} GiB available ({100 * need / max(avail, 1):.0f}%)"
    )
    if need > budget:
        lines.append(f"WARNING  that footprint exceeds 80% of available memory: lower loader.num_workers to {rec}"
                     + (", shrink the cache or put it in shared memory" if cache else ""))

    # cache recommendation: what is left after the processes, shared or split per worker
    left = budget - procs * (main_rss + n * base)
    if left <= 0:
        lines.append("cache    no room for a RAM cache with these workers")
    else:
        shared_gb = left / procs / GiB
        per_worker_gb = shared_gb / max(1, n)
        if data_bytes is not None and data_bytes / GiB <= shared_gb:
            lines.append(f"cache    the whole dataset ({human(data_bytes)}) fits: cache it once in shared memory "
                         f"(per-worker copies would need {human(data_bytes * max(1, n) * procs)})")
        else:
            lines.append(f"cache    at most {shared_gb:.1f} GiB in shared memory, or {per_worker_gb:.2f} GiB per worker if "
                         f"each worker keeps its own copy")
    if cache and not shared_cache and n > 1:
        lines.append("note     a per-index cache in a Dataset is duplicated in every worker; keep it in shared memory "
                     "or numpy arrays (see docs/observability.md)")
    shm = "/dev/shm"
    if n and os.path.isdir(shm):
        import shutil

        shm_total = shutil.disk_usage(shm).total
        if shm_total < 1 * GiB:
            lines.append(f"WARNING  /dev/shm is {shm_total / 2**20:.0f} MiB: workers pass batches through it; "
                         "raise it (docker --shm-size 8g) or use loader.num_workers=0")
    return lines

