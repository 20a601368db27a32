"""``metrics.jsonl``: one JSON object per logging step, eval and checkpoint, appended and flushed.

Each step is in it once: a resumed run first drops the records after the step it continues from (the part
of the file a killed or stopped attempt wrote past its checkpoint, which the resumed run writes again),
and a new run starts the file afresh. Readers need not deduplicate.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainhub import hookimpl
from trainhub.loggers.configs import JsonlConfig
from trainhub.training import storage


def keep_until(path: Path, step: int) -> int:
    """Rewrite ``path`` (atomically: temporary file, fsync, rename) with only the records of steps <= ``step``
    and no unreadable line (a write cut off by a kill); returns how many records it dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        with storage.writing(path, partial=tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    return dropped


class JsonlLogger:
    def __init__(self, config: JsonlConfig, run: Any) -> None:
        self.path = run.run_dir / config.filename
        if run.resumed:
            keep_until(self.path, run.step)
        with storage.writing(self.path):
            self.f = open(self.path, "a" if run.resumed else "w", encoding="utf-8")

    def _write(self, obj: dict[str, Any]) -> None:
        with storage.writing(self.path):
            self.f.write(json.dumps(obj) + "\n")
            self.f.flush()

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        self._write({"kind": "start", "step": run.step, "time": time.time(), "recipe": run.recipe.name,
                     "max_steps": run.max_steps, "resumed": run.resumed, "run_id": run.run_id})

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self._write({"kind": "train", "step": step, "epoch": run.epoch, "time": time.time(), **metrics})

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        self._write({"kind": "eval", "step": step, "epoch": run.epoch, "time": time.time(), **metrics})

    @hookimpl
    def trainhub_checkpoint_saved(self, run: Any, step: int, path: str, is_best: bool) -> None:
        self._write({"kind": "checkpoint", "step": step, "time": time.time(), "path": path, "is_best": is_best})

    @hookimpl
    def trainhub_warning(self, run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
        self._write({"kind": "warning", "step": step, "time": time.time(), "warning": kind, "message": message, **data})

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        self._write({"kind": "end", "step": run.step, "time": time.time(), "status": status})
        self.f.close()
