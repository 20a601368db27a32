"""The run directory: one writer, no new run over old checkpoints, nothing written before a resume is accepted,
and metrics.jsonl holding each step once after a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from trainhub import config as C
from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe
from trainhub.errors import UserError
from trainhub.testing import read_metrics_file
from trainhub.training import checkpoint as ckpt
from trainhub.training.run import train


def _files(run_dir):
    """Every file of the run directory with its bytes (the lock file aside)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "trainhub.lock"}


def test_a_second_writer_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, quiet):
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "trainhub", "run", "tiny", "--run-dir", str(run), "train.max_steps=100000", "train.log_every=1",
           "train.checkpoint_every=2", "loader.num_workers=2", "loggers.console.progress_bar=false", "train.eval_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and ckpt.latest(run / "checkpoints") is None:
            time.sleep(0.1)
        assert ckpt.latest(run / "checkpoints") is not None, "the first run saved no checkpoint"
        with pytest.raises(UserError) as e:
            train("tiny", overrides=quiet + ["train.max_steps=100000"], run_dir=run, resume="auto")
        assert str(e.value).startswith(f"run directory {run} is in use by another trainhub run (pid {proc.pid} on ")
        assert str(e.value).endswith("wait for it to end, or choose another --run-dir or run_name")
        os.kill(proc.pid, signal.SIGKILL)  # its two loader workers outlive it for a few seconds
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = ckpt.read_state(ckpt.latest(run / "checkpoints"))["step"]
    res = train("tiny", overrides=quiet + [f"train.max_steps={step + 2}", "loader.num_workers=2"], run_dir=run, resume="auto")
    assert res.status == "completed" and res.step == step + 2


def test_a_new_run_never_writes_where_checkpoints_are(tmp_path, quiet):
    first = train("tiny", overrides=quiet + ["train.max_steps=4", "output_dir=" + str(tmp_path), "run_name=exp"])
    before = _files(first.run_dir)
    with pytest.raises(UserError) as e:
        train("tiny", overrides=quiet + ["train.max_steps=2", "output_dir=" + str(tmp_path), "run_name=exp"])
    assert str(e.value) == (f"run directory {first.run_dir} already holds checkpoints of an earlier run (newest: checkpoint-4); "
                            f"continue it with --resume auto, or choose another --run-dir or run_name")
    assert _files(first.run_dir) == before
    # timestamped names: a fresh one each time
    a = train("tiny", overrides=quiet + ["train.max_steps=1", "output_dir=" + str(tmp_path)])
    b = train("tiny", overrides=quiet + ["train.max_steps=1", "output_dir=" + str(tmp_path)])
    assert a.run_dir != b.run_dir and a.run_dir.parent == b.run_dir.parent


def test_resuming_an_earlier_checkpoint_in_place_moves_the_replaced_ones_aside(tmp_path, quiet, capsys):
    run, root = tmp_path / "k", tmp_path / "k" / "checkpoints"
    args = quiet + ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=5", "train.eval_every=6"]
    train("tiny", overrides=args, run_dir=run)
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "checkpoint-6"
    replaced = {n: (root / n / "model.safetensors").read_bytes() for n in ("checkpoint-4", "checkpoint-6")}
    capsys.readouterr()
    train("tiny", overrides=args + ["train.max_steps=3"], resume=root / "checkpoint-2")  # another future from step 2
    [aside] = root.glob("replaced-*")
    assert f"trainhub: resuming at step 2 replaces what this run did after it: checkpoint-4, checkpoint-6 moved to {aside}" \
        in capsys.readouterr().out
    assert {n: (aside / n / "model.safetensors").read_bytes() for n in replaced} == replaced  # kept, not deleted
    assert [p.name for _, p in ckpt.list_checkpoints(root)] == ["checkpoint-2", "checkpoint-3"]
    assert ckpt.latest(root).name == "checkpoint-3"
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "checkpoint-3"  # this history's best


def test_a_refused_resume_changes_nothing_in_the_run(tmp_path, quiet):
    run = train("tiny", overrides=quiet + ["train.max_steps=4"], run_dir=tmp_path / "r").run_dir
    before = _files(run)
    with pytest.raises(UserError, match="saved with batch_size=32, this run has 16"):
        train("tiny", overrides=quiet + ["train.batch_size=16"], resume=run / "checkpoints" / "checkpoint-4")
    assert _files(run) == before  # config.yaml still says 32
    res = train("tiny", overrides=quiet + ["train.max_steps=6"], run_dir=run, resume="auto")
    assert res.step == 6


class OtherConfig(C.RunConfig):
    """A recipe whose model section has none of tiny's keys."""


class Other(TinyRecipe):
    name = "other"
    config_class = OtherConfig


def test_a_checkpoint_of_another_recipe_is_named_as_such(tmp_path, quiet, trainhub_register, capsys):
    class Plugin:
        @hookimpl
        def trainhub_register_recipes(self, register):
            register(Other())

    trainhub_register(Plugin())
    run = train("tiny", overrides=quiet + ["train.max_steps=2"], run_dir=tmp_path / "r").run_dir
    before = _files(run)
    ck = run / "checkpoints" / "checkpoint-2"
    for resume, run_dir in ((ck, None), (run, None), ("auto", run)):
        with pytest.raises(UserError) as e:
            train("other", resume=resume, run_dir=run_dir)
        assert str(e.value) == f"{ck} is a checkpoint of recipe 'tiny', not 'other'; resume it with trainhub run tiny --resume {ck}"
    assert _files(run) == before
    from trainhub.cli import main

    capsys.readouterr()
    assert main(["eval", "other", "--checkpoint", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"trainhub: error: {ck} is a checkpoint of recipe 'tiny', not 'other'; "
                                                f"use trainhub eval tiny --checkpoint {run}")


class KillAt:
    """Ends the process's run at once after step ``n``, as a SIGKILL would (no checkpoint, no end record)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @hookimpl
    def trainhub_step_end(self, run, step, metrics):
        if step == self.n:
            self.n = -1
            raise KeyboardInterrupt


def test_metrics_hold_each_step_once_after_a_resume(tmp_path, quiet, trainhub_register):
    trainhub_register(KillAt(5))
    args = quiet + ["train.max_steps=8", "train.log_every=1", "train.checkpoint_every=3", "train.eval_every=4"]
    with pytest.raises(KeyboardInterrupt):
        train("tiny", overrides=args, run_dir=tmp_path / "r")
    metrics = tmp_path / "r" / "metrics.jsonl"
    assert [r["step"] for r in read_metrics_file(tmp_path / "r", "train")] == [1, 2, 3, 4, 5]
    with open(metrics, "a") as f:
        f.write('{"kind": "train", "st')  # a record cut off by the kill
    train("tiny", overrides=args, run_dir=tmp_path / "r", resume="auto")
    records = read_metrics_file(tmp_path / "r")  # every line parses
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8]
    assert [r["step"] for r in records if r["kind"] == "checkpoint"] == [3, 4, 6, 8]  # 4: the best eval
    assert [(r["step"], r["status"]) for r in records if r["kind"] == "end"] == [(8, "completed")]
    assert not (tmp_path / "r" / "metrics.jsonl.tmp").exists()
