"""Cost of the parameter-output monitor (loggers.param_outputs) on the steps that do not save.

Trains the built-in tiny MLP recipe several times in one process, alternating monitor off / on
(activations, weights, gradients, every --freq steps), records every optimizer step's wall time
through a hook (synchronising CUDA at each mark), and compares the median time of the non-saving
steps. Expect a ratio of ~1.00: forward hooks exist only around saving steps, and the other hooks
return after one modulo. Also prints what one saving step costs.

    python tools/bench_param_outputs.py                       # GPU if there is one
    python tools/bench_param_outputs.py --device cpu --tiny   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from harness import StepClock
from trainhub.plugins import get_plugins
from trainhub.training.run import train


def run(enabled: bool, args: argparse.Namespace, device: torch.device) -> tuple[list[float], list[float], list[float]]:
    """Step times after the warm-up: (non-saving steps, saving steps, steps right after a save)."""
    clock = StepClock(sync=device)
    plugins = get_plugins()
    plugins.pm.register(clock, name="bench-clock")  # registered before the loggers: marks before the monitor saves
    ov = [f"train.max_steps={args.steps}", f"model.hidden={args.hidden}", f"model.depth={args.depth}", "model.dim=64",
          "model.dropout=0.0", f"data.num_samples={args.batch * 64}", "data.val_samples=0", "train.eval_at_end=false",
          "train.best_metric=null", "train.eval_every=0", f"train.batch_size={args.batch}", "train.log_every=50", f"train.device={device.type}",
          "train.ema.enabled=false", "loader.num_workers=0", "loggers.console.enabled=false",
          f"loggers.param_outputs.enabled={str(enabled).lower()}", f"loggers.param_outputs.save_param_freq={args.freq}",
          "loggers.param_outputs.save_activations=true", "loggers.param_outputs.plots=false",
          "loggers.param_outputs.layers_to_monitor=[all]"]
    try:
        with tempfile.TemporaryDirectory() as d:
            train("tiny", overrides=ov, run_dir=Path(d) / "r")
    finally:
        plugins.pm.unregister(name="bench-clock")
    wall, _ = clock.deltas(0)
    # marks are taken at step ends: delta i is the time of step i + 2. The monitor's save work at the end of
    # step s lands in step s + 1's delta; its forward hooks are active during step s.
    plain, saving, after = [], [], []
    for i, t in enumerate(wall):
        step = i + 2
        if step > args.warmup:
            {0: saving, 1: after}.get(step % args.freq, plain).append(t)
    return plain, saving, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tiny", action="store_true", help="small and short: a smoke run")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 600; --tiny 120)")
    p.add_argument("--freq", type=int, default=100, help="save_param_freq")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 2048 on CUDA, 512 on CPU; --tiny 128)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 64 on CPU")
    p.add_argument("--repeats", type=int, default=None, help="off/on pairs, alternated (default 3; --tiny 1)")
    p.add_argument("--warmup", type=int, default=20, help="steps dropped at the start of each run")
    args = p.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    args.steps = args.steps or (120 if args.tiny else 600)
    args.hidden = args.hidden or (128 if args.tiny else 2048 if cuda else 512)
    args.batch = args.batch or (256 if cuda else 64)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    if args.tiny:
        args.freq = min(args.freq, 50)
    if not cuda:
        torch.set_num_threads(1)  # steadier CPU timings
    off, on, saves, after = [], [], [], []
    for _ in range(args.repeats):
        off += run(False, args, device)[0]
        plain, saving, post = run(True, args, device)
        on += plain
        saves += saving
        after += post
    mo, mn = statistics.median(off), statistics.median(on)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device {name}; MLP depth {args.depth} width {args.hidden}, batch {args.batch}; {args.repeats} x {args.steps} steps "
          f"per setting, save_param_freq {args.freq}")
    print(f"non-saving steps: monitor off {mo * 1e3:.3f} ms (n={len(off)}), monitor on {mn * 1e3:.3f} ms (n={len(on)}), "
          f"ratio {mn / mo:.3f} (expect ~1.00)")
    if saves and after:
        # a save touches two step times: forward hooks in step s, the writes at its end land in step s + 1's time
        extra = statistics.fmean(saves) + statistics.fmean(after) - 2 * mo
        print(f"one save (weights, gradients, activations, statistics): ~{extra * 1e3:.1f} ms = {extra / (args.freq * mo):.1%} "
              f"of the {args.freq} steps between saves ({len(saves)} saves measured)")


if __name__ == "__main__":
    main()
