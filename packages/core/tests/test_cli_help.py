"""What the command line tells a new user: a recipe's keys under run --help, the defaults with comments from config,
past runs under runs."""

from __future__ import annotations

import yaml

from trainhub import config as C
from trainhub.cli import main as cli_main
from trainhub.plugins import get_plugins
from trainhub.resolve import config_class_for, resolve_config
from trainhub.training.run import train

QUIET = ["loader.num_workers=0", "loggers.console.progress_bar=false"]


def test_run_recipe_help_lists_every_key_with_type_default_and_description(capsys):
    assert cli_main(["run", "tiny", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trainhub run tiny [options] [key=value ...]") and "--resume RESUME" in out
    keys = C.describe_keys(config_class_for(get_plugins().recipe_entry("tiny"), get_plugins())())
    for key, typ, default, desc in keys:
        assert any(line.split()[:1] == [key] and desc[:40] in line for line in out.splitlines()), key
    line = next(x for x in out.splitlines() if x.split()[:1] == ["train.schedule"])
    assert line.split()[1:3] == ["str", "cosine"] and "a registered lr schedule" in line
    assert next(x for x in out.splitlines() if x.split()[:1] == ["train.precision"]).split()[1:4] == ["one", "of:", "auto,"]


def test_every_core_key_has_a_description():
    """Core's sections and the tiny recipe's (other plugins' logger sections, installed here too, aside)."""
    keys = C.describe_keys(config_class_for(get_plugins().recipe_entry("tiny"), get_plugins())())
    core_loggers = ("console", "jsonl", "tensorboard", "wandb", "param_outputs")
    ours = [k for k, _, _, _ in keys if not k.startswith("loggers.") or k.split(".")[1] in core_loggers]
    assert len(ours) > 90
    assert [k for k, _, _, d in keys if k in ours and not d] == []


def test_config_writes_the_defaults_as_commented_yaml_that_reads_back(tmp_path, capsys):
    assert cli_main(["config", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "train:\n  # optimizer steps (ignored when epochs is set)\n  max_steps: 1000\n" in text
    assert "  betas: [0.9, 0.999]\n" in text
    (tmp_path / "cfg.yaml").write_text(text)
    plugins = get_plugins()
    recipe = plugins.recipe("tiny")
    assert resolve_config(recipe, plugins, tmp_path / "cfg.yaml").model_dump() == resolve_config(recipe, plugins).model_dump()
    assert yaml.safe_load(text) == yaml.safe_load(C.to_yaml(resolve_config(recipe, plugins)))


def test_runs_lists_past_runs_newest_first_with_state_step_and_best(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train("tiny", overrides=QUIET + ["train.max_steps=4", "train.eval_every=2", "run_name=first"])
    train("tiny", overrides=QUIET + ["train.max_steps=3", "train.best_metric=null", "run_name=second"])
    assert cli_main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["recipe", "state", "step", "best", "updated", "path"]
    second, first = (line.split() for line in lines[1:3])
    assert second[:4] == ["tiny", "completed", "3/3", "-"] and second[-1] == "runs/tiny/second"
    assert first[:4] == ["tiny", "completed", "4/4", "val_mse"] and first[-1] == "runs/tiny/first"
    assert cli_main(["runs", "sr3"]) == 0 and capsys.readouterr().out.strip() == "no runs"
    assert cli_main(["runs", "--dir", "elsewhere"]) == 0 and capsys.readouterr().out.startswith("no runs under elsewhere yet")
