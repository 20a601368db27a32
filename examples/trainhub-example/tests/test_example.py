"""The example plugin as users get it: installed (entry point `example`), used through config keys only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainhub.builtin.tiny import TinyRecipe
from trainhub.resolve import resolve_config
from trainhub_example.loss_spike import LossSpikeAlert, LossSpikeConfig
from trainhub_example.resmlp import ResidualMLP

SMALL = ["data.num_samples=128", "data.val_samples=32", "train.batch_size=16"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class SpikyTiny(TinyRecipe):
    """The tiny recipe with the loss multiplied by 100 at one step: a real spike for the alert to catch."""

    name = "spiky_tiny"

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def train_step(self, batch, ctx):
        out = super().train_step(batch, ctx)
        if ctx.step + 1 == self.at_step:
            out["loss"] = out["loss"] * 100
        return out


def test_entry_point_registers_the_model_and_both_loggers(trainhub_plugins):
    info = trainhub_plugins.info["example"]
    assert (info.distribution, info.module) == ("trainhub-example", "trainhub_example.plugin")
    assert info.registered == {"models": ["example-resmlp"], "loggers": ["csv", "loss_spike"]}
    assert trainhub_plugins.model("example-resmlp") is ResidualMLP


def test_logger_sections_join_every_recipe_config_switched_off(trainhub_plugins, check_config_schema):
    check_config_schema("tiny")
    cfg = resolve_config(trainhub_plugins.recipe("tiny"), trainhub_plugins, overrides=["loggers.loss_spike.factor=5"])
    assert cfg.loggers.csv.enabled is False and cfg.loggers.loss_spike.enabled is False
    assert cfg.loggers.loss_spike.factor == 5.0


def test_residual_mlp_takes_the_tiny_model_keywords():
    net = ResidualMLP(dim=8, hidden=16, depth=3, dropout=0.0)
    assert net(torch.randn(5, 8)).shape == (5, 1) and len(net.blocks) == 3


def test_tiny_trains_with_the_variant_and_csv_matches_metrics_jsonl(run_recipe, read_metrics):
    res = run_recipe("tiny", steps=6, overrides=SMALL + ["model.name=example-resmlp", "loggers.csv.enabled=true",
                                                         "train.eval_every=3"])
    weights = load_file(str(res.last_checkpoint / "model.safetensors"))
    assert "blocks.1.fc1.weight" in weights and not any(k.startswith("net.") for k in weights)  # not tiny-mlp
    rows, records = _csv(res.run_dir / "metrics_train.csv"), read_metrics(res.run_dir, "train")
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in records])
    evals = _csv(res.run_dir / "metrics_eval.csv")
    assert [int(r["step"]) for r in evals] == [3, 6]
    assert [float(r["val_mse"]) for r in evals] == pytest.approx([r["val_mse"] for r in read_metrics(res.run_dir, "eval")])


def test_csv_keeps_each_step_once_after_resuming_from_an_earlier_checkpoint(run_recipe):
    over = SMALL + ["loggers.csv.enabled=true", "train.checkpoint_every=3", "train.eval_every=3", "train.best_metric=null"]
    first = run_recipe("tiny", steps=6, overrides=over)
    again = run_recipe("tiny", steps=6, overrides=over, run_dir=first.run_dir,
                       resume=str(first.run_dir / "checkpoints" / "checkpoint-3"))
    assert again.step == 6
    assert [int(r["step"]) for r in _csv(first.run_dir / "metrics_train.csv")] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in _csv(first.run_dir / "metrics_eval.csv")] == [3, 6]


def test_loss_spike_is_reported(run_recipe, capsys):
    res = run_recipe(SpikyTiny(at_step=12), steps=15, overrides=SMALL + ["loggers.loss_spike.enabled=true"])
    assert res.status == "completed"
    alerts = [json.loads(x) for x in (res.run_dir / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["action"]) for a in alerts] == [(12, "warn")]
    assert alerts[0]["value"] > 3 * alerts[0]["average"]
    assert "loss spike at step 12: loss=" in capsys.readouterr().err


def test_loss_spike_can_stop_the_run_with_a_checkpoint(run_recipe):
    res = run_recipe(SpikyTiny(at_step=9), steps=15, overrides=SMALL + ["loggers.loss_spike.enabled=true",
                                                                          "loggers.loss_spike.action=stop"])
    assert (res.status, res.step, res.last_checkpoint.name) == ("interrupted", 9, "checkpoint-9")


def test_spike_rule_waits_for_warmup_and_flags_non_finite(tmp_path):
    class Run:
        run_dir = tmp_path

    alert = LossSpikeAlert(LossSpikeConfig(enabled=True, warmup=3, factor=2.0), Run())
    assert [alert.check(v) for v in (1.0, 5.0, 1.0)] == [False, False, False]  # warming up
    assert alert.check(1.5) is False and alert.check(10.0) is True
    assert alert.check(float("nan")) is True
