"""`trainhub sample sr3`: which schedule it samples with, and unconditional models."""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config


def _config(overrides):
    plugins = get_plugins()
    return resolve_config(plugins.recipe("sr3"), plugins, None, overrides)


class Spy(torch.nn.Module):
    """Counts its calls; predicts zeros of the noisy image's shape."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.calls, self.channels = 0, channels

    def forward(self, x, level):
        self.calls += 1
        return torch.zeros_like(x[:, -self.channels:])


def _args(**kw):
    base = dict(input=None, num=4, steps=None, seed=0, sampler=None, temperature=None, device=torch.device("cpu"))
    return argparse.Namespace(**{**base, **kw})


def test_sample_uses_the_val_schedule_when_given_and_respaces_train_to_steps(tmp_path, tiny, capsys):
    recipe = get_plugins().recipe("sr3")
    lr = tmp_path / "lr.png"
    Image.new("RGB", (4, 4), (90, 20, 200)).save(lr)
    with_val = _config(tiny + ["model.beta_schedule.val.n_timestep=7"])
    for config, steps, calls in ((with_val, None, 7), (with_val, 3, 3), (_config(tiny), None, 4)):  # tiny: eval_steps 4
        net = Spy()
        recipe.sample({"model": net}, config, _args(input=str(lr), steps=steps), tmp_path)
        assert net.calls == calls
    assert "sampling 7 steps (the val schedule)" in capsys.readouterr().err


def test_unconditional_models_generate_without_input(tmp_path, tiny):
    recipe = get_plugins().recipe("sr3")
    config = _config(tiny + ["model.conditional=false", "model.unet.in_channel=3", "model.residual=false"])
    net = Spy()
    recipe.sample({"model": net}, config, _args(num=2), tmp_path)
    names = sorted(p.name for p in tmp_path.glob("sample_*.png"))
    assert names == ["sample_000.png", "sample_001.png"] and Image.open(tmp_path / names[0]).size == (16, 16)  # image_size
    assert net.calls == 4
