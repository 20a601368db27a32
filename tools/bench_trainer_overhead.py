"""Trainer overhead: the same model, data and optimizer through trainhub and through a hand-written loop.

Both sides: the built-in tiny MLP on SyntheticRegression (same input jitter), AdamW, gradient clipping at 1.0, a
DataLoader with the same batch size and workers. trainhub additionally does what it always does
(per-batch seeding for exact resume, metrics, hooks, non-finite checks); EMA, eval and checkpoints
are off so the comparison is step against step. Prints the median step time of each and the ratio
(target: trainhub / plain <= 1.05).

    python tools/bench_trainer_overhead.py [--steps 400] [--hidden 512] [--batch 64] [--workers 1 0] [--device cpu]

The first line of results (median wall step time over all repeats) is the number to compare with the target;
the per-pair ratios show how much of it is run-to-run noise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainhub.throughput import StepClock


def plain_loop(args: argparse.Namespace, device: torch.device, clock: StepClock) -> None:
    from torch.utils.data import DataLoader

    from trainhub.builtin import SyntheticRegression, TinyMLP

    torch.manual_seed(0)
    model = TinyMLP(args.dim, args.hidden, args.depth, 0.0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    data = SyntheticRegression(args.samples, args.dim, jitter=args.jitter)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    step = 0
    while step < args.steps:
        for batch in loader:
            x, y = batch["x"].to(device), batch["y"].to(device)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock.mark()
            step += 1
            if step >= args.steps:
                break


def trainhub_loop(args: argparse.Namespace, clock: StepClock) -> None:
    from trainhub.plugins import get_plugins
    from trainhub.run import train

    plugins = get_plugins()
    plugins.pm.register(clock, name="bench-clock")

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
            plugins.pm.unregister(name="bench-clock")


def measure(args: argparse.Namespace) -> None:
    """Alternate the two loops ABBA... and print median step times, their ratio and the per-pair ratios."""
    device = torch.device(args.device)
    loops = {"plain": lambda c: plain_loop(args, device, c), "trainhub": lambda c: trainhub_loop(args, c)}
    wall: dict[str, list[float]] = {"plain": [], "trainhub": []}
    cpu: dict[str, list[float]] = {"plain": [], "trainhub": []}
    pairs: list[float] = []  # per-pair ratio of median wall step times
    for r in range(args.repeats):  # ABBA: drift in machine load and run order hit both sides alike
        order = ("plain", "trainhub") if r % 2 == 0 else ("trainhub", "plain")
        medians = {}
        for name in order:
            clock = StepClock()
            loops[name](clock)
            w, c = clock.deltas(args.warmup)
            wall[name] += w
            cpu[name] += c
            medians[name] = statistics.median(w)
        pairs.append(medians["trainhub"] / medians["plain"])
    print(f"device {device}, tiny MLP hidden {args.hidden} x{args.depth}, batch {args.batch}, {args.workers} loader workers, "
          f"{args.steps} steps x {args.repeats} repeats, {args.threads} thread(s)")
    for label, table in (("wall", wall), ("process CPU", cpu)):
        mp, mo = statistics.median(table["plain"]), statistics.median(table["trainhub"])
        print(f"{label:>12}: plain {mp * 1e3:7.3f} ms/step  trainhub {mo * 1e3:7.3f} ms/step  ratio {mo / mp:.3f}")
    print(f"  wall ratio per pair: {' '.join(f'{x:.3f}' for x in pairs)}")
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
                        "0 loads in the training thread, where trainhub also seeds and saves/restores the RNGs per batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=8, help="run each loop this many times, in the order ABBA ABBA ...")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for workers in args.workers:
        measure(argparse.Namespace(**{**vars(args), "workers": workers}))


if __name__ == "__main__":
    main()
