"""The shared trainer: exact resume, accumulation, atomic checkpoints, signals, non-finite losses."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe
from trainhub.errors import TrainingStopped, UserError
from trainhub.plugins import get_plugins
from trainhub.training import checkpoint as ckpt
from trainhub.training.run import train


def _weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in load_file(str(ckpt_dir / "model.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(ckpt_dir / "ema.safetensors")).items()})
    opt = ckpt.load_optim_state(ckpt_dir)["optimizers"]["model"]["state"]
    for i, st in opt.items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v
    return out


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_exact_mid_epoch(tmp_path, quiet, workers, stop_at):
    # 64 samples / batch 8 = 8 micro-batches per epoch; accumulation 2 -> 4 steps per epoch.
    # Stopping at step 6 is mid-epoch (epoch 1, 4 micro-batches in); dropout, augmentation noise,
    # warmup+cosine LR and EMA all depend on exactly restored state.
    base = quiet + [f"loader.num_workers={workers}", "data.num_samples=64", "data.val_samples=16", "train.batch_size=8",
                    "train.gradient_accumulation_steps=2", "train.schedule=cosine", "train.warmup_steps=3",
                    "train.eval_every=4", "train.deterministic=true", "model.dropout=0.3"]
    full = train("tiny", overrides=base + ["train.max_steps=12"], run_dir=tmp_path / "full")
    stop_at(6)
    half = train("tiny", overrides=base + ["train.max_steps=12"], run_dir=tmp_path / "half")
    assert half.status == "interrupted"
    state = json.loads((half.last_checkpoint / "training_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 4)
    resumed = train("tiny", overrides=base + ["train.max_steps=12"], run_dir=tmp_path / "half", resume="auto")
    assert resumed.step == 12
    _assert_identical(full.last_checkpoint, resumed.last_checkpoint)


def test_a_run_leaves_no_loader_workers_or_determinism_behind(tmp_path, quiet):
    """Worker processes stop with their data phase and with the run (left to the garbage collector they stalled the
    process's next run ~5 s per worker); ``train.deterministic`` holds for its own run only."""
    before = set(multiprocessing.active_children())
    workers_at_step: list[int] = []

    class CountWorkers:
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            workers_at_step.append(len(set(multiprocessing.active_children()) - before))

    probe = CountWorkers()
    get_plugins().pm.register(probe)
    try:  # 8 steps of batch 8, then a data phase of batch 16 with its own loader (4 steps an epoch)
        train("tiny", overrides=quiet + ["loader.num_workers=2", "loader.persistent_workers=true", "data.num_samples=64",
                                         "train.batch_size=8", "train.max_steps=12", "train.deterministic=true",
                                         "train.data_schedule=[{from_epoch: 1, batch_size: 16}]"], run_dir=tmp_path / "r")
    finally:
        get_plugins().pm.unregister(probe)
    assert workers_at_step == [2] * 12  # the first phase's workers stopped when the second phase's started
    assert set(multiprocessing.active_children()) - before == set()
    assert not torch.are_deterministic_algorithms_enabled()


def test_gradient_accumulation_matches_large_batch(tmp_path, quiet):
    base = quiet + ["model.dropout=0", "data.jitter=0", "data.num_samples=64", "data.val_samples=0", "train.max_steps=5",
                    "train.ema.enabled=false", "train.eval_at_end=false", "train.best_metric=null"]
    big = train("tiny", overrides=base + ["train.batch_size=8"], run_dir=tmp_path / "big")
    acc = train("tiny", overrides=base + ["train.batch_size=2", "train.gradient_accumulation_steps=4"], run_dir=tmp_path / "acc")
    wa = load_file(str(big.last_checkpoint / "model.safetensors"))
    wb = load_file(str(acc.last_checkpoint / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_layout_and_keep_last(tmp_path, quiet):
    res = train("tiny", overrides=quiet + ["train.max_steps=10", "train.checkpoint_every=2", "train.keep_last=2",
                                           "train.eval_every=5"], run_dir=tmp_path / "r")
    names = sorted(p.name for p in (res.run_dir / "checkpoints").iterdir())
    best = json.loads((res.run_dir / "best.json").read_text())["checkpoint"]
    assert names == sorted({"checkpoint-8", "checkpoint-10", best})
    files = sorted(p.name for p in res.last_checkpoint.iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "optimizer.pt", "rng_state_rank0.safetensors", "training_state.json"]
    torch.load(res.last_checkpoint / "optimizer.pt", weights_only=True)  # no pickle needed


def test_crash_during_save_leaves_previous_checkpoint(tmp_path, quiet, monkeypatch):
    train("tiny", overrides=quiet + ["train.max_steps=4"], run_dir=tmp_path / "r")

    def dying_save(directory, models, emas, optim_state, state):
        from safetensors.torch import save_model

        save_model(models["model"], str(directory / "model.safetensors"))  # half written, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_main", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train("tiny", overrides=quiet + ["train.max_steps=8"], run_dir=tmp_path / "r", resume="auto")
    monkeypatch.undo()
    root = tmp_path / "r" / "checkpoints"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".tmp")] == ["checkpoint-4"]
    assert ckpt.latest(root).name == "checkpoint-4"
    res = train("tiny", overrides=quiet + ["train.max_steps=8"], run_dir=tmp_path / "r", resume="auto")
    assert res.step == 8 and not list(root.glob("*.tmp"))


def test_sigterm_saves_and_exits_zero(tmp_path):
    cmd = [sys.executable, "-m", "trainhub", "run", "tiny", "--run-dir", str(tmp_path / "r"), "train.max_steps=100000",
           "train.log_every=1", "loader.num_workers=0", "loggers.console.progress_bar=false", "train.eval_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    saved = ckpt.latest(tmp_path / "r" / "checkpoints")
    assert saved is not None and f"checkpoint saved to {saved}" in out
    step = json.loads((saved / "training_state.json").read_text())["step"]
    assert 3 <= step < 100000
    assert json.loads(metrics.read_text().splitlines()[-1])["status"] == "interrupted"


class NaNAt(TinyRecipe):
    """Tiny recipe whose loss is NaN on chosen optimizer steps."""

    name = "tiny"

    def __init__(self, bad_steps: set[int]) -> None:
        self.bad_steps = bad_steps

    def train_step(self, batch, ctx):
        out = super().train_step(batch, ctx)
        if ctx.step in self.bad_steps:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, quiet):
    res = train(NaNAt({2, 3}), overrides=quiet + ["train.max_steps=6", "train.log_every=6"], run_dir=tmp_path / "r")
    assert res.status == "completed" and res.step == 6
    line = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    assert line["nonfinite_skipped"] == 2
    w = load_file(str(res.last_checkpoint / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_too_many_nonfinite_in_a_row_stops_naming_the_newest_good_checkpoint(tmp_path, quiet):
    # steps 3, 4, 5 are non-finite: checkpoint-3 holds the weights step 3 started from, so checkpoint-2 is the
    # newest good one, and keep_last=2 must not prune it while checkpoint-4 and -5 are written
    root = tmp_path / "r" / "checkpoints"
    with pytest.raises(TrainingStopped) as e:
        train(NaNAt({3, 4, 5}), overrides=quiet + ["train.max_steps=10", "train.max_nonfinite=3", "train.checkpoint_every=1",
                                                  "train.keep_last=2"], run_dir=tmp_path / "r")
    good = root / "checkpoint-2"
    assert str(e.value) == (f"3 non-finite steps in a row at step 5 (train.max_nonfinite=3): lower train.lr, check the data, "
                            f"or use precision bf16/fp32; newest good checkpoint: {good} (checkpoint-4, checkpoint-5 hold the "
                            f"weights that gave the non-finite steps); continue from it with --resume {good}")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    # skipped steps advance the step counter but never the weights
    a, b = load_file(str(root / "checkpoint-4" / "model.safetensors")), load_file(str(root / "checkpoint-5" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() for k in a)
    res = train("tiny", overrides=quiet + ["train.max_steps=10", "train.checkpoint_every=1", "train.keep_last=2"],
                resume=good)  # the advice, followed: the bad checkpoints move aside
    assert res.status == "completed" and res.step == 10
    [aside] = root.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_resume_refuses_a_different_batch_layout(tmp_path, quiet):
    train("tiny", overrides=quiet + ["train.max_steps=2"], run_dir=tmp_path / "r")
    with pytest.raises(UserError, match="saved with batch_size=32, this run has 16"):
        train("tiny", overrides=quiet + ["train.max_steps=4", "train.batch_size=16"], run_dir=tmp_path / "r", resume="auto")


def test_dry_run_writes_nothing_and_says_what_it_checked(tmp_path, quiet, capsys):
    os.chdir(tmp_path)
    res = train("tiny", overrides=quiet + ["train.max_steps=50", "train.schedule=cosine", "model.hidden=16"], dry_run=True)
    assert res.step == 1 and not (tmp_path / "runs").exists() and not res.run_dir.exists()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "trainhub: dry run of tiny: config valid, models and data built, one step run, nothing written"
    assert "  model 'model': TinyMLP, 433 parameters (433 trained, EMA)" in out  # 8*16+16 + 16*16+16 + 16+1
    assert "  data: 2,048 training samples, 256 validation; batch 32 x accumulation 1 x 1 process; 64 steps per epoch, 50 steps" in out
    assert "  batch: x float32[32, 8], y float32[32, 1]" in out
    assert any(line.startswith("  step 1: loss=") and "grad_norm=" in line for line in out)
    assert "  optimizer 'model': adamw (lr 0.01, weight decay 0); schedule cosine over 50 steps, warmup 20" in out
    assert "  device cpu, precision fp32, one process" in out
    assert out[-1].startswith("  a run would write: runs/tiny/")


def test_epochs_and_linear_schedule(tmp_path, quiet):
    res = train("tiny", overrides=quiet + ["data.num_samples=64", "train.batch_size=16", "train.epochs=3",
                                           "train.schedule=linear", "train.warmup_steps=0", "train.log_every=1"],
                run_dir=tmp_path / "r")
    assert res.step == 12
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert lrs[0] == pytest.approx(1e-2 * (1 - 1 / 12)) and lrs[-1] == pytest.approx(0.0)


def test_ema_skips_non_persistent_buffers_so_ema_weights_load():
    from trainhub.training.ema import EMA

    class WithTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.register_buffer("pos", torch.arange(3.0), persistent=False)  # rebuilt in __init__, never saved
            self.register_buffer("count", torch.zeros(()))

    m = WithTable()
    ema = EMA(m, decay=0.5)
    state = ema.state_dict()
    assert "pos" not in state and "count" in state
    fresh = WithTable()
    fresh.load_state_dict(state, strict=True)  # what trainhub sample/eval --ema do with ema.safetensors


def test_assert_same_weights_names_what_differs(tmp_path):
    from safetensors.torch import save_file

    from trainhub.testing import assert_same_weights

    for name, bias in (("a", 0.0), ("b", 0.0), ("c", 1.0)):
        (tmp_path / name).mkdir()
        save_file({"w": torch.ones(2), "b": torch.full((2,), bias)}, str(tmp_path / name / "model.safetensors"))
    save_file({"w": torch.ones(2)}, str(tmp_path / "c" / "ema.safetensors"))
    save_file({"w": torch.ones(2), "extra": torch.zeros(1)}, str(tmp_path / "a" / "ema.safetensors"))
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError, match=r"model.safetensors: 1 tensors differ, e.g. \['b'\]"):
        assert_same_weights(tmp_path / "a", tmp_path / "c")
    with pytest.raises(AssertionError, match=r"ema.safetensors: different tensors \['extra'\]"):
        assert_same_weights(tmp_path / "a", tmp_path / "c", ("ema.safetensors",))


def test_tiny_without_validation_data(tmp_path, quiet, capsys):
    from trainhub import cli

    assert cli.main(["run", "tiny", "--dry-run", "data.val_samples=0", "loader.num_workers=0"]) == 2
    assert "data.val_samples=0 leaves nothing to evaluate: also set train.best_metric=null" in capsys.readouterr().err
    res = train("tiny", overrides=quiet + ["data.val_samples=0", "train.best_metric=null", "train.max_steps=4",
                                           "train.eval_every=2"], run_dir=tmp_path / "r")
    assert res.status == "completed"
    assert "eval @" not in capsys.readouterr().out  # no empty "val_mse=0" lines when there is nothing to evaluate


class Draws(TinyRecipe):
    """Tiny recipe that records the random draws its train_step makes from each host RNG."""

    name = "tiny"

    def __init__(self) -> None:
        self.draws: list[tuple[float, float, float]] = []

    def train_step(self, batch, ctx):
        import random

        import numpy as np

        self.draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        return super().train_step(batch, ctx)


def test_step_randomness_does_not_depend_on_worker_count(tmp_path, quiet):
    # loading in the training thread seeds random/numpy/torch per batch; the step must not see that
    base = quiet + ["data.num_samples=64", "train.batch_size=8", "train.max_steps=6", "data.val_samples=0",
                    "train.eval_at_end=false", "train.best_metric=null", "train.ema.enabled=false", "train.measure_flops=false"]
    runs = {}
    for workers in (0, 2):
        rec = Draws()
        train(rec, overrides=base + [f"loader.num_workers={workers}"], run_dir=tmp_path / str(workers))
        runs[workers] = rec.draws
    assert len(runs[0]) == 6 and runs[0] == runs[2]
    assert len({d[0] for d in runs[0]}) == 6 and len({d[1] for d in runs[0]}) == 6  # a fresh draw every step


class _ForeignTiny(TinyRecipe):
    """tiny, resumable from a made-up foreign format: weights in one file, EMA weights in another."""

    def __init__(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None) -> None:
        self.weights, self.ema = weights, ema

    def load_foreign(self, path, models, optimizers):
        from trainhub import ForeignResume

        models["model"].load_state_dict(self.weights)
        if self.ema is None:
            return 40
        return ForeignResume(40, ema={"model": self.ema}, restored=("weights", "ema", "step"))


@pytest.mark.parametrize("with_ema", [True, False])
def test_foreign_resume_restores_the_ema_it_is_given(tmp_path, quiet, capsys, with_ema):
    from trainhub.builtin.tiny import TinyMLP

    net = TinyMLP()
    weights = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    ema = {k: torch.full_like(v, -2.0) for k, v in net.state_dict().items()}
    recipe = _ForeignTiny(weights, ema if with_ema else None)
    over = quiet + ["train.max_steps=40", "train.eval_at_end=false", "train.best_metric=null"]
    res = train(recipe, overrides=over, run_dir=tmp_path / "r", resume=str(tmp_path / "foreign.bin"))
    assert res.step == 40  # nothing left to train: the saved EMA is exactly what was loaded
    saved = load_file(str(res.last_checkpoint / "ema.safetensors"))
    expect = ema if with_ema else weights
    for k, v in expect.items():
        assert torch.equal(saved[k], v.float()), k
    out = capsys.readouterr().out
    assert ("(weights, ema, step)" in out) == with_ema
    assert ("EMA of model restarted" in out) == (not with_ema)


def test_the_tiny_default_learns_far_below_predicting_zero(tmp_path):
    """The built-in example's default run, as `trainhub run tiny` runs it: val_mse falls at every eval and ends far
    below what predicting zero scores on the same validation set."""
    from trainhub.builtin.tiny import TinyRecipe
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    config = resolve_config(get_plugins().recipe("tiny"), get_plugins())
    _, val = TinyRecipe().build_data(config)
    zero = float(val.y.pow(2).mean())
    res = train("tiny", overrides=["loggers.console.progress_bar=false", "loader.num_workers=0"], run_dir=tmp_path / "r")
    scores = [r["val_mse"] for r in map(json.loads, (res.run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert len(scores) >= 3 and all(b < a for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.2 * zero, (scores, zero)
