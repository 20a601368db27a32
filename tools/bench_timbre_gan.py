"""timbre_gan throughput: dataset preparation (one process vs 4 shards) and training steps through trainhub.

Preparation: ``trainhub prepare timbre_gan`` on synthesised music (``--files`` pieces of 4 s, 8 segments each),
once as one process and once as 4 shard processes started together (``--shard-idx i --shard-count 4``), each
into a fresh folder; wall time from launch to the last exit, and the children's CPU time. Process start-up
(Python + torch import + plugin loading) is measured separately with an empty job and shown. The two outputs are
checked to be identical lists.

Training: ``trainhub.training.run.train`` on the embedded default data (prepared into the cache on first use), the
reconstruction-only phase (before ``gan.gan_start_epoch``: generator only) and the GAN phase (discriminator and
generator optimizers every step), median step time after a warm-up, samples/s, achieved GFLOP/s (FLOPs counted by
the trainer on the first step), and MFU on CUDA.

    python tools/bench_timbre_gan.py                              # both parts (training on CUDA when present)
    python tools/bench_timbre_gan.py --part prep --files 48
    python tools/bench_timbre_gan.py --part train --device cuda --batch-size 64 --compile
    python tools/bench_timbre_gan.py --device cpu --tiny          # smoke test: small job, tiny networks
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TINY = ["model.generator.channels=4", "model.generator.strides=[4]", "model.generator.bottleneck_dilations=[1,3]",
        "model.discriminator.channels=4", "model.discriminator.strides=[[2,2],[2,2]]",
        "model.discriminator.resolutions=[[512,128,512]]", "loss.stft_resolutions=[[512,128,512],[256,64,256]]",
        "data.synth.num_files=6", "data.synth.seconds=1.0", "data.val_every=3", "train.batch_size=4"]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch(jobs: list[list[str]]) -> tuple[float, float]:
    """Start every command at once; (wall seconds until the last exits, their CPU seconds)."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for cmd in jobs]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed: {' '.join(p.args)}\n{err[-2000:]}")
    return time.perf_counter() - t0, children_cpu() - cpu0


def bench_prep(files: int, shards: int, seconds: float) -> list[dict[str, Any]]:
    base = [sys.executable, "-m", "trainhub", "prepare", "timbre_gan", "--no-progress", f"data.synth.num_files={files}",
            f"data.synth.seconds={seconds}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        startup, _ = launch([base + ["--out", f"{tmp}/empty", "--max_files", "0"]])
        outs = {}
        for label, n in (("1 process", 1), (f"{shards} shards", shards)):
            out = Path(tmp) / label.replace(" ", "_")
            cmds = [base + ["--out", str(out)] + (["--shard-idx", str(i), "--shard-count", str(n)] if n > 1 else []) for i in range(n)]
            wall, cpu = launch(cmds)
            pairs = sum(len((out / f).read_text().splitlines()) for f in ("train.txt", "val.txt"))
            outs[label] = [(out / f).read_text() for f in ("train.txt", "val.txt")]
            rows.append({"mode": label, "processes": n, "pairs": pairs, "wall_s": wall, "cpu_s": cpu,
                         "pairs_per_min": 60.0 * pairs / wall, "pairs_per_cpu_min": 60.0 * pairs / cpu, "startup_s": startup})
        if len(set(map(tuple, outs.values()))) != 1:
            raise SystemExit("the sharded lists differ from the one-process lists")
    return rows


def bench_train(device: str, tiny: bool, batch: int | None, steps: int, warmup: int, compile_: bool, precision: str) -> list[dict[str, Any]]:
    from harness import timed_train

    dev = torch.device(device)
    rows = []
    for phase, start in (("reconstruction only", 10**6), ("GAN (D + G)", 0)):
        ov = (TINY if tiny else []) + [
            f"train.device={device}", f"train.precision={precision}", f"train.max_steps={steps + warmup}", "train.epochs=null",
            f"gan.gan_start_epoch={start}", "gan.warmup_epochs=0", "train.eval_every=0", "train.eval_at_end=false",
            "train.checkpoint_every=0", "train.best_metric=null", f"train.log_every={steps + warmup}",
            "loggers.console.enabled=false", f"train.compile={str(compile_).lower()}"]
        if batch:
            ov.append(f"train.batch_size={batch}")
        run = timed_train("timbre_gan", ov, dev, warmup)
        last, b = run.last_train, int(run.config["train"]["batch_size"])
        t = statistics.median(run.wall)
        rows.append({"phase": phase, "batch": b, "step_s": t, "cpu_step_s": statistics.median(run.cpu), "samples_per_s": b / t,
                     "gflops": last.get("flops_per_sample", 0.0) * b / t / 1e9, "mfu": last.get("mfu"),
                     "peak_mb": last.get("cuda_max_alloc_mb", 0.0)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("prep", "train", "both"), default="both")
    p.add_argument("--files", type=int, default=32, help="synthesised source pieces to prepare")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (16)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="smoke test: 8 source pieces of 1 s, tiny networks, few steps")
    args = p.parse_args()
    if args.tiny:
        args.files, args.steps, args.warmup = min(args.files, 8), min(args.steps, 6), min(args.warmup, 2)
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""), flush=True)
    if args.part in ("prep", "both"):
        rows = bench_prep(args.files, args.shards, 1.0 if args.tiny else 4.0)
        print(f"\nDataset preparation: {args.files} synthesised pieces; process start-up {rows[0]['startup_s']:.1f} s each "
              "(included in wall time)\n")
        print("| mode | processes | pairs | wall s | pairs/min (wall) | CPU s | pairs per CPU-min |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['processes']} | {r['pairs']} | {r['wall_s']:.1f} | {r['pairs_per_min']:.0f} | "
                  f"{r['cpu_s']:.1f} | {r['pairs_per_cpu_min']:.0f} |")
        print(f"\n{args.shards} shards vs 1 process (wall): {rows[1]['pairs_per_min'] / rows[0]['pairs_per_min']:.2f}x", flush=True)
    if args.part in ("train", "both"):
        rows = bench_train(args.device, args.tiny, args.batch_size, args.steps, args.warmup, args.compile, args.precision)
        print(f"\nTraining steps ({'tiny networks' if args.tiny else 'default config'}, {args.steps} steps after {args.warmup} "
              f"warm-up{', compiled' if args.compile else ''})\n")
        print("| phase | batch | step ms | CPU ms/step | samples/s | GFLOP/s | MFU | peak MB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
            print(f"| {r['phase']} | {r['batch']} | {1e3 * r['step_s']:.0f} | {1e3 * r['cpu_step_s']:.0f} | {r['samples_per_s']:.1f} | "
                  f"{r['gflops']:.1f} | {mfu} | {r['peak_mb']:.0f} |")
        print(f"\nGAN phase vs reconstruction-only step time: {rows[1]['step_s'] / rows[0]['step_s']:.2f}x")


if __name__ == "__main__":
    main()
