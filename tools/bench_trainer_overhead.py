"""Trainer overhead: the same model, data and optimizer through trainhub and through a hand-written loop.

Both sides: the built-in tiny MLP on SyntheticRegression (same input jitter), AdamW, gradient clipping at 1.0, a
DataLoader with the same batch size and workers. trainhub additionally does what it always does
(per-batch seeding for exact resume, metrics, hooks, non-finite checks); EMA, eval and checkpoints
are off so the comparison is step against step.

The two loops run interleaved, step by step, in one process: a plugin runs one step of the hand-written loop
right after each trainhub step. Each side's step time runs from the end of the other side's step to the end
of its own (data loading included), so drift of the machine (clock, other load) hits both alike. Running the
two loops one after the other instead moved the ratio by up to 7% on a 2-core VM: the same plain loop ran
up to 6.5% slower after one unrelated 68-byte allocation before it, which changes where its tensors land.
Prints the median step time of each side and the ratio (target: trainhub / plain <= 1.05), per repeat and
over all repeats.

    python tools/bench_trainer_overhead.py [--steps 400] [--hidden 512] [--batch 64] [--workers 1 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from trainhub import hookimpl


class PlainLoop:
    """A hand-written training loop, advanced one step at a time."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from torch.utils.data import DataLoader

        from trainhub.builtin.tiny import SyntheticRegression, TinyMLP

        self.device = device
        self.model = TinyMLP(args.dim, args.hidden, args.depth, 0.0).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, foreach=True)
        data = SyntheticRegression(args.samples, args.dim, jitter=args.jitter)
        self.loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                                 persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(0))
        self.batches = self._forever()

    def _forever(self) -> Iterator[Any]:
        while True:
            yield from self.loader

    def step(self) -> None:
        batch = next(self.batches)
        x, y = batch["x"].to(self.device), batch["y"].to(self.device)
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class Interleave:
    """Plugin: after every trainhub step, time one plain step; record both sides' step times."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.sync = plain.device if plain.device.type == "cuda" else None
        self.trainhub_s: list[float] = []
        self.plain_s: list[float] = []
        self.since: Optional[float] = None  # end of the last plain step = start of the next trainhub step

    @hookimpl
    def trainhub_step_end(self, run, step, metrics) -> None:  # noqa: ANN001 (hook signature)
        if self.sync is not None:
            torch.cuda.synchronize(self.sync)
        t0 = time.perf_counter()
        if self.since is not None:
            self.trainhub_s.append(t0 - self.since)
        self.plain.step()
        t1 = time.perf_counter()
        self.plain_s.append(t1 - t0)
        self.since = t1


def run_once(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """One trainhub run with the plain loop interleaved; (trainhub, plain) step times after the warm-up."""
    from trainhub.plugins import get_plugins
    from trainhub.training.run import train

    torch.manual_seed(0)
    probe = Interleave(PlainLoop(args, torch.device(args.device)))
    plugins = get_plugins()
    plugins.pm.register(probe, name="bench-interleave")
    with tempfile.TemporaryDirectory() as d:
        overrides = [
            f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", f"model.hidden={args.hidden}",
            f"model.depth={args.depth}", f"model.dim={args.dim}", "model.dropout=0", f"data.num_samples={args.samples}",
            f"data.jitter={args.jitter}",
            "data.val_samples=0", "train.ema.enabled=false", "train.eval_at_end=false", "train.best_metric=null",
            "train.lr=1e-3", "train.log_every=25", "train.fused=false", f"loader.num_workers={args.workers}",
            "loggers.console.progress_bar=false", f"train.device={args.device}", "train.precision=fp32",
        ]
        try:
            train("tiny", overrides=overrides, run_dir=Path(d) / "run")
        finally:
            plugins.pm.unregister(name="bench-interleave")
    return probe.trainhub_s[args.warmup:], probe.plain_s[args.warmup + 1:]


def measure(args: argparse.Namespace) -> None:
    th_all: list[float] = []
    plain_all: list[float] = []
    ratios = []
    for _ in range(args.repeats):
        th, plain = run_once(args)
        th_all += th
        plain_all += plain
        ratios.append(statistics.median(th) / statistics.median(plain))
    mp, mt = statistics.median(plain_all), statistics.median(th_all)
    print(f"device {args.device}, tiny MLP hidden {args.hidden} x{args.depth}, batch {args.batch}, {args.workers} loader workers, "
          f"{args.steps} interleaved steps x {args.repeats} repeats, {args.threads} thread(s)")
    print(f"  plain {mp * 1e3:7.3f} ms/step  trainhub {mt * 1e3:7.3f} ms/step  ratio {mt / mp:.3f}")
    print(f"  ratio per repeat: {' '.join(f'{x:.3f}' for x in ratios)}")
    print("target: ratio <= 1.05\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=50, help="steps excluded from the median")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noise from other load)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--jitter", type=float, default=0.01, help="input-noise augmentation on both sides (the tiny recipe's default)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 0],
                   help="DataLoader workers on both sides, one measurement each (trainhub's default is 'auto', i.e. workers; "
                        "0 loads in the training thread, where trainhub also seeds the RNGs per batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=4, help="independent interleaved runs (fresh models and loaders)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for workers in args.workers:
        measure(argparse.Namespace(**{**vars(args), "workers": workers}))


if __name__ == "__main__":
    main()
