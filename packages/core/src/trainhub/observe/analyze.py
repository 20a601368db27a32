"""``trainhub analyze RUN_DIR``: a performance report of a run from its ``metrics.jsonl``.

Throughput, step-time breakdown (data wait / recipe stages / the rest), data time against the 10 ms
target, memory and GPU utilisation where logged, loss stability, a diagnosis table with concrete
config changes, and the warnings the run recorded. Printed as Markdown and written to
``RUN_DIR/analysis/report.md`` with PNG plots beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainhub.errors import UserError

DATA_TARGET_MS = 10.0
# keys of train records that are not loss terms (trainer, throughput and system metrics)
SYSTEM_KEYS = {
    "kind", "step", "epoch", "time", "lr", "grad_norm", "step_time", "data_time", "samples_per_sec", "flops_per_sample",
    "tflops", "mfu", "nonfinite_skipped", "rss_mb", "sys_mem_percent", "cuda_max_alloc_mb", "cuda_reserved_mb",
    "cuda_total_mb", "gpu_util_percent",
}


@dataclass
class Row:
    """One line of the diagnosis table."""

    check: str
    verdict: str  # "yes", "no", "n/a"
    evidence: str
    changes: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    run_dir: Path
    train: list[dict[str, Any]]  # deduplicated by step, sorted
    steady: list[dict[str, Any]]  # after the warm-up windows
    evals: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    bad_lines: int
    config: dict[str, Any]
    numbers: dict[str, Optional[float]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # recipe stage -> median ms
    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def read_records(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of ``metrics.jsonl`` and the number of unreadable lines (e.g. cut by a crash)."""
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory (pass a run directory, e.g. runs/tiny/NAME)")
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl (is it a run directory? the jsonl logger must be enabled)")
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def _median(values: list[float]) -> Optional[float]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _col(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]


