"""The first optimizer step against the later ones: wall time and peak memory, FLOP counting on and off, in one run.

A run's first step counts its FLOPs (``train.measure_flops``, on by default) as it runs; this measures what that
costs. Each step is timed from ``trainhub_step_start`` to ``trainhub_step_end``; peak memory is the CUDA peak of the
step (reset at its start) or, on the CPU, the highest RSS a sampling thread (1 ms) saw during it. Ratios are the
first step over the median of steps 3..N. Targets: first step <= 1.1x, its peak memory <= 1.05x.

A first step also warms up whether it counts or not: on a CPU its activations, gradients, optimizer state and the
optimizer's intermediates are the process's first touch of that memory (page faults), on a GPU the allocator grows and
kernels are chosen. So the same run also times a hand-written loop on the same model, data and optimizer (the
recipe's ``train_step`` under the run's autocast, backward, clipping, the run's optimizer, foreach EMA): its own first
step over its later ones is what any loop pays, and trainhub's first step over the plain loop's first step is what
trainhub adds to it. On CUDA the process's context and cuBLAS handles are made before the first side, and the allocator's cache is
emptied before each, so every side's first step grows its own memory (kernel choices stay cached: the counted run,
measured first, pays them).

    python tools/bench_first_step.py                                  # dit DiT-S/4 on 32 px, batch 8, CPU
    python tools/bench_first_step.py --recipe sr3 --set train.batch_size=8
    python tools/bench_first_step.py --device cuda --set model.name=DiT-B/2 --set train.batch_size=64  # bf16
"""

from __future__ import annotations

import argparse
import itertools
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
from trainhub.recipe import StepContext
from trainhub.resolve import resolve_config
from trainhub.training.devices import amp_dtype, autocast, select_precision, to_device
from trainhub.training.optim import build_optimizer
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


def plain_loop(recipe: str, overrides: list[str], device: torch.device, steps: int) -> StepProbe:
    """The same recipe's model, data and train_step in a hand-written loop, timed like the trainhub steps, with the
    run's autocast dtype and the run's optimizer (the recipe's spec through ``build_optimizer``: its kind and kernel)."""
    plugins = get_plugins()
    rec = plugins.recipe(recipe)
    config = resolve_config(rec, plugins, None, overrides)
    tc = config.train
    torch.manual_seed(tc.seed)
    models = {k: m.to(device) for k, m in rec.build_models(config).items()}
    if len(models) != 1:
        raise SystemExit(f"the plain loop takes a recipe with one model; {recipe} has {sorted(models)}")
    (name, net), = models.items()
    params = [p for p in net.parameters() if p.requires_grad]
    precision = select_precision(tc.precision, device)
    if precision == "fp16":
        raise SystemExit("the plain loop has no grad scaler; use train.precision=bf16 or fp32")
    (spec,) = rec.optimizers(config, models).values()
    opt = build_optimizer(plugins, params, spec, tc, device)
    max_norm = spec.max_grad_norm or tc.max_grad_norm
    ema = [p.detach().clone() for p in params]
    train_ds, _ = rec.build_data(config)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=rec.collate_fn(config), generator=torch.Generator().manual_seed(0))
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    probe = StepProbe(device)
    try:
        for step in range(steps):
            probe.trainhub_step_start(None, step)
            batch = to_device(next(batches), device, False)
            with autocast(device, amp_dtype(precision)):
                out = rec.train_step(batch, StepContext(models, name, step, 0, 0, device, config))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if max_norm:
                torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 1 - tc.ema.decay)
            probe.trainhub_step_end(None, step + 1, {})
    finally:
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
    print("| measure_flops (or the plain loop) | first step s | later steps s (median) | time ratio | first peak MB | later peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    if device.type == "cuda":  # the process's context and cuBLAS handles, paid by no side
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.ones(64, 64, device=device, dtype=dtype)
            (x @ x).sum().item()
    first = {}
    for side in ("true", "false", "plain loop"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if side == "plain loop":
            probe = plain_loop(args.recipe, base, device, args.steps)
        else:
            probe = measure(args.recipe, base + [f"train.measure_flops={side}"], device)
        later_t, later_m = statistics.median(probe.times[2:]), statistics.median(probe.peaks[2:])
        first[side] = probe.times[0]
        print(f"| {side} | {probe.times[0]:.3f} | {later_t:.3f} | {probe.times[0] / later_t:.2f} | {probe.peaks[0]:.0f} | "
              f"{later_m:.0f} | {probe.peaks[0] / later_m:.3f} |")
    print(f"\ntrainhub's first step against the plain loop's first step: {first['true'] / first['plain loop']:.2f}x counted, "
          f"{first['false'] / first['plain loop']:.2f}x uncounted; counting costs {first['true'] / first['false']:.2f}x "
          "the same first step uncounted")


if __name__ == "__main__":
    main()
