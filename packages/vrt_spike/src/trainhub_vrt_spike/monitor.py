"""Memory lines every ``train.memory_log_every`` steps of a vrt_spike run (a lifecycle-hook plugin)::

    [Step 100] Memory - Process: 15678.9MB (6.1%), System: 125.4/256.0GB (49.0%)

Process = resident memory of the training process plus its children (the DataLoader workers, where the
RAM caches live), and its share of physical memory. System = used (total - available) / total, and the
percentage psutil reports. Above 90% a warning follows advising to lower the cache or the workers.
"""

from __future__ import annotations

import sys
from typing import Any

import psutil

from trainhub.observe.system import WARN_PERCENT  # the same threshold as the trainer's memory watchdog


def memory_line(step: int) -> tuple[str, float]:
    """The line for ``step`` and the system memory percentage."""
    proc = psutil.Process()
    rss = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            rss += child.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    vm = psutil.virtual_memory()
    used = vm.total - vm.available
    line = (f"[Step {step}] Memory - Process: {rss / 2**20:.1f}MB ({100.0 * rss / vm.total:.1f}%), "
            f"System: {used / 2**30:.1f}/{vm.total / 2**30:.1f}GB ({vm.percent:.1f}%)")
    return line, vm.percent


def warning_lines(percent: float) -> list[str]:
    return [f"WARNING: System memory usage is critically high ({percent:.1f}%)!",
            "   Consider reducing data.cache_size_gb or the DataLoader workers (data.total_workers / loader.num_workers)."]


def emit(lines: list[str]) -> None:
    from tqdm import tqdm

    for line in lines:
        tqdm.write(line, file=sys.stderr)  # keeps an active progress bar intact


def every(run: Any) -> int:
    """The reporting interval for this run: ``train.memory_log_every`` of vrt_spike runs, else 0 (off)."""
    if getattr(run.recipe, "name", None) != "vrt_spike":
        return 0
    return int(getattr(run.config.train, "memory_log_every", 0) or 0)


def report(step: int) -> None:
    line, percent = memory_line(step)
    emit([line] + (warning_lines(percent) if percent > WARN_PERCENT else []))
