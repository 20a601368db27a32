#!/usr/bin/env python3
"""trainhub on a CUDA machine in one command: every recipe, exact resume, torchrun, and the step benchmarks.

    python tools/gpu_check.py                        # CUDA, at most 7.5 minutes; report in gpu_check/
    python tools/gpu_check.py --device cpu --tiny    # the same checks at toy sizes on CPU (the smoke test)
    python tools/gpu_check.py --only resume bench    # the checks whose names start so

Checks, each in its own subprocesses with its own timeout, so that a failure or a hang never loses the others:

- ``env``: plugins, configs and a dry run import without wandb and hatch (hidden here, absent on the device);
  versions of torch, CUDA, the GPU and the packages trainhub needs.
- ``train:<recipe>:bf16``: each recipe trains ``--steps`` steps (20) with bf16 autocast, fused AdamW and, on
  CUDA, ``train.compile``; ``train:<recipe>:fp16``: fp16 autocast with GradScaler (``--tiny``: tiny, and timbre_gan
  for a scaler across two optimizers; each run is a new process, ~5 s of imports on a CPU). Every logged loss must be
  finite (metrics.jsonl); steps/s and the time above the median step (compile, warm-up) are recorded.
- ``resume``: dit with ``train.deterministic``: a run, the same run with a real SIGTERM after half the steps
  (it must save and exit 0), resumed with ``--resume auto``; model and EMA must be bit-identical.
- ``torchrun:ddp`` / ``torchrun:fsdp``: ``trainhub run tiny --nproc-per-node 1`` (``train.strategy=fsdp``);
  one process still joins a process group (NCCL on CUDA, gloo on CPU), so the check fails unless NCCL made a
  communicator and, with fsdp, the checkpoint is sharded.
- ``bench:*``: tools/bench_dit.py and tools/bench_sr3.py (trainhub against a plain fp32/TF32 loop, torch.compile
  on the trainhub side), each alone on the device; img/s, ratio and MFU against the measured bf16 matmul peak,
  next to the targets.
- ``first-step``: tools/bench_first_step.py (DiT-B/2, batch 64, bf16), alone: the first step, which counts the
  run's FLOPs, against the later ones in time and peak memory (targets <= 1.1x and <= 1.05x), beside the same run
  uncounted and a hand-written loop.

env and the benchmarks (first-step last) run first, one at a time, then the rest ``--jobs`` at a time, all inside ``--budget``
seconds: a check that would not fit in what is left is skipped, and the report says so. The checks run this
checkout's ``packages/*/src`` (put first on PYTHONPATH); the installed distributions provide the plugins' entry
points and the dependencies.

Writes ``report.json``, ``report.md`` (also printed at the end) and ``gpu_check.log`` (every command with its
output) into ``--out``, rewritten after each check. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
PROBE_MARK = "gpu_check-env: "
HIDDEN = ("wandb", "hatch", "hatchling")  # absent on the device: nothing may need them

# Per recipe: (overrides on a GPU, overrides with --tiny). The recipes' defaults are already small models.
TIMBRE_DATA = ["data.synth.num_files=6", "data.synth.seconds=1.0", "data.val_every=3", "train.batch_size=4",
               "gan.gan_start_epoch=0", "gan.warmup_epochs=0"]  # the discriminator trains from the first step
TINY_FP16 = ("tiny", "timbre_gan")  # --tiny's fp16 runs: the same code path as the others' with one and two optimizers
RECIPES: dict[str, tuple[list[str], list[str]]] = {
    "tiny": (["train.batch_size=64"], []),
    "dit": (["train.batch_size=32"],  # the default: DiT-Ti/4 on 16x16 shapes
            ["model.name=DiT-Ti/8", "data.image_size=16", "data.num_samples=64", "model.diffusion_steps=100",
             "train.batch_size=4"]),
    "sr3": (["train.batch_size=16"],  # the 8 -> 32 UNet of width 32
            ["model.unet.inner_channel=16", "model.unet.norm_groups=4", "model.unet.channel_multiplier=[1,2]",
             "model.unet.attn_res=[8]", "model.unet.image_size=16", "data.l_resolution=4", "data.r_resolution=16",
             "model.beta_schedule.train.n_timestep=100", "train.batch_size=4"]),
    "tokenimage": (["data.max_documents=500", "train.batch_size=32"],
                   ["data.max_documents=300", "model.depth=1", "model.hidden=32", "model.heads=2", "train.batch_size=4",
                    "model.sample_steps=8", "data.val_images=8"]),  # the eval writes 4 samples, one forward per sampler step
    "vrt_spike": (["train.memory_log_every=0"],
                  ["model.depths=[2,1,1,1,1,1,1,1]", "model.embed_dims=[8,8,8,8,8,8,8,8]", "model.num_heads=1",
                   "model.window_size=4", "model.window_frames=2", "model.flow_width=4", "model.spike_dim=8",
                   "model.spike_segments=2", "model.fuse.heads=1", "model.spike_tsa.heads=1", "model.fuse_stages=[1,4]",
                   "data.seq_len=2", "data.train_crop_size=16", "data.num_bins=8", "data.embedded.size=32",
                   "data.embedded.frames=3", "data.embedded.train_sequences=2", "data.embedded.val_sequences=1",
                   "data.embedded.subframes=8", "train.batch_size=1", "train.memory_log_every=0"]),
    "timbre_gan": (TIMBRE_DATA,
                   TIMBRE_DATA + ["model.generator.channels=4", "model.generator.strides=[4]",
                                  "model.generator.bottleneck_dilations=[1,3]", "model.discriminator.channels=4",
                                  "model.discriminator.strides=[[2,2],[2,2]]",
                                  "model.discriminator.resolutions=[[512,128,512]]",
                                  "loss.stft_resolutions=[[512,128,512],[256,64,256]]"]),
}
RESUME_RECIPE = "dit"  # EMA, diffusion noise and timesteps, label dropout: every random stream must be restored


@dataclass(frozen=True)
class Bench:
    """One row of a benchmark tool's table, and its targets."""

    name: str
    tool: str  # in tools/
    args: tuple[str, ...]
    row: tuple[str, str]  # (column, value) that picks the row
    ratio_target: Optional[float] = None  # trainhub img/s over plain img/s
    mfu_target: Optional[float] = None  # trainhub MFU against the measured bf16 matmul peak


