"""``metrics.jsonl``: one JSON object per logging step, eval and checkpoint, appended and flushed."""

from __future__ import annotations

import json
import time
from typing import Any

from trainhub import hookimpl
from trainhub.config import Section


class JsonlConfig(Section):
    enabled: bool = True
    filename: str = "metrics.jsonl"


class JsonlLogger:
    def __init__(self, config: JsonlConfig, run: Any) -> None:
        self.path = run.run_dir / config.filename
        self.f = open(self.path, "a", encoding="utf-8")

    def _write(self, obj: dict[str, Any]) -> None:
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()

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
