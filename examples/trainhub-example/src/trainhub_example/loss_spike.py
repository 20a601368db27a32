"""A loss-spike alert: compares each logged loss with its running average and warns, or stops the run.

Enable with ``loggers.loss_spike.enabled=true``. An alert prints one line to stderr and appends a JSON
record to ``<run>/alerts.jsonl``; with ``action: stop`` it also sends this process SIGTERM, which makes
the trainer save a checkpoint and end the run as ``interrupted`` (resume later with ``--resume auto``).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from trainhub import hookimpl
from trainhub.config import Section


class LossSpikeConfig(Section):
    enabled: bool = Field(False, description="watch a logged loss for spikes: each alert is a stderr line and a record "
                          "in <run>/alerts.jsonl")
    key: str = Field("loss", description="the logged metric to watch (loss_g, loss_d, l1, ... for other recipes)")
    factor: float = Field(3.0, gt=1.0, description="alert when the value exceeds factor x its running average")
    beta: float = Field(0.9, ge=0.0, lt=1.0, description="running average: avg = beta * avg + (1 - beta) * value")
    warmup: int = Field(5, ge=1, description="logged values averaged before alerts can fire")
    action: Literal["warn", "stop"] = Field("warn", description="warn, or stop the run with a checkpoint")


class LossSpikeAlert:
    def __init__(self, config: LossSpikeConfig, run: Any) -> None:
        self.config = config
        self.path = Path(run.run_dir) / "alerts.jsonl"
        self.avg = 0.0
        self.seen = 0

    def check(self, value: float) -> bool:
        """Fold ``value`` into the running average; True when it is a spike (or not finite)."""
        c = self.config
        if not math.isfinite(value):
            return True
        spike = self.seen >= c.warmup and value > c.factor * self.avg
        self.avg = value if self.seen == 0 else c.beta * self.avg + (1 - c.beta) * value
        self.seen += 1
        return spike

    @hookimpl
    def trainhub_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.config.key)
        if value is None:
            return
        avg = self.avg
        if not self.check(float(value)):
            return
        message = f"loss spike at step {step}: {self.config.key}={value:.4g}, running average {avg:.4g}"
        print(f"trainhub-example: {message}" + ("; stopping" if self.config.action == "stop" else ""), file=sys.stderr)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "step": step, "key": self.config.key, "value": float(value),
                                "average": avg, "action": self.config.action}) + "\n")
        if self.config.action == "stop":
            signal.raise_signal(signal.SIGTERM)  # the trainer's handler: save a checkpoint, end as interrupted