TIMED = ("--compile", "--steps", "20", "--warmup", "5")
BENCHES = [  # in order of priority when the budget runs short
    Bench("DiT-XL/2-b32", "bench_dit.py", ("--models", "DiT-XL/2", "--batch", "32", *TIMED), ("model", "DiT-XL/2"),
          ratio_target=3.0, mfu_target=0.40),
    Bench("SR3-16to128-b16", "bench_sr3.py", ("--batches", "16", *TIMED), ("batch", "16"), ratio_target=3.0),
    Bench("DiT-B/2-b64", "bench_dit.py", ("--models", "DiT-B/2", "--batch", "64", *TIMED), ("model", "DiT-B/2"),
          ratio_target=2.5),
]
TINY_BENCHES = [  # the tools' own CPU smoke sizes; no targets
    Bench("DiT-Ti/4-b4", "bench_dit.py", ("--tiny",), ("model", "DiT-Ti/4")),
    Bench("SR3-4to16-b4", "bench_sr3.py", ("--tiny", "--batches", "4"), ("batch", "4")),
]


@dataclass(frozen=True)
class Plan:
    device: str  # cuda or cpu
    tiny: bool
    steps: int
    jobs: int
    budget_s: float

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


class CheckFailed(Exception):
    """A check's verdict: the message, and the last lines of the command that failed (if one did)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass
class Result:
    name: str
    status: str  # pass, fail or skip
    seconds: float
    summary: str  # one line: the numbers, or why it failed or was skipped
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # last lines of the failing command's output


# ---- running commands ----------------------------------------------------------------------------------------

class Processes:
    """The process groups started by the checks, so that a timeout or an interruption ends them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], output: IO[bytes]) -> subprocess.Popen[bytes]:
        with self.lock:
            if self.stopping:
                raise CheckFailed("not started: gpu_check is stopping")
            # output to a file, not a pipe: a process that outlives the command cannot hold it open
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: a stop reaches its children
            self.live.add(proc)
            return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.live.discard(proc)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            live = list(self.live)
        for proc in live:
            signal_group(proc, signal.SIGTERM)
        for proc in live:
            stop(proc)


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM to the process group that ``proc`` leads (a trainhub run saves and exits, torchrun forwards it to
    its workers), SIGKILL after ``grace_s``."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()


