"""The default problem is learnt: a shortened run beats bicubic on the recipe's own eval, and default.yaml is the
schema defaults written out. The full margin (consistency >= 35 dB, sharper than bicubic, K-sample mean and single
samples above bicubic) belongs to the measured default run in the README."""

from __future__ import annotations

import json

import pytest

from trainhub.training.run import train

# the default problem (shapes 8 -> 32, x0 of the residual, L2) with a narrower UNet and a short schedule; no EMA
# (at decay 0.995 over a third of its weights would still be the zero-output start after 200 steps)
SHORT = ["model.unet.inner_channel=16", "model.unet.norm_groups=4", "model.unet.channel_multiplier=[1,2]",
         "model.unet.attn_res=[]", "model.eval_steps=5", "model.eval_samples=2", "data.val_len=16",
         "train.max_steps=200", "train.warmup_steps=10", "train.lr=2e-3", "train.ema.enabled=false", "train.eval_every=0", "train.checkpoint_every=0",
         "train.cpu_threads=1", "train.measure_flops=false", "loader.num_workers=0", "loggers.console.progress_bar=false"]


def _evals(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]


@pytest.mark.slow
def test_a_short_run_learns_the_edges_bicubic_blurs(tmp_path):
    res = train("sr3", overrides=SHORT, run_dir=tmp_path / "run")
    (ev,) = _evals(res.run_dir)
    # the untrained UNet's last convolution starts at zero: it would return bicubic itself (gain 0, same sharpness)
    assert ev["psnr_mean"] > ev["psnr_bicubic"] + 0.3, ev
    assert ev["psnr"] > ev["psnr_bicubic"], ev
    assert ev["sharpness_bicubic"] < ev["sharpness"] < 2 - ev["sharpness_bicubic"], ev  # sharper, and closer to HR's 1
    assert ev["consistency"] > ev["consistency_bicubic"], ev


def test_default_yaml_is_the_default():
    from importlib.resources import files

    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    recipe, plugins = get_plugins().recipe("sr3"), get_plugins()
    configs = files("trainhub_sr3") / "configs"
    written = resolve_config(recipe, plugins, str(configs / "default.yaml"), []).model_dump()
    assert written == resolve_config(recipe, plugins, None, []).model_dump()
    photos = resolve_config(recipe, plugins, str(configs / "photos.yaml"), [])
    assert (photos.data.source, photos.model.loss, photos.train.lr, photos.train.max_steps) == ("embedded", "l1", 2e-4, 1500)
