"""No checkpoint is written from non-finite state, and "good" means finite and followed by a finite step."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from trainhub import hookimpl
from trainhub.errors import TrainingStopped
from trainhub.training import checkpoint as ckpt
from trainhub.training.run import train


def test_nonfinite_names_each_group_holding_a_nan_or_an_infinity():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    groups = ckpt.state_groups({"model": model}, {}, {"model": opt})
    assert ckpt.nonfinite(groups) == {}
    huge = {"w": torch.full((4,), 3e38), "h": torch.full((2,), 6e4, dtype=torch.float16)}  # finite, near each dtype's max
    assert ckpt.nonfinite({"big": huge}) == {}
    opt.state[model.bias]["exp_avg_sq"][1] = math.inf
    with torch.no_grad():
        model.weight[0, 2] = math.nan
    assert ckpt.nonfinite(ckpt.state_groups({"model": model}, {}, {"model": opt})) == {
        "model 'model'": "weight", "optimizer 'model' state": "param 1 exp_avg_sq"}
    assert ckpt.nonfinite({"bf16": {"x": torch.tensor([1.0, -math.inf], dtype=torch.bfloat16)}}) == {"bf16": "x"}


class PoisonAt:
    """Sets one weight of the model to infinity after optimizer step ``n`` (what an overflowing update does)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @hookimpl
    def trainhub_step_end(self, run, step, metrics):
        if step == self.n:
            with torch.no_grad():
                next(run.models["model"].parameters()).view(-1)[0] = math.inf


def test_a_checkpoint_is_never_written_from_nonfinite_weights(tmp_path, quiet, trainhub_register):
    trainhub_register(PoisonAt(2))
    root = tmp_path / "r" / "checkpoints"
    with pytest.raises(TrainingStopped) as e:
        train("tiny", overrides=quiet + ["train.max_steps=6", "train.checkpoint_every=1"], run_dir=tmp_path / "r")
    assert str(e.value).startswith("non-finite values at step 2 in model 'model' (e.g. net.0.weight): checkpoint-2 not written;")
    assert str(e.value).endswith(f"newest good checkpoint: {root / 'checkpoint-1'}")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-1"]  # no checkpoint-2, no checkpoint-2.tmp


def test_finite_garbage_from_a_huge_lr_is_not_called_good(tmp_path, quiet):
    # lr=1e30: the first step leaves weights near 1e30 (finite), every later step is non-finite; those
    # checkpoints are finite but bad, and the message must not offer them
    root = tmp_path / "r" / "checkpoints"
    with pytest.raises(TrainingStopped) as e:
        train("tiny", overrides=quiet + ["train.lr=1e30", "train.max_steps=20", "train.checkpoint_every=2", "train.keep_last=2"],
              run_dir=tmp_path / "r")
    assert str(e.value).endswith("no checkpoint of this run is known good (checkpoint-2, checkpoint-4 hold the weights that "
                                 "gave the non-finite steps); start again")
    w = load_file(str(root / "checkpoint-4" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values()) and max(float(v.abs().max()) for v in w.values()) > 1e20