PROCESSES = Processes()


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Context:
    """What a check runs with: its own folder and environment, and the time it may take."""

    plan: Plan
    work: Path
    env: dict[str, str]
    deadline: float
    log: list[str] = field(default_factory=list)  # each command and its output, for gpu_check.log

    def call(self, argv: Sequence[Any], extra_env: Optional[dict[str, str]] = None) -> str:
        """Run ``argv`` in this check's folder; its output (stdout and stderr). A non-zero exit, or running past the
        check's deadline, fails the check with the output's last lines."""
        args = [str(a) for a in argv]
        shown = " ".join(a if len(a) < 80 else a[:77] + "..." for a in args)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed(f"out of time before: {shown}")
        path = self.work / f"command-{len(self.log) + 1}.log"
        with path.open("wb") as output:
            proc = PROCESSES.start(args, self.work, {**self.env, **(extra_env or {})}, output)
            try:
                proc.wait(timeout=left)
                timed_out = False
            except subprocess.TimeoutExpired:
                stop(proc)
                timed_out = True
            except BaseException:  # gpu_check itself interrupted
                stop(proc)
                raise
            finally:
                PROCESSES.forget(proc)
        out = path.read_text(errors="replace")
        self.log.append(f"$ {shown}\n{out}\n[exit {proc.returncode}{', timed out' if timed_out else ''}]\n")
        if timed_out:
            raise CheckFailed(f"timed out after {left:.0f} s: {shown}", tail(out))
        if proc.returncode != 0:
            raise CheckFailed(f"exit {proc.returncode}: {shown}", tail(out))
        return out

    def trainhub(self, *args: Any, extra_env: Optional[dict[str, str]] = None) -> str:
        return self.call([sys.executable, "-m", "trainhub", *args], extra_env)


# ---- what the checks read ------------------------------------------------------------------------------------

def run_overrides(plan: Plan, steps: int) -> list[str]:
    """Every run: ``steps`` steps logged one by one, no eval, one checkpoint at the end."""
    return [f"train.max_steps={steps}", f"train.device={plan.device}", f"loader.num_workers={2 if plan.cuda else 0}",
            "train.log_every=1", "train.eval_every=0", "train.eval_at_end=false", "train.checkpoint_every=0",
            "train.checkpoint_every_epoch=false", "train.measure_flops=false", "loggers.console.progress_bar=false"]


def precision_overrides(mode: str, compile_: bool) -> list[str]:
    if mode == "fp16":
        return ["train.precision=fp16"]  # GradScaler; the optimizer is fused on CUDA by default
    return ["train.precision=bf16", "train.fused=true"] + (["train.compile=true"] if compile_ else [])


def recipe_overrides(plan: Plan, recipe: str) -> list[str]:
    gpu, toy = RECIPES[recipe]
    return toy if plan.tiny else gpu


def train_metrics(run_dir: Path, steps: int, status: str = "completed") -> dict[str, Any]:
    """metrics.jsonl of a finished run: one record per step with finite losses, ending with ``status``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckFailed(f"no {path}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    end = records[-1] if records else {}
    if end.get("status") != status:
        raise CheckFailed(f"metrics.jsonl ends with status {end.get('status')!r}, expected {status!r}")
    if [r["step"] for r in train] != list(range(1, steps + 1)):
        raise CheckFailed(f"expected train records for steps 1..{steps}, got steps {[r['step'] for r in train]}")
    bad = [(r["step"], k, v) for r in train for k, v in r.items() if k.startswith("loss") and not math.isfinite(v)]
    skipped = train[-1].get("nonfinite_skipped", 0)
    if bad or skipped:
        raise CheckFailed(f"non-finite losses (step, key, value): {bad[:5]}; steps skipped as non-finite: {skipped}")
    times = [r["step_time"] for r in train]
    median = statistics.median(times[1:] or times)
    return {"steps": len(train), "loss": {k: v for k, v in train[-1].items() if k.startswith("loss")},
            "steps_per_s": 1 / median, "samples_per_s": statistics.median(r["samples_per_sec"] for r in train[1:] or train),
            "first_step_s": times[0], "overhead_s": sum(max(0.0, t - median) for t in times)}


def checkpoint(run_dir: Path, step: int) -> Path:
    path = run_dir / "checkpoints" / f"checkpoint-{step}"
    if not (path / "training_state.json").is_file():
        have = sorted(p.name for p in (run_dir / "checkpoints").glob("*")) if (run_dir / "checkpoints").is_dir() else []
        raise CheckFailed(f"no complete {path.name} in {run_dir} (have: {', '.join(have) or 'none'})")
    return path


def safetensors_bytes(path: Path) -> dict[str, bytes]:
    """Each tensor's raw bytes, read by the file format alone (8-byte header length, JSON header, data)."""
    if not path.is_file():
        raise CheckFailed(f"no {path}")
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    start = 8 + size
    return {k: f"{v['dtype']}{v['shape']}".encode() + data[start + v["data_offsets"][0]:start + v["data_offsets"][1]]
            for k, v in header.items()}


