"""Every config error is one clear message naming the key; sources merge in order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from trainhub import config as C
from trainhub.builtin.tiny_config import TinyConfig
from trainhub.errors import ConfigError


def test_sources_merge_defaults_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  max_steps: 7\nmodel:\n  hidden: 16\n")
    cfg = C.resolve(TinyConfig, f, ["train.lr=2e-4", "--model.depth", "3"])
    assert cfg.train.lr == 2e-4 and cfg.train.max_steps == 7 and cfg.model.hidden == 16 and cfg.model.depth == 3
    assert cfg.train.batch_size == 32  # the recipe's default survives a partial train section
    assert cfg.train.ema.decay == 0.99


def test_json_with_comments_and_integral_floats(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{\n  // a comment\n  "train": {"max_steps": 1e4, "lr": 1e-3 /* inline */},\n  "run_name": "a//b"\n}\n')
    cfg = C.resolve(TinyConfig, f)
    assert cfg.train.max_steps == 10000 and isinstance(cfg.train.max_steps, int) and cfg.run_name == "a//b"


def test_resolved_config_round_trips(tmp_path):
    cfg = C.resolve(TinyConfig, None, ["train.lr=0.5", "train.betas=[0.8, 0.99]"])
    f = tmp_path / "config.yaml"
    f.write_text(C.to_yaml(cfg))
    assert C.resolve(TinyConfig, f) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (["trian.lr=1"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.lr=abc"], "train.lr: Input should be a valid number"),
        (["train.max_steps=1.5"], "train.max_steps: Input should be a valid integer"),
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["train.precision=fp8"], "train.precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32'"),
        (["train.ema.decay=2"], "train.ema.decay: Input should be less than or equal to 1"),
        (["nonsense"], "cannot read argument 'nonsense'"),
        (["--train.lr"], "override --train.lr needs a value"),
        (["train.lr=.inf"], "train.lr: Input should be a finite number (got inf)"),
        (["train.lr=.nan"], "train.lr: Input should be a finite number (got nan)"),
        (["train.betas=[0.9, -.inf]"], "train.betas.1: Input should be a finite number (got -inf)"),
        (["model.dropout=.nan"], "model.dropout: Input should be a finite number"),  # a recipe's own section too
        (["train.batch_size=0"], "train.batch_size: must be a whole number >= 1, or auto (got 0)"),
        (["train.batch_size=-4"], "train.batch_size: must be a whole number >= 1, or auto (got -4)"),
        (["train.batch_size=big"], "train.batch_size: must be a whole number >= 1, or auto (got 'big')"),
    ],
)
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        C.resolve(TinyConfig, None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        C.resolve(TinyConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n   max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML syntax error at line 3"):
        C.resolve(TinyConfig, bad)
    badj = tmp_path / "bad.json"
    badj.write_text('{"train": {"lr": 1,}}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1"):
        C.resolve(TinyConfig, badj)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        C.resolve(TinyConfig, top)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00b\x00i\x00n", r"c.yaml: a binary file, not a config \(byte 0xff at line 1\)"),
    (b"train:\n  lr: 1e-3\nrun_name: caf\xe9\n", r"c.yaml: not UTF-8 text \(byte 0xe9 at line 3\); a config is YAML or JSON saved as UTF-8"),
    (b"train:\n  lr: 1e-3\x00\n", r"c.yaml: a binary file, not a config \(a NUL byte at line 2\)"),
])
def test_config_file_that_is_not_utf8_text(tmp_path, content, message):
    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        C.resolve(TinyConfig, f)


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainhub", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = _cli("run", "tiny", "train.lrr=1", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "did you mean 'train.lr'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a bad config
    (tmp_path / "latin1.yaml").write_bytes(b"run_name: caf\xe9\n")
    r = _cli("run", "tiny", "--config", "latin1.yaml", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "trainhub: error: latin1.yaml: not UTF-8 text (byte 0xe9 at line 1); " \
        "a config is YAML or JSON saved as UTF-8"
    r = _cli("run", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "unknown recipe 'nope'; available:" in r.stderr and "tiny" in r.stderr


def test_cli_config_prints_defaults_and_schema(tmp_path):
    r = _cli("config", "tiny")
    assert r.returncode == 0
    data = yaml.safe_load(r.stdout)
    assert data["train"]["lr"] == 1e-2 and data["loggers"]["jsonl"]["enabled"] is True
    f = tmp_path / "c.yaml"
    f.write_text(r.stdout)
    assert C.resolve(TinyConfig.__mro__[0], None) is not None
    r = _cli("config", "tiny", "--schema")
    schema = json.loads(r.stdout)
    assert "train" in schema["properties"] and "loggers" in schema["properties"]


def test_run_config_accepts_the_name_of_a_config_the_recipe_ships(tmp_path, monkeypatch):
    from trainhub.builtin.tiny import TinyRecipe
    from trainhub.errors import UserError
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config, shipped_configs

    pkg = tmp_path / "shipping_recipe"
    (pkg / "configs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from trainhub.builtin.tiny import TinyRecipe\n\nclass Shipping(TinyRecipe):\n    name = 'shipping'\n")
    (pkg / "configs" / "wide.yaml").write_text("model:\n  hidden: 48\n")
    (pkg / "configs" / "notes.txt").write_text("not a config")
    monkeypatch.syspath_prepend(str(tmp_path))
    import shipping_recipe

    recipe = shipping_recipe.Shipping()
    assert list(shipped_configs(recipe)) == ["wide"]
    cfg = resolve_config(recipe, get_plugins(), "wide", ["train.lr=0.5"])
    assert cfg.model.hidden == 48 and cfg.train.lr == 0.5
    with pytest.raises(UserError, match=r"--config narrow: no such file.*shipped: wide"):
        resolve_config(recipe, get_plugins(), "narrow")
    with pytest.raises(ConfigError, match="config file not found: sub/narrow.yaml"):
        resolve_config(recipe, get_plugins(), "sub/narrow.yaml")
    assert shipped_configs(TinyRecipe()) == {}  # trainhub itself ships none


def test_whole_config_validator_error_is_its_message_alone():
    from pydantic import model_validator

    class Checked(TinyConfig):
        @model_validator(mode="after")
        def _hidden_vs_depth(self):
            if self.model.hidden < self.model.depth:
                raise ValueError(f"model.hidden={self.model.hidden} must be at least model.depth={self.model.depth}")
            return self

    with pytest.raises(ConfigError) as e:
        C.resolve(Checked, None, ["model.hidden=1", "model.depth=3"])
    assert str(e.value) == "invalid config: model.hidden=1 must be at least model.depth=3"
    with pytest.raises(ConfigError, match=r"^invalid config: train.lr: Input should be greater than 0 \(got -1\.0\)$"):
        C.resolve(TinyConfig, None, ["train.lr=-1.0"])


def test_cli_shows_a_user_error_from_a_dataloader_worker_as_its_one_line():
    from torch._utils import ExceptionWrapper

    from trainhub.cli import error_line
    from trainhub.errors import UserError

    try:
        raise UserError("data.root=/x/broken.png: cannot read image (data.on_error=stop)")
    except UserError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")  # what torch sends back from a worker
    with pytest.raises(UserError) as e:
        wrapped.reraise()
    assert "Traceback" in str(e.value)
    assert error_line(e.value) == "data.root=/x/broken.png: cannot read image (data.on_error=stop)"
    assert error_line(UserError("plain: message")) == "plain: message"
