"""The parameter-output monitor: tree, contents, budget, reader, resume, and no hooks outside saving steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe
from trainhub.observe import param_outputs
from trainhub.training.run import train


class WithSchedule(TinyRecipe):
    """The tiny recipe with a (fixed) diffusion-style noise schedule for the monitor."""

    def noise_schedule(self, models):
        betas = torch.linspace(1e-4, 2e-2, 100)
        return {"betas": betas, "alphas_cumprod": torch.cumprod(1 - betas, 0)}


def test_tree_and_contents(tmp_path, quiet, trainhub_register):
    hooks_seen: dict[int, int] = {}

    class CountHooks:
        @hookimpl(trylast=True)  # runs after the monitor attached (or not) its hooks
        def trainhub_step_start(self, run, step):
            hooks_seen[step + 1] = sum(len(m._forward_hooks) for m in run.models["model"].modules())

        @hookimpl
        def trainhub_run_end(self, run, status):
            hooks_seen[-1] = sum(len(m._forward_hooks) for m in run.models["model"].modules())

    trainhub_register(CountHooks())
    ov = quiet + ["loggers.param_outputs.enabled=true", "loggers.param_outputs.save_param_freq=5",
                  "loggers.param_outputs.save_activations=true", "loggers.param_outputs.layers_to_monitor=[linear]",
                  "train.max_steps=10"]
    res = train(WithSchedule(), overrides=ov, run_dir=tmp_path / "r")
    root = res.run_dir / "param_outputs"
    for sub in ("weights", "gradients", "activations"):
        assert sorted(p.name for p in (root / sub).iterdir()) == ["step_10.safetensors", "step_5.safetensors"]
    # forward hooks only on the saving steps (3 Linear layers), none before or after
    assert hooks_seen[5] == 3 and hooks_seen[10] == 3 and hooks_seen[4] == 0 and hooks_seen[6] == 0 and hooks_seen[-1] == 0
    assert param_outputs.steps(res.run_dir) == [5, 10]
    out = param_outputs.load(res.run_dir, 5)
    assert set(out["weights"]) == {"model.net.0.weight", "model.net.0.bias", "model.net.3.weight", "model.net.3.bias",
                                   "model.net.6.weight", "model.net.6.bias"}
    assert out["activations"]["model.net.0"].shape == (4, 64)  # activation_samples=4 of the batch of 32
    st = out["gradient_stats"]["model.net.0.weight"]
    assert set(param_outputs.STAT_KEYS) | {"numel", "shape", "hist"} == set(st)
    g = out["gradients"]["model.net.0.weight"]
    for key, want in (("norm", g.norm()), ("mean", g.mean()), ("std", g.std()), ("min", g.min()), ("max", g.max())):
        torch.testing.assert_close(torch.tensor(st[key]), want, rtol=1e-5, atol=1e-7, msg=key)
    assert st["nan_count"] == 0 and st["shape"] == [64, 8] and sum(st["hist"]["counts"]) == 64 * 8
    assert out["losses"]["step"] == 5 and set(out["losses"]) == {"step", "loss"}
    torch.testing.assert_close(out["noise_schedule"]["alphas_cumprod"], WithSchedule().noise_schedule({})["alphas_cumprod"])
    assert param_outputs.load(res.run_dir)["losses"]["step"] == 10  # default: the last saved step
    summary = json.loads((root / "summary_statistics.json").read_text())
    assert summary["total_steps"] == 10 and summary["saves"] == 2 and summary["save_steps"] == [5, 10]
    loss = summary["losses"]["loss"]
    assert loss["min"] <= loss["first"] and loss["final_step"] == 10 and summary["timing"]["seconds_in_param_outputs"] > 0
    pngs = {p.name for p in (root / "visualizations").iterdir()}
    assert {"loss_curves.png", "gradient_norms.png", "weights_distributions_step_10.png",
            "gradients_distributions_step_10.png"} == pngs
    assert not list(root.rglob("*.tmp"))


def test_disk_budget_stops_tensors_keeps_statistics(tmp_path, quiet):
    ov = quiet + ["loggers.param_outputs.enabled=true", "loggers.param_outputs.save_param_freq=2",
                  "loggers.param_outputs.disk_budget_mb=0.01", "loggers.param_outputs.plots=false", "train.max_steps=8"]
    with pytest.warns(UserWarning, match="over loggers.param_outputs.disk_budget_mb=0.01; full tensors stop") as rec:
        res = train("tiny", overrides=ov, run_dir=tmp_path / "r")
    assert len([w for w in rec if "disk_budget_mb" in str(w.message)]) == 1
    root = res.run_dir / "param_outputs"
    assert [p.name for p in (root / "weights").iterdir()] == ["step_2.safetensors"]
    assert [p.name for p in (root / "gradients").iterdir()] == ["step_2.safetensors"]
    assert len(list((root / "statistics").glob("weight_stats_step_*.json"))) == 4
    assert json.loads((root / "summary_statistics.json").read_text())["over_budget"] is True


def test_resume_continues_history(tmp_path, quiet, stop_at):
    stop_at(4)
    ov = quiet + ["loggers.param_outputs.enabled=true", "loggers.param_outputs.save_param_freq=2", "train.max_steps=8",
                  "loggers.param_outputs.plots=false", "loggers.param_outputs.layers_to_monitor=[model.net.0]"]
    assert train("tiny", overrides=ov, run_dir=tmp_path / "r").status == "interrupted"
    train("tiny", overrides=ov, run_dir=tmp_path / "r", resume="auto")
    summary = json.loads((tmp_path / "r" / "param_outputs" / "summary_statistics.json").read_text())
    assert summary["save_steps"] == [2, 4, 6, 8] and summary["saves"] == 4 and summary["monitored_layers"] == ["model.net.0"]
    assert summary["losses"]["loss"]["first_step"] == 2 and summary["losses"]["loss"]["final_step"] == 8
    assert set(load_file(str(tmp_path / "r" / "param_outputs" / "weights" / "step_6.safetensors"))) == {"model.net.0.weight", "model.net.0.bias"}


def test_layer_selection_by_kind_and_glob():
    class SelfAttention(nn.Module):  # recognised by its class name, as recipes name their attention blocks
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)

    class ScaleNorm(nn.Module):  # a norm recognised by its class name
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 4), nn.Embedding(10, 4))
    m.add_module("attn", SelfAttention())
    m.add_module("mha", nn.MultiheadAttention(4, 2))
    m.add_module("rms", ScaleNorm())
    models = {"model": m}
    assert sorted(param_outputs.select_modules(models, ["conv", "attention", "model.2"])) == ["model.0", "model.2", "model.attn", "model.mha"]
    assert sorted(param_outputs.select_modules(models, ["norm", "embedding"])) == ["model.1", "model.3", "model.rms"]
    # an attention block without parameters of its own contributes its subtree's; each parameter once
    params = param_outputs.monitored_parameters(param_outputs.select_modules(models, ["attention", "linear"]))
    assert "model.attn.qkv.weight" in params and "model.mha.in_proj_weight" in params
    assert len(params) == len({id(p) for p in params.values()})
    everything = param_outputs.select_modules(models, ["all"])
    assert len(param_outputs.monitored_parameters(everything)) == len(list(m.parameters()))


def test_tensor_stats_count_nonfinite_and_ignore_them_elsewhere():
    st = param_outputs.tensor_stats(torch.tensor([0.0, 1.0, 2.0, -3.0, math.nan, math.inf]))
    assert (st["nan_count"], st["inf_count"], st["numel"]) == (1, 1, 6)
    assert (st["min"], st["max"], st["mean"]) == (-3.0, 2.0, 0.0)
    assert st["frac_zeros"] == pytest.approx(1 / 6) and st["norm"] == pytest.approx(math.sqrt(14))
    assert sum(st["hist"]["counts"]) == 4


def test_unknown_model_name_is_a_user_error(tmp_path, quiet):
    from trainhub.errors import UserError

    with pytest.raises(UserError, match=r"loggers.param_outputs.models: no model \['nope'\]; this recipe builds \['model'\]"):
        train("tiny", overrides=quiet + ["loggers.param_outputs.enabled=true", "loggers.param_outputs.models=[nope]",
                                         "train.max_steps=1"], run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "param_outputs").exists()
