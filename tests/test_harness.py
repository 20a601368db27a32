"""The benchmark harness the tools in tools/ share (tools/harness.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from harness import timed_train  # noqa: E402
from trainhub import hookimpl  # noqa: E402
from trainhub.plugins import get_plugins  # noqa: E402

QUIET = ["loader.num_workers=0", "loggers.console.progress_bar=false"]


def test_timed_train_clocks_the_steps_after_warmup_and_unregisters_its_plugins():
    class Seen:
        def __init__(self):
            self.steps = []

        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            self.steps.append(step)

    pm = get_plugins().pm
    before = len(pm.get_plugins())
    seen = Seen()
    res = timed_train("tiny", QUIET + ["train.max_steps=6", "train.log_every=3", "train.batch_size=4"], torch.device("cpu"),
                      warmup=2, plugins=(seen,))
    assert seen.steps == [1, 2, 3, 4, 5, 6]
    assert len(res.wall) == len(res.cpu) == 3 and all(t > 0 for t in res.wall)  # marks of steps 3..6 -> 3 intervals
    assert res.last_train["step"] == 6 and res.config["train"]["batch_size"] == 4 and res.peak_mb == 0.0
    assert len(pm.get_plugins()) == before