def _p(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _config(run_dir: Path) -> dict[str, Any]:
    f = run_dir / "config.yaml"
    if not f.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def analyze(run_dir: str | Path, warmup: Optional[int] = None) -> Analysis:
    """Compute the report's numbers and diagnosis. ``warmup``: logged windows to drop at the start
    (default: 1 when there are at least 4, since the first window holds compilation and FLOP counting)."""
    run_dir = Path(run_dir)
    records, bad = read_records(run_dir)
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "train" and isinstance(r.get("step"), int):
            by_step[r["step"]] = r  # a resumed run re-logs steps after its checkpoint: the last one counts
    train = [by_step[s] for s in sorted(by_step)]
    if not train:
        raise UserError(f"{run_dir}/metrics.jsonl has no training records yet (they are written every train.log_every steps)")
    if warmup is None:
        warmup = 1 if len(train) >= 4 else 0
    steady = train[warmup:] or train
    a = Analysis(run_dir, train, steady, [r for r in records if r.get("kind") == "eval"],
                 [r for r in records if r.get("kind") == "warning"], [r for r in records if r.get("kind") == "end"], bad,
                 _config(run_dir))
    n = a.numbers
    for key in ("samples_per_sec", "step_time", "data_time", "tflops", "mfu", "gpu_util_percent", "grad_norm"):
        n[key] = _median(_col(steady, key))
    n["step_time_p90"] = _p(_col(steady, "step_time"), 0.9)
    n["step_time_max"] = max(_col(steady, "step_time"), default=None)
    for key in ("rss_mb", "sys_mem_percent", "cuda_max_alloc_mb", "cuda_reserved_mb"):
        n[f"{key}_max"] = max(_col(train, key), default=None)
    rss = _col(train, "rss_mb")
    n["rss_first"] = rss[0] if rss else None
    n["rss_last"] = rss[-1] if rss else None
    n["cuda_total_mb"] = max(_col(train, "cuda_total_mb"), default=None)
    n["nonfinite"] = max(_col(train, "nonfinite_skipped"), default=0.0)
    n["steps"] = float(train[-1]["step"])
    n["windows"] = float(len(train))
    for key in {k for r in steady for k in r if k.startswith("time/")}:
        name = key[len("time/"):]
        scale = 1.0 if name.endswith("_ms") else 1000.0  # time/<stage>_ms, or seconds without the suffix
        med = _median(_col(steady, key))
        if med is not None:
            a.stages[name[:-3] if name.endswith("_ms") else name] = med * scale
    loss_keys = sorted({k for r in train for k in r if k not in SYSTEM_KEYS and not k.startswith(("time/", "lr_", "grad_norm_"))
                        and isinstance(r[k], (int, float))})
    for k in loss_keys:
        vals = _col(train, k)
        if vals:
            a.losses[k] = _loss_stats(vals)
    a.rows = diagnose(a)
    return a


def _loss_stats(vals: list[float]) -> dict[str, float]:
    finite = [v for v in vals if math.isfinite(v)]
    q = max(1, len(finite) // 4)
    spikes = 0
    for i in range(3, len(finite)):
        ref = statistics.median(finite[max(0, i - 5):i])
        if ref > 0 and finite[i] > 3.0 * ref:
            spikes += 1
    return {
        "first": vals[0], "final": vals[-1], "min": min(finite) if finite else math.nan,
        "nonfinite": float(len(vals) - len(finite)),
        "head": statistics.fmean(finite[:q]) if finite else math.nan,
        "tail": statistics.fmean(finite[-q:]) if finite else math.nan,
        "spikes": float(spikes),
    }


def diagnose(a: Analysis) -> list[Row]:
    """The four checks, each with its evidence and the config changes that address it."""
    n, cfg = a.numbers, a.config
    rows: list[Row] = []
    step, data = n.get("step_time"), n.get("data_time")
    workers = _get(cfg, "loader.num_workers", "auto")
    cpus = os.cpu_count() or 1

    if step and data is not None:
        share = data / step
        bound = (data * 1000 > DATA_TARGET_MS and share > 0.05) or share > 0.2
        changes = []
        if bound:
            more = max(2, cpus - 1) if workers in (0, "auto") else min(cpus, int(workers) * 2)
            changes.append(f"loader.num_workers={more} (now {workers})")
            if not _get(cfg, "loader.persistent_workers", True):
                changes.append("loader.persistent_workers=true")
            changes.append(f"loader.prefetch_factor={max(4, int(_get(cfg, 'loader.prefetch_factor', 2)) * 2)}")
            changes.append("cache decoded/encoded samples or precompute them (e.g. latents) instead of decoding per step")
        rows.append(Row("data-loading bound", "yes" if bound else "no",
                        f"data wait {data * 1000:.1f} ms/step = {share:.0%} of the step (target < {DATA_TARGET_MS:.0f} ms)", changes))

        mfu, util = n.get("mfu"), n.get("gpu_util_percent")
        cbound = share <= 0.2 and not bound
        ev = f"compute {(step - data) * 1000:.1f} ms/step ({1 - share:.0%})"
        if mfu is not None:
            ev += f", MFU {mfu:.1%}"
        if util is not None:
            ev += f", GPU busy {util:.0f}%"
        changes = []
        if cbound:
            if _get(cfg, "train.precision") in ("fp32", "fp16"):
                changes.append("train.precision=bf16 (or auto on GPUs with bf16)")
            if not _get(cfg, "train.compile", False):
                changes.append("train.compile=true")
            if not _get(cfg, "train.channels_last", False):
                changes.append("train.channels_last=true (convolutional models)")
            if mfu is not None and mfu < 0.15:
                changes.append(f"MFU under 15%: raise train.batch_size (now {_get(cfg, 'train.batch_size', '?')}) if memory allows, "
                               "or look for launch overhead (many small kernels)")
        rows.append(Row("compute bound", "yes" if cbound else "no", ev, changes))
    else:
        rows.append(Row("data-loading bound", "n/a", "step_time/data_time not logged"))
        rows.append(Row("compute bound", "n/a", "step_time/data_time not logged"))

    ev, pressure, changes = [], False, []
    sysmax = n.get("sys_mem_percent_max")
    if sysmax is not None:
        ev.append(f"system memory up to {sysmax:.0f}%")
        if sysmax >= 90:
            pressure = True
            changes.append(f"lower loader.num_workers (now {workers}) or dataset cache sizes; each worker holds its own copy of "
                           "per-index caches unless they live in shared memory")
    first, last = n.get("rss_first"), n.get("rss_last")
    if first and last and len(a.train) >= 4 and last > 1.5 * first and last - first > 512:
        pressure = True
        ev.append(f"process RSS grew {first:.0f} -> {last:.0f} MB (a leak? Python lists in the dataset, unbounded caches)")
        changes.append("keep per-sample tables in numpy arrays, bound caches by bytes")
    alloc, total = n.get("cuda_max_alloc_mb_max"), n.get("cuda_total_mb")
    if alloc is not None:
        frac = alloc / total if total else None
        ev.append(f"GPU peak allocated {alloc:.0f} MB" + (f" of {total:.0f} MB ({frac:.0%})" if frac is not None else ""))
        if frac is not None and frac > 0.9:
            pressure = True
            changes += ["train.activation_checkpointing=true", "a smaller train.batch_size with gradient_accumulation_steps",
                        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True against fragmentation"]
    mem_warn = [w for w in a.warnings if w.get("warning") in ("memory", "shm")]
    if mem_warn:
        pressure = True
        ev.append(f"{len(mem_warn)} memory/shm warning(s) recorded")
    rows.append(Row("memory pressure", ("yes" if pressure else "no") if ev else "n/a", "; ".join(ev) or "no memory metrics logged", changes))

    ev, unstable, changes = [], False, []
    if n.get("nonfinite"):
        unstable = True
        ev.append(f"{n['nonfinite']:.0f} non-finite step(s) skipped")
    for k, s in a.losses.items():
        if not k.startswith("loss"):
            continue
        if s["spikes"]:
            unstable = True
            ev.append(f"{k}: {s['spikes']:.0f} spike(s) over 3x the recent median")
        if math.isfinite(s["head"]) and math.isfinite(s["tail"]) and s["tail"] > 1.2 * s["head"] and len(a.train) >= 8:
            unstable = True
            ev.append(f"{k} rose from {s['head']:.4g} to {s['tail']:.4g} (first vs last quarter)")
    gn = _col(a.steady, "grad_norm")
    gmed = _median(gn)
    if gmed and max(gn) > 10 * gmed:
        unstable = True
        ev.append(f"grad_norm peaks at {max(gn):.3g} (median {gmed:.3g})")
    range_warn = [w for w in a.warnings if w.get("warning") == "loss_range"]
    if range_warn:
        unstable = True
        ev.append(f"{len(range_warn)} loss-range warning(s)")
    if unstable:
        lr = _get(cfg, "train.lr")
        if lr:
            changes.append(f"train.lr={float(lr) / 2:g} (now {lr})")
        changes.append(f"train.warmup_steps={max(500, int(_get(cfg, 'train.warmup_steps', 0) or 0) * 2)}")
        if _get(cfg, "train.max_grad_norm", 1.0) is None:
            changes.append("train.max_grad_norm=1.0")
        if _get(cfg, "train.precision") == "fp16":
            changes.append("train.precision=bf16")
    rows.append(Row("unstable loss", "yes" if unstable else "no", "; ".join(ev) or "no spikes, no rise, no non-finite steps", changes))
    return rows


# ---- rendering ---------------------------------------------------------------------------------

def _f(v: Optional[float], fmt: str = ".4g", unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def _ms(v: Optional[float]) -> Optional[float]:
    return None if v is None else v * 1000


def render(a: Analysis, plots: list[str]) -> str:
    """The report as Markdown (``plots``: PNG file names beside report.md)."""
    n = a.numbers
    out = [f"# trainhub analyze: {a.run_dir}", ""]
    status = ", ".join(f"{e.get('status')} at step {e.get('step')}" for e in a.ends) or "running or killed (no end record)"
    out += [f"{n['steps']:.0f} steps in {n['windows']:.0f} logged windows; attempts: {status}.",
            f"Statistics are medians over the logged windows after the first {len(a.train) - len(a.steady)} (warm-up)."]
    if a.bad_lines:
        out.append(f"{a.bad_lines} unreadable line(s) in metrics.jsonl were skipped.")
    out += ["", "## Throughput", "", "| metric | value |", "|---|---|",
            f"| samples/s | {_f(n['samples_per_sec'], '.1f')} |",
            f"| steps/s | {_f(1 / n['step_time'] if n['step_time'] else None, '.2f')} |",
            f"| step time p50 / p90 / max | {_f(_ms(n['step_time']), '.1f')} / {_f(_ms(n['step_time_p90']), '.1f')} / "
            f"{_f(_ms(n['step_time_max']), '.1f')} ms |"]
    if n.get("tflops") is not None:
        out.append(f"| TFLOP/s (model FLOPs) | {_f(n['tflops'], '.3g')} |")
    if n.get("mfu") is not None:
        out.append(f"| MFU | {n['mfu']:.1%} |")
    if n.get("gpu_util_percent") is not None:
        out.append(f"| GPU utilisation | {n['gpu_util_percent']:.0f}% |")
    out += ["", "(step_time runs from one step's end to the next: the max window often holds an eval or a checkpoint save.)", ""]

    out += ["## Step-time breakdown", ""]
    step, data = n.get("step_time"), n.get("data_time")
    if step:
        parts: list[tuple[str, float]] = [("data wait", (data or 0.0) * 1000)]
        parts += [(f"stage {k}", v) for k, v in sorted(a.stages.items())]
        rest = step * 1000 - sum(v for _, v in parts)
        parts.append(("other (optimizer, hooks, logging)" if a.stages else "compute and the rest (forward, backward, optimizer, hooks)", rest))
        out += ["| part | ms/step | share |", "|---|---|---|"]
        out += [f"| {name} | {ms:.2f} | {ms / (step * 1000):.0%} |" for name, ms in parts]
        out += [f"| total | {step * 1000:.2f} | 100% |", ""]
        dms = (data or 0.0) * 1000
        out += [f"Data time: {dms:.2f} ms per step against the {DATA_TARGET_MS:.0f} ms target: "
                f"**{'OK' if dms <= DATA_TARGET_MS else 'OVER'}**.", ""]
    else:
        out += ["step_time was not logged.", ""]

    out += ["## Memory", "", "| metric | value |", "|---|---|",
            f"| process RSS first / last / max | {_f(n['rss_first'], '.0f')} / {_f(n['rss_last'], '.0f')} / {_f(n['rss_mb_max'], '.0f')} MB |",
            f"| system memory max | {_f(n['sys_mem_percent_max'], '.0f', '%')} |"]
    if n.get("cuda_max_alloc_mb_max") is not None:
        out.append(f"| GPU peak allocated / reserved / total | {_f(n['cuda_max_alloc_mb_max'], '.0f')} / "
                   f"{_f(n['cuda_reserved_mb_max'], '.0f')} / {_f(n['cuda_total_mb'], '.0f')} MB |")
    out.append("")

    if a.losses:
        out += ["## Loss terms", "", "| term | first | final | min | non-finite |", "|---|---|---|---|---|"]
        out += [f"| {k} | {s['first']:.4g} | {s['final']:.4g} | {s['min']:.4g} | {s['nonfinite']:.0f} |" for k, s in a.losses.items()]
        out.append("")
    if a.evals:
        last = a.evals[-1]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("kind", "step", "epoch", "time") and isinstance(v, (int, float)))
        out += ["## Evaluation", "", f"{len(a.evals)} eval(s); last at step {last.get('step')}: {shown}"]
        best = a.run_dir / "best.json"
        if best.is_file():
            b = json.loads(best.read_text())
            out.append(f"best: {b.get('metric')}={b.get('value')} at step {b.get('step')} ({b.get('checkpoint')})")
        out.append("")

    out += ["## Diagnosis", "", "| check | verdict | evidence | suggested changes |", "|---|---|---|---|"]
    out += [f"| {r.check} | {r.verdict} | {r.evidence} | {'<br>'.join(r.changes) or '-'} |" for r in a.rows]
    out.append("")

    out += ["## Warnings", ""]
    if a.warnings:
        out += ["| step | kind | message |", "|---|---|---|"]
        out += [f"| {w.get('step')} | {w.get('warning', '?')} | {str(w.get('message', '')).replace('|', '/')} |" for w in a.warnings]
    else:
        out.append("none recorded (loss-range, memory and shm warnings appear here)")
    out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def make_plots(a: Analysis, out_dir: Path) -> list[str]:
    """PNG plots (matplotlib object API, Agg) into ``out_dir``; returns the file names written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return []
    steps = [r["step"] for r in a.train]
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        tmp = out_dir / f".{name}.tmp"
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out_dir / name)
        written.append(name)

    if any("samples_per_sec" in r for r in a.train):
        fig = Figure(figsize=(7, 3.5))
        ax = fig.add_subplot()
        ax.plot(steps, [r.get("samples_per_sec", math.nan) for r in a.train], marker=".")
        if a.numbers.get("samples_per_sec"):
            ax.axhline(a.numbers["samples_per_sec"], color="gray", ls="--", label=f"median {a.numbers['samples_per_sec']:.1f}")
            ax.legend()
        ax.set(xlabel="step", ylabel="samples/s", title="throughput")
        save(fig, "throughput.png")
    if any("step_time" in r for r in a.train):
        fig = Figure(figsize=(7, 3.5))
        ax = fig.add_subplot()
        stage_keys = sorted({k for r in a.train for k in r if k.startswith("time/")})
        layers = [("data wait", [1000 * r.get("data_time", 0.0) for r in a.train])]
        for k in stage_keys:
            scale = 1.0 if k.endswith("_ms") else 1000.0
            layers.append((k[5:].removesuffix("_ms"), [scale * r.get(k, 0.0) for r in a.train]))
        total = [1000 * r.get("step_time", 0.0) for r in a.train]
        used = [sum(vals[i] for _, vals in layers) for i in range(len(steps))]
        layers.append(("other" if stage_keys else "compute and the rest", [max(0.0, t - u) for t, u in zip(total, used)]))
        ax.stackplot(steps, *[v for _, v in layers], labels=[k for k, _ in layers])
        ax.axhline(DATA_TARGET_MS, color="red", ls=":", label="10 ms data target")
        ax.set(xlabel="step", ylabel="ms per step", title="step-time breakdown")
        ax.legend(fontsize=7, loc="upper right")
        save(fig, "step_time.png")
    if a.losses:
        fig = Figure(figsize=(7, 3.5))
        ax = fig.add_subplot()
        positive = True
        for k in a.losses:
            vals = [r.get(k, math.nan) for r in a.train]
            positive &= all(not (v <= 0) for v in vals)
            ax.plot(steps, vals, label=k)
        if positive:
            ax.set_yscale("log")
        for w in a.warnings:
            if w.get("warning") == "loss_range":
                ax.axvline(w.get("step", 0), color="red", alpha=0.3)
        ax.set(xlabel="step", ylabel="loss", title="loss terms (red: loss-range warnings)")
        ax.legend(fontsize=7)
        save(fig, "loss.png")
    mem_keys = [k for k in ("rss_mb", "cuda_max_alloc_mb", "cuda_reserved_mb") if any(k in r for r in a.train)]
    if mem_keys:
        fig = Figure(figsize=(7, 3.5))
        ax = fig.add_subplot()
        for k in mem_keys:
            ax.plot(steps, [r.get(k, math.nan) for r in a.train], label=k)
        ax.set(xlabel="step", ylabel="MB", title="memory")
        if any("sys_mem_percent" in r for r in a.train):
            ax2 = ax.twinx()
            ax2.plot(steps, [r.get("sys_mem_percent", math.nan) for r in a.train], color="gray", ls="--")
            ax2.set_ylabel("system memory % (dashed)")
            ax2.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "memory.png")
    return written


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="trainhub analyze",
        description="Performance report of a run: throughput, step-time breakdown, data time vs the 10 ms target, "
                    "memory, a diagnosis with config changes, and recorded warnings. Writes RUN_DIR/analysis/report.md "
                    "and PNG plots.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/analysis)")
    p.add_argument("--warmup", type=int, default=None, help="logged windows to skip at the start (default 1 when >= 4)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="do not print the report")
    args = p.parse_args(argv)
    a = analyze(args.run_dir, args.warmup)
    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else make_plots(a, out)
    text = render(a, plots)
    tmp = out / ".report.md.tmp"
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, out / "report.md")
    if not args.quiet:
        print(text)
        print(f"\nwritten: {out / 'report.md'}" + (f" and {len(plots)} plot(s)" if plots else ""))
    return 0
