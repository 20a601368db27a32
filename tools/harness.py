"""Benchmark harness for the tools in this folder: a run clocked step by step through trainhub's own hooks.

    from harness import StepClock, timed_train     # tools/ is on sys.path when a tool runs as a script
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from trainhub import hookimpl


class StepClock:
    """A plugin recording wall and process-CPU time at the end of every optimizer step (for benchmarks)."""

    def __init__(self, sync: Optional[torch.device] = None) -> None:
        self.marks: list[tuple[float, float]] = []
        self.sync = sync

    def mark(self) -> None:
        if self.sync is not None and self.sync.type == "cuda":
            torch.cuda.synchronize(self.sync)
        self.marks.append((time.perf_counter(), time.process_time()))

    @hookimpl
    def trainhub_step_end(self, run, step, metrics) -> None:  # noqa: ANN001 (hook signature)
        self.mark()

    def deltas(self, skip: int = 0) -> tuple[list[float], list[float]]:
        """Per-step (wall, cpu) seconds after dropping the first ``skip`` steps."""
        m = self.marks[skip:]
        return [b[0] - a[0] for a, b in zip(m, m[1:])], [b[1] - a[1] for a, b in zip(m, m[1:])]


@dataclass
class TimedRun:
    """What :func:`timed_train` measured."""

    wall: list[float]  # seconds per optimizer step, after the warm-up steps
    cpu: list[float]  # process CPU seconds per step, same steps
    peak_mb: float  # CUDA max allocated during the run (0 off CUDA)
    last_train: dict[str, Any]  # the last ``train`` record of metrics.jsonl ({} if none was logged)
    config: dict[str, Any]  # the resolved config the run wrote


def timed_train(recipe: Any, overrides: list[str], device: torch.device, warmup: int = 0, plugins: tuple[Any, ...] = ()) -> TimedRun:
    """Benchmark helper: ``trainhub.training.run.train`` in a temporary run directory with a :class:`StepClock` and
    ``plugins`` registered for the run only (``overrides`` set the steps, logging and device)."""
    import yaml

    from trainhub.observe.analyze import read_records
    from trainhub.plugins import get_plugins
    from trainhub.training.run import train

    pm = get_plugins().pm
    clock = StepClock(device)
    for p in (clock, *plugins):
        pm.register(p)
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as d:
            run_dir = Path(d) / "run"
            train(recipe, overrides=overrides, run_dir=run_dir)
            records, _ = read_records(run_dir)
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    finally:
        for p in (clock, *plugins):
            pm.unregister(p)
    wall, cpu = clock.deltas(warmup)
    last = next((r for r in reversed(records) if r.get("kind") == "train"), {})
    return TimedRun(wall, cpu, peak, last, config)
