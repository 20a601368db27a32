"""A CSV logger: ``metrics_train.csv`` and ``metrics_eval.csv`` in the run directory, for spreadsheets and pandas.

Enable with ``loggers.csv.enabled=true``. A column that appears later (an eval metric computed only
sometimes) extends the header, rewriting the file once. On resume, rows logged after the checkpoint
being resumed are dropped first, so every step appears once.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import Field

from trainhub import hookimpl
from trainhub.config import Section


class CsvConfig(Section):
    enabled: bool = Field(False, description="write <run>/<prefix>_train.csv and <prefix>_eval.csv")
    prefix: str = Field("metrics", min_length=1, description="file name prefix")


class CsvTable:
    """One CSV file with a ``step`` column first; the header grows when rows bring new keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f), [])

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, self.columns, restval="")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def append(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            old = self.rows()
            self.columns += new
            self._rewrite(old + [row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns, restval="").writerow(row)

    def drop_after(self, step: int) -> None:
        rows = self.rows()
        kept = [r for r in rows if int(r["step"]) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)


class CsvLogger:
    """Created by trainhub for each run where ``loggers.csv.enabled`` is true; receives the lifecycle hooks."""

    def __init__(self, config: CsvConfig, run: Any) -> None:
        self.train = CsvTable(Path(run.run_dir) / f"{config.prefix}_train.csv")
        self.eval = CsvTable(Path(run.run_dir) / f"{config.prefix}_eval.csv")

    @hookimpl
    def trainhub_run_start(self, run: Any) -> None:
        if run.resumed:
            self.train.drop_after(run.step)
            self.eval.drop_after(run.step)

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if metrics:  # empty except on logging steps (train.log_every)
            self.train.append({"step": step, "epoch": run.epoch, **metrics})

    @hookimpl
    def trainhub_eval_end(self, run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
        self.eval.append({"step": step, **metrics})
