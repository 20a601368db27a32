"""Which checkpoint ``--checkpoint RUN`` means: the best for sample, eval and export; RUN:last, RUN:best, RUN:STEP."""

from __future__ import annotations

import json

import pytest

from trainhub.cli import main as cli_main
from trainhub.errors import UserError
from trainhub.training.checkpoint import resolve_checkpoint
from trainhub.training.run import train

QUIET = ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 steps, an eval and a checkpoint every 4; val_mse falls at every eval, and best_mode=max makes the first eval
    the best, so the best checkpoint is not the last one."""
    d = tmp_path_factory.mktemp("paths") / "run"
    train("tiny", overrides=QUIET + ["train.max_steps=12", "train.eval_every=4", "train.checkpoint_every=4",
                                     "train.lr=0.05", "train.keep_last=5", "train.best_mode=max"], run_dir=d)
    assert json.loads((d / "best.json").read_text())["checkpoint"] == "checkpoint-4"
    return d


def test_a_run_directory_means_its_best_checkpoint_where_asked(run):
    best = json.loads((run / "best.json").read_text())["checkpoint"]
    assert resolve_checkpoint(run, default="best") == run / "checkpoints" / best
    assert resolve_checkpoint(f"{run}:best") == run / "checkpoints" / best
    assert resolve_checkpoint(run) == resolve_checkpoint(f"{run}:last") == run / "checkpoints" / "checkpoint-12"
    assert resolve_checkpoint(f"{run}:8") == run / "checkpoints" / "checkpoint-8"
    assert resolve_checkpoint(run / "checkpoints" / "checkpoint-4") == run / "checkpoints" / "checkpoint-4"


def test_a_wrong_choice_is_one_line_naming_what_there_is(run, tmp_path):
    with pytest.raises(UserError, match=r":7 is not best, last or a saved step of .* \(steps: 4, 8, 12\)"):
        resolve_checkpoint(f"{run}:7")
    with pytest.raises(UserError, match="is a checkpoint directory already"):
        resolve_checkpoint(f"{run / 'checkpoints' / 'checkpoint-4'}:last")
    plain = tmp_path / "plain"
    train("tiny", overrides=QUIET + ["train.max_steps=2", "train.best_metric=null"], run_dir=plain)
    assert resolve_checkpoint(plain, default="best").name == "checkpoint-2"  # no best kept: the last
    with pytest.raises(UserError, match="has no best checkpoint"):
        resolve_checkpoint(f"{plain}:best")


def test_eval_scores_the_best_checkpoint_of_a_run(run, capsys):
    best = json.loads((run / "best.json").read_text())
    assert cli_main(["eval", "tiny", "--checkpoint", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"from {run / 'checkpoints' / best['checkpoint']}" in captured.err
    assert cli_main(["eval", "tiny", "--checkpoint", f"{run}:last"]) == 0
    assert "checkpoint-12" in capsys.readouterr().err


@pytest.mark.parametrize("ema", [True, False])
def test_weights_of_another_shape_are_one_line_naming_the_file(run, capsys, ema):
    """EMA weights (what sample and eval load by default) and raw weights alike."""
    capsys.readouterr()
    args = ["eval", "tiny", "--checkpoint", f"{run}:last", "model.hidden=8"] + ([] if ema else ["--no-ema"])
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    name = "ema.safetensors" if ema else "model.safetensors"
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("trainhub: error: ") and f"{name}: weights do not match model 'model'" in err and "size mismatch" in err


def test_eval_without_validation_data_of_a_recipe_that_needs_it_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "r"
    train("tiny", overrides=QUIET + ["train.max_steps=2", "data.val_samples=0", "train.best_metric=null"], run_dir=run_dir)
    capsys.readouterr()
    assert cli_main(["eval", "tiny", "--checkpoint", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "trainhub: error: recipe 'tiny' has no validation data with this config, and evaluates nothing without it")
