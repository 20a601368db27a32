"""``trainhub doctor``: what this machine offers for training, and what would go wrong (devices, memory, disk,
plugins, and the memory footprint of a dataset with its workers and caches)."""

from __future__ import annotations

import os
import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional

import psutil
import torch

from trainhub.errors import UserError
from trainhub.observe.system import _process
from trainhub.training.data import auto_workers, cpu_count, cpu_threads, oversubscribed

GiB = 2**30


def report(dataset: str | None = None, cache_gb: float = 0.0, num_workers: int | None = None) -> tuple[list[str], bool]:
    ok = True
    lines = [f"python   {platform.python_version()} ({platform.machine()})", f"torch    {torch.__version__}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}   {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
                         f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        lines.append("cuda     not available (training runs on CPU" + (" or MPS)" if torch.backends.mps.is_available() else ")"))
    vm = psutil.virtual_memory()
    lines.append(f"memory   {vm.total / 2**30:.1f} GiB total, {vm.available / 2**30:.1f} GiB available ({vm.percent:.0f}% used)")
    cpus, load = cpu_count(), os.getloadavg()[0]
    on_cpu = not torch.cuda.is_available()
    workers = auto_workers(1, cpu_training=on_cpu)
    how = f"training on the CPU uses {cpu_threads(1, workers)} threads and {workers} loader workers" if on_cpu else \
        f"{workers} loader workers per GPU process"
    lines.append(f"cpus     {cpus} usable (load average {load:.1f}); {how}")
    if oversubscribed(load, cpus):
        lines.append(f"WARNING  the machine is oversubscribed: load {load:.1f} on {cpus} CPUs; other processes compete for "
                     "the cores and steps run slower and unevenly (lower their threads or wait)")
    disk = shutil.disk_usage(os.getcwd())
    lines.append(f"disk     {disk.free / 2**30:.1f} GiB free in {os.getcwd()}")
    if disk.free < 2 * 2**30:
        lines.append("WARNING  less than 2 GiB free: checkpoints may fail to save")
        ok = False
    shm = "/dev/shm"
    if os.path.isdir(shm):
        lines.append(f"shm      {shutil.disk_usage(shm).total / 2**30:.1f} GiB at /dev/shm (DataLoader workers share batches through it)")
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    for name, info in sorted(plugins.info.items()):
        lines.append(f"plugin   {name} ({info.distribution} {info.version}): {', '.join(f'{k}={len(v)}' for k, v in info.registered.items())}")
    for name, err in sorted(plugins.failed.items()):
        lines.append(f"FAILED   plugin {name}: {err}")
        ok = False
    if dataset and not os.path.isdir(dataset):
        raise UserError(f"--dataset {dataset} is not a folder")
    lines += doctor_report(dataset, cache_gb, num_workers)
    return lines, ok


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

    cpus = os.cpu_count() or 1
    procs = local_processes or max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)
    rec_cpu = auto_workers(procs, cpu_training=not torch.cuda.is_available())  # what loader.num_workers=auto picks
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

