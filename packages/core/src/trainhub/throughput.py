"""FLOPs per sample (counted once with torch.utils.flop_counter) and MFU against the device's peak."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from trainhub import hookimpl

# Dense peak FLOP/s by device name fragment and precision (vendor datasheets, no sparsity).
# "fp32" on Ampere/Hopper means TF32 tensor cores, which the trainer enables for fp32 matmuls.
PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 35e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
}


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of everything ``fn`` runs (mm, bmm, conv, SDPA forward and backward; elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192, iters: int = 10) -> float:
    """FLOP/s of an n^3 matmul on ``device`` (the fallback peak for devices not in :data:`PEAKS`)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def device_peak(device: torch.device, precision: str) -> Optional[tuple[float, str]]:
    """(peak FLOP/s, where it comes from) for a CUDA device, or None on CPU/MPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAKS.items():
        if key in name and precision in table:
            return table[precision], f"{key} datasheet {precision}"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measured_matmul_peak(device, dtype), f"measured {precision} matmul on {name}"


def mfu(flops_per_sample: float, samples_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak (all ranks: pass the global rate)."""
    return flops_per_sample * samples_per_sec / peak if peak > 0 else 0.0


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
    """Benchmark helper: ``trainhub.run.train`` in a temporary run directory with a :class:`StepClock` and
    ``plugins`` registered for the run only (``overrides`` set the steps, logging and device)."""
    import yaml

    from trainhub.analyze import read_records
    from trainhub.plugins import get_plugins
    from trainhub.run import train

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
