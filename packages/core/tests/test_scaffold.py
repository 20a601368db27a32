"""`trainhub new plugin NAME`: the package it writes installs, is discovered, trains, and its own tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainhub import cli, plugins
from trainhub.errors import UserError
from trainhub.kit import scaffold

NAME = "scaffold_demo"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(generated package folder, folder it was pip-installed into), built once for this module."""
    root = tmp_path_factory.mktemp("scaffold")
    pkg = scaffold.create(NAME, root / "pkg")
    target = root / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(pkg)]
    subprocess.run(cmd, check=True, capture_output=True)
    return pkg, target


@pytest.mark.parametrize("bad", ["My-Plugin", "1abc", "", "a b", "abc_", "x" * 41, "run", "new", "class"])
def test_invalid_names_are_one_line_errors(bad, tmp_path, capsys):
    with pytest.raises(UserError):
        scaffold.create(bad, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert cli.main(["new", "plugin", bad, "--dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainhub: error: plugin name") and err.count("\n") == 1


def test_name_of_an_installed_recipe_is_refused(tmp_path):
    with pytest.raises(UserError, match="recipe named 'tiny' is already installed \\(from trainhub\\)"):
        scaffold.create("tiny", tmp_path / "p")


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert cli.main(["new", "plugin", "abc", "--dir", str(full)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["new", "plugin", "abc", "--dir", str(empty)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    assert (empty / "src" / "trainhub_abc" / "recipe.py").is_file()


def test_default_folder_is_named_after_the_distribution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new", "plugin", "two_words"]) == 0
    pyproject = (tmp_path / "trainhub-two-words" / "pyproject.toml").read_text()
    assert 'name = "trainhub-two-words"' in pyproject
    assert '[project.entry-points.trainhub]\ntwo_words = "trainhub_two_words.plugin"' in pyproject


def test_installed_package_is_listed_and_trains(installed, monkeypatch, capsys, tmp_path):
    pkg, target = installed
    assert (target / f"trainhub_{NAME}" / "configs" / "default.yaml").is_file()  # package data made it in
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.setattr(plugins, "_PLUGINS", None)  # fresh discovery; the previous registry comes back afterwards
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}  (trainhub-scaffold-demo 0.1.0)  trainhub_{NAME}.plugin" in out
    assert f"recipes: {NAME}" in out and f"models: {NAME}-convnet" in out
    run_dir = tmp_path / "run"
    args = ["run", NAME, "--run-dir", str(run_dir), "train.max_steps=3", "data.num_samples=32", "data.val_samples=8",
            "train.batch_size=8", "loader.num_workers=0", "loggers.console.progress_bar=false"]
    assert cli.main(args) == 0
    assert (run_dir / "checkpoints" / "checkpoint-3" / "ema.safetensors").is_file()
    assert list((run_dir / "samples").rglob("noisy_denoised_clean.png"))
    shipped = pkg / "src" / f"trainhub_{NAME}" / "configs" / "default.yaml"
    assert cli.main(["run", NAME, "--config", str(shipped), "--dry-run", "loader.num_workers=0",
                     "loggers.console.progress_bar=false"]) == 0
    capsys.readouterr()
    assert cli.main(["run", NAME, "--dry-run", "data.val_samples=0", "loader.num_workers=0"]) == 2
    assert "data.val_samples=0 leaves nothing to evaluate: also set train.best_metric=null" in capsys.readouterr().err


def test_generated_tests_pass_unmodified(installed):
    pkg, target = installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("TRAINHUB_PLUGINS", None)
    env.pop("TRAINHUB_DISABLE_PLUGIN_AUTOLOAD", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=pkg, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "7 passed" in proc.stdout
