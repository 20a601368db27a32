"""``trainhub runs [NAME]``: the runs under an output folder, newest first, with their step, state, best metric and path.

Read from the files every run leaves (no torch): the lock file tells a live run (its holder's ``flock``), the last
``end`` record of ``metrics.jsonl`` how a finished one ended, ``best.json`` its best eval, the checkpoints how far
it got. A run that ended without an ``end`` record was killed; ``--resume auto`` continues it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

TAIL_BYTES = 1 << 16  # the end of metrics.jsonl holds the last step and the end record


@dataclass
class RunRow:
    recipe: str
    path: Path
    state: str  # running, completed, interrupted, failed, killed, new
    step: int
    max_steps: Optional[int]
    best: str  # "val_mse 0.0412 @ 300" or ""
    updated: float


def _tail_records(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the first, cut line, or one cut by a crash
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _running(run_dir: Path) -> bool:
    """Another process holds the run's lock (the kernel drops it when that process ends, however it ends)."""
    import fcntl

    lock = run_dir / "trainhub.lock"
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def describe(run_dir: Path) -> RunRow:
    records = _tail_records(run_dir / "metrics.jsonl")
    end = next((r for r in reversed(records) if r.get("kind") == "end"), None)
    last = next((r for r in reversed(records) if "step" in r), None)
    step = int(last["step"]) if last else 0
    ends_last = end is not None and records and records[-1] is end
    state = "running" if _running(run_dir) else (end.get("status", "ended") if ends_last else ("killed" if records else "new"))
    max_steps = None
    start = next((r for r in reversed(records) if r.get("kind") == "start"), None)
    if start is not None and isinstance(start.get("max_steps"), int):
        max_steps = start["max_steps"]
    best = ""
    try:
        b = json.loads((run_dir / "best.json").read_text())
        best = f"{b['metric']} {b['value']:.4g} @ {b['step']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    updated = max((p.stat().st_mtime for p in (run_dir / "metrics.jsonl", run_dir) if p.exists()), default=0.0)
    return RunRow(run_dir.parent.name, run_dir, state, step, max_steps, best, updated)


def find_runs(output_dir: Path, recipe: Optional[str] = None) -> list[RunRow]:
    """Every run directory (one with a config.yaml) under ``output_dir/<recipe>/``, newest first."""
    if not output_dir.is_dir():
        return []
    recipes = [output_dir / recipe] if recipe else sorted(p for p in output_dir.iterdir() if p.is_dir())
    rows = [describe(d) for r in recipes if r.is_dir() for d in r.iterdir() if (d / "config.yaml").is_file()]
    return sorted(rows, key=lambda row: row.updated, reverse=True)


def table(rows: list[RunRow]) -> str:
    if not rows:
        return "no runs"
    now = time.time()

    def ago(t: float) -> str:
        s = max(0, now - t)
        return f"{s:.0f}s ago" if s < 90 else f"{s / 60:.0f}m ago" if s < 5400 else f"{s / 3600:.0f}h ago" if s < 172800 else f"{s / 86400:.0f}d ago"

    head = ("recipe", "state", "step", "best", "updated", "path")
    body = [(r.recipe, r.state, f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step), r.best or "-", ago(r.updated),
             str(r.path)) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in [head, *body])
