"""SIGINT/SIGTERM: one request per keypress however often it is delivered, exit 0 under ``hatch run``, and a
signal during start-up ends the run with one line and exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainhub.training import checkpoint as ckpt

HATCH_TOML = Path(__file__).resolve().parents[3] / "hatch.toml"
FAST = ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.eval_every=0"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRAINHUB_PLUGINS", "TRAINHUB_DISABLE_PLUGIN_AUTOLOAD")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return {**env, **extra}


def _wait_for(pred, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not pred():
        time.sleep(0.05)
    assert pred(), "timed out"


def test_the_command_line_installs_its_handler_before_importing_torch():
    code = "import sys, trainhub.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.strip() == "False", out.stderr  # else Ctrl-C in torch's 3-5 s import is a traceback


@pytest.mark.skipif(not Path("/bin/sh").exists() or not HATCH_TOML.is_file(), reason="needs /bin/sh and the repository's hatch.toml")
def test_ctrl_c_under_hatch_run_is_one_request_and_exit_0(tmp_path):
    """``hatch run trainhub ...`` as hatch runs it: its script through ``/bin/sh -c``; the keypress as a terminal
    sends it, to the whole foreground process group (the loader workers included), then once more from a launcher."""
    script = re.search(r'^trainhub = "(.*)"', HATCH_TOML.read_text(), re.M)
    assert script, "hatch.toml's default env has no trainhub script"
    run = tmp_path / "r"
    args = f"run tiny --run-dir {run} train.max_steps=100000 train.log_every=1 loader.num_workers=2 loggers.console.progress_bar=false"
    proc = subprocess.Popen(["/bin/sh", "-c", script.group(1).replace("{args}", args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count('"train"') >= 3)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # torchrun's launcher forwards the keypress again within milliseconds
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert out.count("received SIGINT") == 1, out
    saved = ckpt.latest(run / "checkpoints")
    assert saved is not None and f"checkpoint saved to {saved}" in out and "Traceback" not in err


SLOW_PLUGIN = '''
import os, time
from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe

class SlowStart(TinyRecipe):
    name = "slow_tiny"  # the built-in tiny, with a start-up that waits for a signal

    def build_data(self, config):
        print("building data", flush=True)
        time.sleep(float(os.environ.get("SLOW_START_S", "60")))
        return super().build_data(config)

@hookimpl
def trainhub_register_recipes(register):
    register(SlowStart())
'''


def _slow_plugin(root: Path) -> Path:
    """An installed plugin (a distribution's metadata and module on the path, as pip lays them out)."""
    meta = root / "trainhub_test_slow-0.0.1.dist-info"
    meta.mkdir(parents=True)
    (root / "trainhub_test_slow.py").write_text(SLOW_PLUGIN)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: trainhub-test-slow\nVersion: 0.0.1\n")
    (meta / "entry_points.txt").write_text("[trainhub]\ntest_slow = trainhub_test_slow\n")
    return root


@pytest.mark.parametrize("sig, resumed", [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_signal_during_start_up_is_one_line_and_exit_0(tmp_path, sig, resumed):
    from trainhub.builtin.tiny import TinyRecipe
    from trainhub.training.run import train

    class SlowTiny(TinyRecipe):
        name = "slow_tiny"

    run = tmp_path / "r"
    before = {}
    if resumed:
        train(SlowTiny(), overrides=FAST + ["train.max_steps=2"], run_dir=run)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "trainhub.lock"}
    plugin = _slow_plugin(tmp_path / "site")
    env = _env(PYTHONPATH=os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]))  # with every installed plugin, like the run before
    cmd = [sys.executable, "-m", "trainhub", "run", "slow_tiny", "--run-dir", str(run), "train.max_steps=4", *FAST]
    proc = subprocess.Popen(cmd + (["--resume", "auto"] if resumed else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        first = proc.stdout.readline().strip()
        assert first == "building data", proc.communicate(timeout=120)[1]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == f"trainhub: {sig.name} during start-up: stopped before the first step, nothing to save"
    assert "Traceback" not in err
    if resumed:
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "trainhub.lock"} == before
    else:
        assert not run.exists()  # the directory it had created for the run is gone again