def differing_tensors(a: Path, b: Path) -> tuple[list[str], int]:
    """(``file:tensor`` names whose dtype, shape or bytes differ between checkpoints ``a`` and ``b``, tensors compared),
    over the model's and the EMA's weights."""
    differ, count = [], 0
    for name in ("model.safetensors", "ema.safetensors"):
        ta, tb = safetensors_bytes(a / name), safetensors_bytes(b / name)
        count += len(ta)
        differ += [f"{name}:{k}" for k in sorted(ta.keys() | tb.keys()) if ta.get(k) != tb.get(k)]
    return differ, count


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The rows of the markdown table in ``text``, keyed by the header."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]] if len(cells) > 2 else []


def number(row: dict[str, str], prefix: str, suffix: str = "") -> Optional[float]:
    """The cell of the first column named ``prefix...suffix`` as a number (``2.5x`` -> 2.5, ``41.0%`` -> 0.41,
    ``-`` -> None)."""
    key = next((k for k in row if k.startswith(prefix) and k.endswith(suffix)), None)
    if key is None:
        raise CheckFailed(f"no column {prefix}...{suffix} in {list(row)}")
    cell = row[key]
    if cell == "-":
        return None
    return float(cell.rstrip("%")) / 100 if cell.endswith("%") else float(cell.rstrip("x"))


# ---- the checks ----------------------------------------------------------------------------------------------

def check_env(ctx: Context) -> tuple[str, dict[str, Any]]:
    out = ctx.call([sys.executable, THIS, "--probe-env", "--device", ctx.plan.device])
    line = next((ln for ln in out.splitlines() if ln.startswith(PROBE_MARK)), None)
    if line is None:
        raise CheckFailed("the probe printed no environment line", tail(out))
    info = json.loads(line[len(PROBE_MARK):])
    where = info["gpu"] or f"CPU ({info['cpus']} cores)"
    return (f"{where}, torch {info['torch']} (CUDA {info['cuda']}), python {info['python']}, "
            f"{len(info['recipes'])} recipes; {', '.join(HIDDEN)} not needed"), info


def check_train(ctx: Context, recipe: str, mode: str) -> tuple[str, dict[str, Any]]:
    compiled = mode == "bf16" and ctx.plan.cuda  # compile on CPU would cost the smoke test minutes
    run = ctx.work / "run"
    ctx.trainhub("run", recipe, "--run-dir", run, *run_overrides(ctx.plan, ctx.plan.steps),
                 *precision_overrides(mode, compiled), *recipe_overrides(ctx.plan, recipe))
    m = train_metrics(run, ctx.plan.steps)
    losses = ", ".join(f"{k} {v:.4g}" for k, v in m["loss"].items())
    summary = (f"{m['steps']} steps, {losses}, {m['steps_per_s']:.1f} steps/s, {m['overhead_s']:.1f} s above the median "
               f"step{' (compile)' if compiled else ''}")
    return summary, {**m, "compile": compiled}


def check_resume(ctx: Context) -> tuple[str, dict[str, Any]]:
    steps = ctx.plan.steps
    half = steps // 2
    ov = [*run_overrides(ctx.plan, steps), *precision_overrides("bf16", compile_=False),
          "train.deterministic=true", *recipe_overrides(ctx.plan, RESUME_RECIPE)]
    full, cut = ctx.work / "full", ctx.work / "cut"
    ctx.trainhub("run", RESUME_RECIPE, "--run-dir", full, *ov)
    ctx.call([sys.executable, THIS, "--stop-at", half, "run", RESUME_RECIPE, "--run-dir", cut, *ov])  # must exit 0
    train_metrics(cut, half, status="interrupted")
    checkpoint(cut, half)
    ctx.trainhub("run", RESUME_RECIPE, "--run-dir", cut, "--resume", "auto", *ov)
    train_metrics(cut, steps)  # each step logged once, across the stop
    differ, count = differing_tensors(checkpoint(full, steps), checkpoint(cut, steps))
    if differ:  # a second uninterrupted run tells a resume bug from kernels that are not deterministic
        again = ctx.work / "again"
        ctx.trainhub("run", RESUME_RECIPE, "--run-dir", again, *ov)
        control, _ = differing_tensors(checkpoint(full, steps), checkpoint(again, steps))
        cause = (f"two uninterrupted runs differ too ({len(control)} tensors): the kernels are not deterministic here"
                 if control else "two uninterrupted runs are identical: the resume is not exact")
        raise CheckFailed(f"resumed run differs from the uninterrupted one in {len(differ)} of {count} tensors "
                          f"(e.g. {', '.join(differ[:3])}); {cause}")
    return (f"{RESUME_RECIPE}: SIGTERM after step {half} saved and exited 0; resumed to step {steps}: model and EMA "
            f"bit-identical ({count} tensors)"), {"recipe": RESUME_RECIPE, "steps": steps, "stopped_after": half,
                                                  "tensors_compared": count, "identical": True}


