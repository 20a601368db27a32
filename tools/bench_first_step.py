"""The first optimizer step against the later ones: wall time and peak memory, FLOP counting on and off, in one run.

A run's first step counts its FLOPs (``train.measure_flops``, on by default) as it runs; this measures what that
costs. Each step is timed from ``trainhub_step_start`` to ``trainhub_step_end``; peak memory is the CUDA peak of the
step (reset at its start) or, on the CPU, the highest RSS a sampling thread (1 ms) saw during it. Ratios are the
first step over the median of steps 3..N. Targets: first step <= 1.1x, its peak memory <= 1.05x. A first step
also warms up (allocator, kernel choice) whether it counts or not, so the last line isolates what counting costs.

    python tools/bench_first_step.py                                  # dit DiT-S/4 on 32 px, batch 8, CPU
    python tools/bench_first_step.py --recipe sr3 --set train.batch_size=8
    python tools/bench_first_step.py --device cuda --set model.name=DiT-B/2 --set train.batch_size=64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from trainhub import hookimpl
from trainhub.plugins import get_plugins
from trainhub.training.run import train

DIT = ["model.name=DiT-S/4", "data.image_size=32", "train.batch_size=8", "train.gradient_accumulation_steps=1"]
QUIET = ["loader.num_workers=0", "loggers.console.enabled=false", "train.eval_every=0", "train.eval_at_end=false",
         "train.checkpoint_at_end=false", "train.log_every=1"]


class StepProbe:
    """Wall time and peak memory of every optimizer step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.proc = device, psutil.Process()
        self.times: list[float] = []
        self.peaks: list[float] = []
        self._t0, self._peak, self._stop = 0.0, 0.0, threading.Event()
        if device.type != "cuda":
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    @hookimpl
    def trainhub_step_start(self, run: Any, step: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._peak = self.proc.memory_info().rss
        self._t0 = time.perf_counter()

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peaks.append(torch.cuda.max_memory_allocated(self.device) / 2**20)
        else:
            self.peaks.append(self._peak / 2**20)
        self.times.append(time.perf_counter() - self._t0)

    def close(self) -> None:
        self._stop.set()


def measure(recipe: str, overrides: list[str], device: torch.device) -> StepProbe:
    probe = StepProbe(device)
    pm = get_plugins().pm
    pm.register(probe)
    try:
        with tempfile.TemporaryDirectory() as d:
            train(recipe, overrides=overrides, run_dir=Path(d) / "run")
    finally:
        pm.unregister(probe)
        probe.close()
    return probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="dit")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    args = p.parse_args()
    device = torch.device(args.device)
    base = (DIT if args.recipe == "dit" else []) + QUIET + [f"train.max_steps={args.steps}", f"train.device={args.device}", *args.set]
    print(f"{args.recipe} on {args.device}, {args.steps} steps, {' '.join(base)}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| measure_flops | first step s | later steps s (median) | time ratio | first peak MB | later peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    first = {}
    for flops in ("true", "false"):
        probe = measure(args.recipe, base + [f"train.measure_flops={flops}"], device)
        later_t, later_m = statistics.median(probe.times[2:]), statistics.median(probe.peaks[2:])
        first[flops] = probe.times[0]
        print(f"| {flops} | {probe.times[0]:.3f} | {later_t:.3f} | {probe.times[0] / later_t:.2f} | {probe.peaks[0]:.0f} | "
              f"{later_m:.0f} | {probe.peaks[0] / later_m:.3f} |")
    print(f"\nwhat counting costs the first step: {first['true'] / first['false']:.2f}x the same first step uncounted "
          "(the rest of a first step's excess is warm-up: allocator, kernel selection, first-call caches)")


if __name__ == "__main__":
    main()
