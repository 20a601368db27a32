"""Plugin isolation in lifecycle hooks (`plugin_errors: stop|disable`) and hook call tracing (TRAINHUB_TRACE_HOOKS=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainhub import hookimpl
from trainhub.errors import PluginError
from trainhub.training.run import train

LIFECYCLE = ["trainhub_run_start", "trainhub_step_end", "trainhub_eval_end",
             "trainhub_checkpoint_saved", "trainhub_run_end"]


def _trainhub(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("TRAINHUB_TRACE_HOOKS", "TRAINHUB_PLUGINS")}
    full["TRAINHUB_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # core's built-ins only: fast and the same on every machine
    full.update(env)
    return subprocess.run([sys.executable, "-m", "trainhub", *args], env=full, capture_output=True, text=True, timeout=300)


def test_trace_hooks_env_prints_every_hook_call(tmp_path):
    args = ["run", "tiny", "--run-dir", str(tmp_path / "run"), "train.max_steps=2", "train.log_every=1",
            "loader.num_workers=0", "loggers.console.progress_bar=false"]
    proc = _trainhub(args, TRAINHUB_TRACE_HOOKS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    for kind in ("recipes", "models", "datasets", "losses", "loggers"):
        assert any(f"trainhub_register_{kind}" in line for line in lines), f"registration hook {kind} not traced"
    first = [next((i for i, line in enumerate(lines) if hook in line), None) for hook in LIFECYCLE]
    assert None not in first, f"untraced hooks: {[h for h, i in zip(LIFECYCLE, first) if i is None]}\n{proc.stderr[-3000:]}"
    assert first == sorted(first), "lifecycle hooks traced out of order"
    step_end = [line for line in lines if "trainhub_step_end" in line]
    assert any("logger:jsonl" in line for line in step_end), "the plugin receiving the call is not named"
    untraced = _trainhub(["list"])
    assert untraced.returncode == 0 and "trainhub_register_" not in untraced.stderr


def test_disabled_plugin_gets_no_more_calls_and_others_keep_theirs(tmp_path, quiet, trainhub_register):
    calls: dict[str, list[str]] = {"flaky": [], "steady": []}

    class Flaky:
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            calls["flaky"].append(f"step_end {step}")
            if step == 2:
                raise KeyError("missing")

        @hookimpl
        def trainhub_run_end(self, run, status):
            calls["flaky"].append("run_end")

    class Steady:
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            calls["steady"].append(f"step_end {step}")

        @hookimpl
        def trainhub_run_end(self, run, status):
            calls["steady"].append(f"run_end {status}")

    trainhub_register(Flaky(), name="flaky")
    trainhub_register(Steady(), name="steady")
    with pytest.warns(UserWarning, match="plugin 'flaky' failed in trainhub_step_end and is disabled for this run: KeyError"):
        res = train("tiny", overrides=quiet + ["train.max_steps=4", "plugin_errors=disable"], run_dir=tmp_path / "r")
    assert res.status == "completed" and res.step == 4
    assert calls["flaky"] == ["step_end 1", "step_end 2"]
    assert calls["steady"] == ["step_end 1", "step_end 2", "step_end 3", "step_end 4", "run_end completed"]


def test_stop_mode_fails_the_run_naming_the_plugin_and_tells_the_others(tmp_path, quiet, trainhub_register):
    ends: list[str] = []

    class Broken:
        @hookimpl
        def trainhub_eval_end(self, run, step, metrics, media):
            raise ValueError("cannot upload")

    class Watcher:
        @hookimpl
        def trainhub_run_end(self, run, status):
            ends.append(status)

    trainhub_register(Broken(), name="uploader")
    trainhub_register(Watcher(), name="watcher")
    with pytest.raises(PluginError, match="plugin 'uploader' failed in trainhub_eval_end: ValueError: cannot upload"):
        train("tiny", overrides=quiet + ["train.max_steps=4", "train.eval_every=2"], run_dir=tmp_path / "r")
    assert ends == ["failed"]


def test_a_failing_hook_is_one_line_and_the_run_saves_first(tmp_path, capsys, trainhub_register):
    from trainhub.cli import main
    from trainhub.training import checkpoint as ckpt

    class Bad:
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            if step == 3:
                raise ValueError("boom\nsecond line")

    trainhub_register(Bad(), name="bad")
    run = tmp_path / "r"
    args = ["run", "tiny", "--run-dir", str(run), "train.max_steps=6", "loader.num_workers=0", "loggers.console.progress_bar=false"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    saved = run / "checkpoints" / "checkpoint-3"
    assert err[-1] == (f"trainhub: error: plugin 'bad' failed in trainhub_step_end: ValueError: boom second line; fix or "
                       f"uninstall it, or set plugin_errors=disable to train on without it; saved {saved} first; resume "
                       f"with --resume auto")
    assert "Traceback" not in "\n".join(err) and ckpt.read_state(saved)["step"] == 3  # nothing lost
    assert main(args + ["--resume", "auto", "plugin_errors=disable"]) == 0
    assert ckpt.read_state(ckpt.latest(run / "checkpoints"))["step"] == 6
