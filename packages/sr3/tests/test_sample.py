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


def _unet_and_lr(tmp_path, tiny, size):
    """A 4-level UNet (sizes must be multiples of 8; x4) and an LR image of ``size`` (width, height)."""
    from trainhub_sr3.recipe import build_unet

    config = _config(tiny + ["model.unet.channel_multiplier=[1,2,2,2]", "model.zero_init_output=false"])
    torch.manual_seed(0)
    lr = tmp_path / f"lr_{size[0]}x{size[1]}.png"
    Image.fromarray((torch.rand(size[1], size[0], 3) * 255).byte().numpy()).save(lr)
    return config, build_unet(config.model).eval(), lr


def test_any_input_size_is_super_resolved_to_exactly_scale_times_it(tmp_path, tiny):
    config, net, lr = _unet_and_lr(tmp_path, tiny, (7, 9))  # x4: 28 x 36, no multiple of 8
    with torch.no_grad():
        get_plugins().recipe("sr3").sample({"model": net}, config, _args(input=str(lr)), tmp_path)
    assert Image.open(tmp_path / f"{lr.stem}_sr.png").size == (28, 36)


def test_an_input_the_unet_takes_as_it_is_samples_as_before(tmp_path, tiny):
    """A size that is already a multiple is sampled unpadded: the same pixels as sampling its bicubic upsampling."""
    import numpy as np

    from trainhub.kit.media import to_uint8_image
    from trainhub_sr3.data import to_tensor
    from trainhub_sr3.diffusion import sample
    from trainhub_sr3.recipe import schedules

    config, net, lr = _unet_and_lr(tmp_path, tiny, (6, 4))  # x4: 24 x 16
    m = config.model
    with torch.no_grad():
        get_plugins().recipe("sr3").sample({"model": net}, config, _args(input=str(lr)), tmp_path)
        sr = torch.nn.functional.interpolate(to_tensor(Image.open(lr).convert("RGB"))[None], size=(16, 24), mode="bicubic",
                                             align_corners=False).clamp(-1, 1)
        out = sample(net, sr, schedules(m)[1], m.sampler, m.residual, generator=torch.Generator().manual_seed(0),
                     prediction=m.prediction, residual_scale=m.residual_scale, temperature=m.temperature)
    assert np.array_equal(np.asarray(Image.open(tmp_path / f"{lr.stem}_sr.png")), np.asarray(to_uint8_image(out[0])))