def check_torchrun(ctx: Context, strategy: str) -> tuple[str, dict[str, Any]]:
    run = ctx.work / "run"
    out = ctx.trainhub("run", "tiny", "--nproc-per-node", "1", "--run-dir", run, *run_overrides(ctx.plan, ctx.plan.steps),
                       f"train.strategy={strategy}", *recipe_overrides(ctx.plan, "tiny"),
                       extra_env={"NCCL_DEBUG": "INFO"} if ctx.plan.cuda else None)
    m = train_metrics(run, ctx.plan.steps)
    saved = checkpoint(run, ctx.plan.steps)
    world = json.loads((saved / "training_state.json").read_text())["world_size"]
    nccl = ("NCCL INFO" in out) if ctx.plan.cuda else None  # NCCL_DEBUG=INFO prints once a communicator is made
    sharded = (saved / "fsdp_layout.json").is_file()
    if nccl is False:
        raise CheckFailed("no NCCL communicator was made (NCCL_DEBUG=INFO printed nothing)", tail(out))
    if strategy == "fsdp" and not sharded:
        raise CheckFailed("train.strategy=fsdp under torchrun wrote no sharded checkpoint (no fsdp_layout.json)", tail(out))
    notes = [f"world size {world}", f"loss {m['loss']['loss']:.4g}"]
    if nccl:
        notes.append("NCCL communicator made")
    if strategy == "fsdp":
        notes.append("checkpoint sharded (fsdp_layout.json)")
    return "; ".join(notes), {**m, "world_size": world, "nccl_communicator": nccl, "sharded": sharded}


def check_bench(ctx: Context, bench: Bench) -> tuple[str, dict[str, Any]]:
    out = ctx.call([sys.executable, ROOT / "tools" / bench.tool, "--device", ctx.plan.device, *bench.args])
    column, value = bench.row
    row = next((r for r in markdown_rows(out) if r.get(column) == value), None)
    if row is None:
        raise CheckFailed(f"no row {column}={value} in the table of {bench.tool}", tail(out))
    peak = re.search(r"measured bf16 matmul peak (\d+) TFLOP/s", out)
    d: dict[str, Any] = {
        "plain_img_s": number(row, "plain", "img/s"), "trainhub_img_s": number(row, "trainhub img/s"),
        "ratio": number(row, "ratio"), "mfu_plain": number(row, "MFU plain"), "mfu_trainhub": number(row, "MFU trainhub"),
        "eval_loss_plain": number(row, "eval loss plain"), "eval_loss_trainhub": number(row, "eval loss trainhub"),
        "matmul_peak_tflops": float(peak.group(1)) if peak else None,
        "ratio_target": bench.ratio_target, "mfu_target": bench.mfu_target,
    }
    sane = [d["plain_img_s"], d["trainhub_img_s"], d["eval_loss_plain"], d["eval_loss_trainhub"]]
    if not all(v is not None and math.isfinite(v) and v > 0 for v in sane):
        raise CheckFailed(f"implausible numbers: {row}", tail(out))
    met = []
    if bench.ratio_target is not None:
        met.append(d["ratio"] >= bench.ratio_target)
    if bench.mfu_target is not None:
        met.append(d["mfu_trainhub"] is not None and d["mfu_trainhub"] >= bench.mfu_target)
    d["targets_met"] = all(met) if met else None
    mfu = f", MFU {d['mfu_plain']:.1%} -> {d['mfu_trainhub']:.1%}" if d["mfu_trainhub"] is not None else ""
    verdict = {True: "; targets met", False: "; TARGET MISSED", None: ""}[d["targets_met"]]
    return f"{d['plain_img_s']:.1f} -> {d['trainhub_img_s']:.1f} img/s ({d['ratio']:.2f}x){mfu}{verdict}", d


FIRST_STEP = ("--set", "model.name=DiT-B/2", "--set", "train.batch_size=64", "--set", "train.precision=bf16")
TINY_FIRST_STEP = ("--steps", "5", "--set", "model.name=DiT-Ti/8", "--set", "data.image_size=16", "--set", "train.batch_size=4")


