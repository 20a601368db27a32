"""``<run>/curves.png``: the run's loss terms, learning rate and eval metrics against the step, drawn from its own
metrics.jsonl after every eval and when the run ends (the ``curves`` logger, on by default)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from trainhub import hookimpl
from trainhub.loggers.configs import CurvesConfig

SKIP = {"kind", "step", "epoch", "time", "eval_time"}
#: What a train record holds besides the recipe's loss terms (the trainer's and the system's readings).
NOT_LOSSES = ("lr", "grad_norm", "step_time", "data_time", "samples_per_sec", "flops_per_sample", "tflops", "mfu", "rss_mb",
              "sys_mem_percent", "cuda_", "gpu_", "nonfinite_skipped")


def _is_loss_term(key: str) -> bool:
    return key not in SKIP and not key.startswith(NOT_LOSSES)


def _records(run_dir: Path, filename: str) -> list[dict[str, Any]]:
    out = []
    path = run_dir / filename
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("kind") in ("train", "eval"):
            out.append(rec)
    return out


def plot_curves(run_dir: Path, title: str, filename: str = "metrics.jsonl") -> Path | None:
    """Draw the curves of ``run_dir`` into ``run_dir/curves.png`` (written atomically); None when nothing was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = _records(run_dir, filename)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    losses = [k for k in dict.fromkeys(k for r in train for k in r) if _is_loss_term(k)]
    metrics = [k for k in dict.fromkeys(k for r in evals for k in r) if k not in SKIP and any(
        isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for r in evals)]
    panels = ([("loss terms (train)", train, losses, True)] if losses else []) + \
             ([("learning rate", train, [k for k in train[0] if k.startswith("lr")], False)] if train else []) + \
             [(f"eval: {k}", evals, [k], False) for k in metrics]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    FigureCanvasAgg(fig)
    for i, (name, recs, keys, log) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for k in keys:
            pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=k)
        values = [v for ln in ax.get_lines() for v in ln.get_ydata()]
        if log and values and min(values) > 0 and max(values) > 20 * min(values):  # log where it spans decades
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = run_dir / "curves.png"
    tmp = run_dir / ".curves.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out)
    return out


class CurvesLogger:
    """Redraws ``curves.png`` after every eval and when the run ends (before the console's last lines name it)."""

    def __init__(self, config: CurvesConfig, run: Any) -> None:
        self.run_dir = run.run_dir
        self.title = f"{run.recipe.name}: {run.run_dir.name}"

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        plot_curves(self.run_dir, self.title)

    @hookimpl(tryfirst=True)
    def trainhub_run_end(self, run: Any, status: str) -> None:
        plot_curves(self.run_dir, self.title)
