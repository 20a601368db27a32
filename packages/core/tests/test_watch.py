"""Loss-range warnings and shared-memory-safe loading."""

from __future__ import annotations

import json

import pytest

from trainhub.builtin.tiny import TinyRecipe
from trainhub.observe.watch import LossRange, LossWatch
from trainhub.training import data as D
from trainhub.training.run import train


def test_loss_watch_warns_once_per_excursion():
    w = LossWatch([LossRange("d_real", 0.5, 1.0, start=10, phase="after GAN start"), LossRange("l1", falling=True, end=5)])
    assert w.check(4, 0, {"d_real": 3.0, "l1": 1.0}) == []  # before its phase: silent; l1 phase active
    msgs = [m for m, _ in w.check(12, 0, {"d_real": 0.2, "l1": 1.2})]  # l1 phase ended higher than it started
    assert msgs == ["d_real=0.2 outside [0.5, 1.0] during after GAN start (steps 10-end)",
                    "l1 did not fall during steps 0-5: 1 -> 1"]
    assert w.check(13, 0, {"d_real": 0.1}) == []  # still the same excursion
    assert w.check(14, 0, {"d_real": 0.7}) == []  # back in range
    assert len(w.check(15, 0, {"d_real": 1.5})) == 1  # a new excursion


class Watched(TinyRecipe):
    def loss_ranges(self, config):
        return [LossRange("loss", high=1e-6, phase="impossible")]


def test_trainer_reports_excursions_to_metrics_jsonl(tmp_path, quiet):
    train(Watched(), overrides=quiet + ["train.max_steps=10", "train.log_every=2"], run_dir=tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    warns = [x for x in lines if x["kind"] == "warning" and x["warning"] != "cpu"]  # cpu: a loaded test machine
    assert len(warns) == 1 and warns[0]["warning"] == "loss_range" and warns[0]["term"] == "loss"
    assert "outside [None, 1e-06] during impossible" in warns[0]["message"]


def test_small_shm_reduces_workers_with_one_warning(tmp_path, quiet, monkeypatch):
    # a 64-sample batch of the tiny recipe is 64 x (8 + 1) float32 = 2304 bytes; allow about 2 workers' worth
    monkeypatch.setattr(D, "shm_free_bytes", lambda: 2304 * 2 * 2 * 1.5 + 100)
    res = train("tiny", overrides=[o for o in quiet if "num_workers" not in o] +
                ["loader.num_workers=4", "loader.prefetch_factor=2", "train.batch_size=64", "train.max_steps=3"],
                run_dir=tmp_path / "r")
    assert res.status == "completed"
    warns = [w for w in (json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"warning"' in x)
             if w["warning"] != "cpu"]  # cpu: a loaded test machine
    assert len(warns) == 1 and warns[0]["warning"] == "shm" and warns[0]["workers_used"] == 2
    assert "using 2 workers" in warns[0]["message"]


@pytest.mark.parametrize("free, expected", [(None, 4), (0, 0), (10**12, 4), (3 * 100 * 2 * 1.5, 3)])
def test_workers_that_fit(free, expected):
    assert D.workers_that_fit(4, 2, 100, free) == expected
