"""The reference's JSON config and checkpoint prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainhub import UserError
from trainhub.plugins import get_plugins
from trainhub.run import resolve_config

DATA = Path(__file__).parent / "data"


def test_reference_json_maps_onto_our_schema(tmp_path):
    recipe = get_plugins().recipe("sr3")
    cfg = resolve_config(recipe, get_plugins(), DATA / "sr_sr3_16_128.json")
    u = cfg.model.unet
    assert (u.inner_channel, u.norm_groups, u.channel_multiplier, u.attn_res, u.res_blocks, u.dropout, u.image_size) == \
        (64, 32, [1, 2, 4, 8, 8], [16], 2, 0.2, 128)
    assert u.noise_encoding == "sqrt_gamma"  # their weights embed sqrt(gamma) itself; the embedded default uses log_snr
    assert cfg.model.beta_schedule.train.n_timestep == 2000 and cfg.model.beta_schedule.val.linear_end == 1e-2
    assert (cfg.model.prediction, cfg.model.residual, cfg.model.sampler) == ("eps", False, "ancestral")  # their objective
    assert (cfg.data.source, cfg.data.root, cfg.data.l_resolution, cfg.data.r_resolution) == ("folder", "DATAROOT", 16, 128)
    assert cfg.data.val_root == "DATAROOT" and cfg.data.val_len == 50
    t = cfg.train
    assert (t.max_steps, t.eval_every, t.checkpoint_every, t.log_every, t.lr, t.optimizer, t.batch_size) == \
        (1_000_000, 10_000, 10_000, 200, 1e-4, "adam", 4)
    assert (t.ema.start_step, t.ema.every, t.ema.decay) == (5000, 1, 0.9999)
    assert cfg.loader.num_workers == 8 and cfg.run_name == "distributed_high_sr_ffhq"
    assert cfg.loggers.wandb.project == "distributed_high_sr_ffhq"
    po = cfg.loggers.param_outputs
    assert (po.enabled, po.save_param_freq, po.save_weights, po.save_gradients, po.save_activations, po.layers_to_monitor) == \
        (True, 1000, True, False, True, ["downs.1", "mid.0.attn"])


def test_unmappable_keys_are_listed_in_one_error(tmp_path):
    text = (DATA / "sr_sr3_16_128.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(text.replace('"res_blocks": 2,', '"res_blocks": 2, "use_magic": true,').replace('"n_iter": 1e6,', '"n_iter": 1e6, "warp": 9,'))
    with pytest.raises(UserError, match=r"cannot map these keys of the reference SR3 config: model.unet.use_magic, train.warp"):
        resolve_config(get_plugins().recipe("sr3"), get_plugins(), bad)


def test_foreign_resume_from_reference_prefix(tmp_path, tiny):
    from trainhub.run import train
    from trainhub_sr3 import compat
    from trainhub_sr3.recipe import build_unet

    cfg = resolve_config(get_plugins().recipe("sr3"), get_plugins(), None, tiny)
    unet = build_unet(cfg.model)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    unet(torch.randn(1, 6, 16, 16), torch.rand(1)).sum().backward()
    opt.step()
    torch.save(compat.to_reference(unet.state_dict()), tmp_path / "I40_E2_gen.pth")
    torch.save({"epoch": 2, "iter": 40, "scheduler": None, "optimizer": opt.state_dict()}, tmp_path / "I40_E2_opt.pth")
    res = train("sr3", overrides=tiny + ["train.max_steps=43", "train.eval_every=0", "train.eval_at_end=false",
                                         "train.best_metric=null"], run_dir=tmp_path / "run", resume=str(tmp_path / "I40_E2"))
    assert res.step == 43
    with pytest.raises(UserError, match="neither a trainhub checkpoint"):
        train("sr3", overrides=tiny, run_dir=tmp_path / "r2", resume=str(tmp_path / "nothing_here"))


def test_shipped_paper_config_matches_the_reference_json():
    plugins = get_plugins()
    ours = resolve_config(plugins.recipe("sr3"), plugins, "sr3_16_128")
    theirs = resolve_config(plugins.recipe("sr3"), plugins, DATA / "sr_sr3_16_128.json")
    assert ours.model.unet == theirs.model.unet
    assert ours.model.unet.noise_encoding == "sqrt_gamma"
    assert resolve_config(plugins.recipe("sr3"), plugins, None).model.unet.noise_encoding == "log_snr"
    assert ours.model.beta_schedule.train == theirs.model.beta_schedule.train
    assert (ours.model.prediction, ours.model.residual, ours.model.sampler) == ("eps", False, "ancestral")
    assert (ours.data.l_resolution, ours.data.r_resolution, ours.train.lr) == (16, 128, 1e-4)