def check_first_step(ctx: Context) -> tuple[str, dict[str, Any]]:
    """tools/bench_first_step.py: the first step (FLOPs counted) against the later ones, in time and peak memory;
    targets <= 1.1x and <= 1.05x on CUDA."""
    args = TINY_FIRST_STEP if ctx.plan.tiny else FIRST_STEP
    out = ctx.call([sys.executable, ROOT / "tools" / "bench_first_step.py", "--device", ctx.plan.device, *args])
    rows = {r.get("measure_flops (or the plain loop)"): r for r in markdown_rows(out)}
    if set(rows) != {"true", "false", "plain loop"}:
        raise CheckFailed(f"expected rows true, false and plain loop in the table of bench_first_step.py, got {sorted(rows)}",
                          tail(out))
    d: dict[str, Any] = {side.replace(" ", "_"): {"first_s": number(r, "first step s"), "later_s": number(r, "later steps s"),
                                                  "time_ratio": number(r, "time ratio"), "memory_ratio": number(r, "memory ratio")}
                         for side, r in rows.items()}
    counted = d["true"]
    if not all(v is not None and math.isfinite(v) and v > 0 for side in d.values() for v in side.values()):
        raise CheckFailed(f"implausible numbers: {rows}", tail(out))
    d["vs_plain_first"] = counted["first_s"] / d["plain_loop"]["first_s"]
    d["targets_met"] = None if ctx.plan.tiny else counted["time_ratio"] <= 1.1 and counted["memory_ratio"] <= 1.05
    verdict = {True: "; targets met", False: "; TARGET MISSED", None: ""}[d["targets_met"]]
    return (f"first/later step {counted['time_ratio']:.2f}x time, {counted['memory_ratio']:.3f}x peak memory (FLOPs counted; "
            f"uncounted {d['false']['time_ratio']:.2f}x, plain loop {d['plain_loop']['time_ratio']:.2f}x); first step "
            f"{d['vs_plain_first']:.2f}x the plain loop's{verdict}"), d


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], tuple[str, dict[str, Any]]]  # (summary, details), or raises CheckFailed
    estimate_s: float  # skipped when less of the budget is left
    timeout_s: float
    alone: bool = False  # nothing else runs meanwhile (the benchmarks' timings)


def catalogue(plan: Plan) -> list[Check]:
    """Every check, in the order they start: env and the benchmarks one at a time, then the rest --jobs at a time,
    the longest first. The benchmarks come early because they are the longest to repeat in a second lease."""
    checks = [Check("env", check_env, 15, 120, alone=True)]
    for b in TINY_BENCHES if plan.tiny else BENCHES:
        checks.append(Check(f"bench:{b.name}", partial(check_bench, bench=b), 20 if plan.tiny else 90, 300, alone=True))
    checks.append(Check("first-step", check_first_step, 15 if plan.tiny else 40, 200, alone=True))
    checks += [Check(f"train:{r}:bf16", partial(check_train, recipe=r, mode="bf16"), 45, 200) for r in RECIPES]
    checks.append(Check("resume", check_resume, 40, 200))
    checks += [Check(f"torchrun:{s}", partial(check_torchrun, strategy=s), 20, 120) for s in ("ddp", "fsdp")]
    checks += [Check(f"train:{r}:fp16", partial(check_train, recipe=r, mode="fp16"), 15, 120)
               for r in (TINY_FP16 if plan.tiny else RECIPES)]
    return checks


# ---- running the checks and writing the report -------------------------------------------------------------

class Report:
    """The results so far, written to report.json, report.md and gpu_check.log after every check."""

    def __init__(self, out: Path, plan: Plan, names: list[str]) -> None:
        self.out, self.plan, self.names = out, plan, names
        self.results: dict[str, Result] = {}
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        self.host = {"python": platform.python_version(), "platform": platform.platform(),
                     "cpus": len(os.sched_getaffinity(0)), "commit": git_commit()}
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.log").write_text("")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def add(self, result: Result, log: list[str]) -> None:
        with self.lock:
            self.results[result.name] = result
            with (self.out / "gpu_check.log").open("a") as f:
                f.write(f"==== {result.name}: {result.status} ({result.seconds:.1f} s) {result.summary}\n" + "".join(log))
            self.write()

    def as_json(self) -> dict[str, Any]:
        ordered = [self.results[n] for n in self.names if n in self.results]
        counts = {s: sum(r.status == s for r in ordered) for s in ("pass", "fail", "skip")}
        return {"tool": "tools/gpu_check.py", "started": self.started, "wall_s": round(self.elapsed(), 1),
                "plan": asdict(self.plan), "host": self.host, "counts": counts, "checks": [asdict(r) for r in ordered]}

    def write(self) -> None:
        report = self.as_json()
        (self.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (self.out / "report.md").write_text(markdown(report))


def git_commit() -> Optional[str]:
    """The checkout's commit, where it has its git history."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def markdown(report: dict[str, Any]) -> str:
    """report.md: one line per check, the benchmarks against their targets, the failures' last lines."""
    plan, host, counts, checks = report["plan"], report["host"], report["counts"], report["checks"]
    env = next((c["details"] for c in checks if c["name"] == "env" and c["status"] == "pass"), {})
    sizes = "toy sizes" if plan["tiny"] else "small models"
    lines = [f"# trainhub GPU check: {env.get('gpu') or plan['device']}", "",
             (f"{report['started']}, commit {host['commit'] or 'unknown'}, torch {env.get('torch', '?')}, {sizes}, "
              f"{plan['steps']} steps per run, {plan['jobs']} checks at a time, budget {plan['budget_s']:.0f} s, wall "
              f"{report['wall_s']:.0f} s: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip"), "",
             "| check | status | s | result |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['seconds']:.0f} | {c['summary']} |" for c in checks]
    benches = [c for c in checks if c["name"].startswith("bench:") and c["status"] == "pass"]
    if benches:
        peak = benches[0]["details"]["matmul_peak_tflops"]
        how = ("trainhub in fp32 (precision auto on CPU)" if plan["device"] == "cpu" else
               "trainhub with bf16 autocast, fused AdamW, foreach EMA" + ("" if plan["tiny"] else " and torch.compile"))
        lines += ["", (f"Step benchmarks (tools/bench_dit.py, tools/bench_sr3.py): {how}, against a plain fp32/TF32 loop; "
                       f"MFU against the measured bf16 matmul peak ({f'{peak:.0f} TFLOP/s' if peak else 'none on CPU'})."),
                  "", ("| benchmark | plain img/s | trainhub img/s | ratio | target | MFU plain | MFU trainhub | target | "
                       "eval loss plain / trainhub |"), "|---|---|---|---|---|---|---|---|---|"]
        for c in benches:
            d = c["details"]
            ratio_target = f">= {d['ratio_target']:g}x" if d["ratio_target"] else "-"
            mfu_target = f">= {percent(d['mfu_target'])}" if d["mfu_target"] else "-"
            lines.append(f"| {c['name'].removeprefix('bench:')} | {d['plain_img_s']:.1f} | {d['trainhub_img_s']:.1f} | "
                         f"{d['ratio']:.2f}x | {ratio_target} | {percent(d['mfu_plain'])} | {percent(d['mfu_trainhub'])} | "
                         f"{mfu_target} | {d['eval_loss_plain']:.4f} / {d['eval_loss_trainhub']:.4f} |")
    for c in checks:
        if c["status"] == "fail":
            lines += ["", f"## {c['name']}: {c['summary']}", "", "```", c["error"] or "(no output)", "```"]
    return "\n".join(lines) + "\n"


def percent(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1%}"


def child_env(work: Path, threads: Optional[int]) -> dict[str, str]:
    """The environment of a check's commands: this checkout's sources first, data caches in the check's own folder
    (two runs of one recipe may prepare the same data at the same time), no inherited torchrun variables."""
    dropped = ("TRAINHUB_CACHE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    sources = [str(p) for p in sorted((ROOT / "packages").glob("*/src"))]
    env["PYTHONPATH"] = os.pathsep.join(sources + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else sources)
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_CACHE_HOME"] = str(work / "cache")
    if threads is not None:  # checks that share the machine share its cores
        env["OMP_NUM_THREADS"] = env["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    return env


def execute(check: Check, plan: Plan, report: Report, root: Path, deadline: float) -> None:
    """Run one check (or skip it when the budget cannot hold it) and add its result to the report."""
    left = deadline - time.monotonic()
    if left < check.estimate_s:
        report.add(Result(check.name, "skip", 0.0, f"skipped: {max(left, 0):.0f} s of the budget left, it needs about "
                                                    f"{check.estimate_s:.0f} s"), [])
        print(f"[{report.elapsed():6.1f}s] skip  {check.name} (budget)", flush=True)
        return
    work = root / re.sub(r"[^\w.-]+", "_", check.name)
    work.mkdir(parents=True)
    threads = None if check.alone else max(1, report.host["cpus"] // plan.jobs)
    ctx = Context(plan, work, child_env(work, threads), time.monotonic() + min(check.timeout_s, left))
    print(f"[{report.elapsed():6.1f}s] start {check.name}", flush=True)
    t0 = time.monotonic()
    try:
        summary, details = check.run(ctx)
        result = Result(check.name, "pass", time.monotonic() - t0, summary, details)
    except CheckFailed as e:
        result = Result(check.name, "fail", time.monotonic() - t0, str(e), error=e.output)
    except Exception as e:  # a defect in the check itself: reported like a failure, the other checks go on
        result = Result(check.name, "fail", time.monotonic() - t0, f"{type(e).__name__}: {e}")
    report.add(result, ctx.log)
    print(f"[{report.elapsed():6.1f}s] {result.status:<5} {check.name} ({result.seconds:.1f} s) {result.summary}",
          flush=True)


def run_checks(checks: list[Check], plan: Plan, report: Report) -> None:
    deadline = time.monotonic() + plan.budget_s
    pool = ThreadPoolExecutor(max_workers=plan.jobs)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        try:
            for c in checks:
                if c.alone:
                    execute(c, plan, report, Path(tmp), deadline)
            futures = [pool.submit(execute, c, plan, report, Path(tmp), deadline) for c in checks if not c.alone]
            for f in futures:
                f.result()
        finally:  # an interruption ends every command still running, and the report says what did not run
            PROCESSES.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            for c in checks:
                if c.name not in report.results:
                    report.add(Result(c.name, "skip", 0.0, "not run: gpu_check was interrupted"), [])


# ---- the two commands the checks start inside the check processes -------------------------------------------

class Hide(importlib.abc.MetaPathFinder):
    """Makes the packages in :data:`HIDDEN` unimportable, as on a machine that does not have them."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by gpu_check)", name=fullname)


def probe_environment(device: str) -> None:
    """``--probe-env``: plugins, every recipe's config, a dry run of tiny, lmdb; then the versions, as one JSON line."""
    sys.meta_path.insert(0, Hide())
    import importlib.metadata as md

    import torch

    from trainhub.cli import main as trainhub_main
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    plugins = get_plugins()
    missing = sorted(set(RECIPES) - set(plugins.registry["recipes"]))
    if plugins.failed or missing:
        raise SystemExit(f"plugins that failed to load: {plugins.failed or 'none'}; recipes missing: {missing or 'none'}")
    for name in RECIPES:
        resolve_config(plugins.recipe(name), plugins)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    code = trainhub_main(["run", "tiny", "--dry-run", f"train.device={device}", "loader.num_workers=0",
                          "loggers.console.progress_bar=false"])
    if code != 0:
        raise SystemExit(f"trainhub run tiny --dry-run exited {code}")
    import lmdb  # noqa: F401  (sr3's LMDB datasets; the training checks read embedded data)

    dists = ["trainhub", "trainhub-dit", "trainhub-sr3", "trainhub-timbre-gan", "trainhub-tokenimage", "trainhub-vrt-spike",
             "torch", "pydantic", "pydantic-core", "lmdb", "safetensors", "pluggy", "torchaudio"]
    cuda = device == "cuda"
    info = {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
        "recipes": sorted(plugins.registry["recipes"]), "versions": {d: md.version(d) for d in dists},
        "trainhub_source": str(Path(sys.modules["trainhub"].__file__ or "").parent),
    }
    print(PROBE_MARK + json.dumps(info), flush=True)


def run_stopping_at(step: int, argv: list[str]) -> int:
    """``--stop-at N ARGS``: ``trainhub ARGS`` with a real SIGTERM after optimizer step N; the CLI's exit status."""
    from trainhub.cli import main as trainhub_main
    from trainhub.plugins import get_plugins
    from trainhub.testing import StopAt

    get_plugins().pm.register(StopAt(step))
    return trainhub_main(argv)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes, the benchmark tools' --tiny modes (the CPU smoke test)")
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="report folder (default: gpu_check/)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all checks (default 450)")
    p.add_argument("--jobs", type=int, help="checks at a time, the benchmarks aside (default: 4 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, help="training steps per run (default 20; --tiny: 4)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="the checks whose names start so (train:dit, bench, resume)")
    p.add_argument("--probe-env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stop-at", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.probe_env:
        probe_environment(a.device)
        return 0
    if a.stop_at:
        return run_stopping_at(int(a.stop_at[0]), a.stop_at[1:])

    plan = Plan(a.device, a.tiny, a.steps or (4 if a.tiny else 20), a.jobs or (4 if a.device == "cuda" else 2), a.budget)
    checks = catalogue(plan)
    if a.only:
        chosen = [c for c in checks if c.name.startswith(tuple(a.only))]
        if not chosen:
            p.error(f"--only {' '.join(a.only)} names no check; checks: {', '.join(c.name for c in checks)}")
        checks = chosen
    report = Report(a.out, plan, [c.name for c in checks])
    print(f"gpu_check: {len(checks)} checks on {plan.device}, {plan.jobs} at a time, budget {plan.budget_s:.0f} s; "
          f"report in {a.out}/", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the checks, write the report
    try:
        run_checks(checks, plan, report)
    except KeyboardInterrupt:
        return 130
    print("\n" + markdown(report.as_json()), end="", flush=True)
    return 1 if report.as_json()["counts"]["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
