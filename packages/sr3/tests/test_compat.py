"""The reference's JSON config layout and checkpoint prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainhub import UserError
from trainhub.config import strip_json_comments
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config

DATA = Path(__file__).parent / "data"
REFERENCE_OBJECTIVE = ["model.unet.noise_encoding=sqrt_gamma", "model.prediction=eps", "model.residual=false"]


def _resolve(path, overrides=None):
    plugins = get_plugins()
    return resolve_config(plugins.recipe("sr3"), plugins, path, overrides)


def test_reference_json_maps_onto_our_schema():
    cfg = _resolve(DATA / "sr_sr3_16_128.json")
    u = cfg.model.unet
    assert (u.inner_channel, u.channel_multiplier, u.attn_res, u.res_blocks, u.dropout, u.image_size) == \
        (64, [1, 2, 4, 8, 8], [16], 2, 0.2, 128)
    assert u.norm_groups == 32  # the file has none: the reference's define_G sets 32
    assert u.noise_encoding == "sqrt_gamma"  # their weights embed sqrt(gamma) itself; the embedded default uses log_snr
    assert cfg.model.beta_schedule.train.n_timestep == 2000 and cfg.model.beta_schedule.val.linear_end == 1e-2
    assert (cfg.model.prediction, cfg.model.residual, cfg.model.sampler, cfg.model.loss) == ("eps", False, "ancestral", "l1")
    assert (cfg.model.network, cfg.model.conditional) == ("sr3", True)
    assert (cfg.data.source, cfg.data.root, cfg.data.l_resolution, cfg.data.r_resolution) == ("lmdb", "dataset/ffhq_16_128", 16, 128)
    assert (cfg.data.val_source, cfg.data.val_root, cfg.data.val_len, cfg.data.train_len) == ("lmdb", "dataset/celebahq_16_128", 50, -1)
    t = cfg.train
    assert (t.max_steps, t.eval_every, t.checkpoint_every, t.log_every, t.lr, t.batch_size) == (1_000_000, 10_000, 10_000, 200, 1e-4, 4)
    # the reference's torch.optim.Adam(params, lr): no weight decay, no clipping, constant lr; it keeps no EMA
    assert (t.optimizer, t.weight_decay, t.betas, t.eps, t.max_grad_norm, t.schedule, t.warmup_steps) == \
        ("adam", 0.0, (0.9, 0.999), 1e-8, None, "constant", 0)
    assert t.ema.enabled is False
    assert (cfg.loader.num_workers, cfg.loader.shuffle) == (8, True)
    assert cfg.run_name == "sr_ffhq" and cfg.loggers.wandb.project == "sr_ffhq" and cfg.loggers.wandb.enabled is False
    assert cfg.model.reference_config == str(DATA / "sr_sr3_16_128.json")


def test_trainhub_defaults_differ_where_the_json_must_decide():
    """The mapped values above are the reference's, not trainhub's defaults that happen to agree."""
    ours = _resolve(None)
    assert (ours.model.unet.norm_groups, ours.train.optimizer, ours.train.weight_decay, ours.train.max_grad_norm) == (8, "adamw", 0.01, 1.0)
    assert ours.train.ema.enabled and ours.model.unet.noise_encoding == "log_snr" and ours.model.reference_config is None


def test_keys_without_effect_are_named_in_one_line(tmp_path, capsys):
    _resolve(DATA / "sr_sr3_16_128.json")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainhub-sr3: sr_sr3_16_128.json: not used here: ")
    assert "path.{log,tb_logger,results,checkpoint}" in lines[0] and "train.ema_scheduler (the reference does not read it" in lines[0]
    # keys the reference never reads are accepted, as it accepts them, and named in the same one line
    text = (DATA / "sr_sr3_16_128.json").read_text()
    extra = tmp_path / "extra.json"
    extra.write_text(text.replace('"res_blocks": 2,', '"res_blocks": 2, "use_magic": true,').replace('"n_iter": 1000000,', '"n_iter": 1000000, "warp": 9,'))
    cfg = _resolve(extra)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.unet.use_magic (not read by the reference)" in lines[0] and "train.warp" in lines[0]
    assert cfg.model.unet.res_blocks == 2


def test_keys_the_reference_needs_and_values_it_refuses_are_one_error(tmp_path):
    raw = json.loads(strip_json_comments((DATA / "sr_sr3_16_128.json").read_text()))
    del raw["model"]["unet"]["inner_channel"]
    raw["datasets"]["train"]["datatype"] = "h5"
    raw["train"]["val_freq"] = 2.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"bad.json: missing model.unet.inner_channel \(the reference's code needs them\); "
                                         r"datasets.train.datatype=h5 \(the reference reads img or lmdb\); train.val_freq=2.5 must be a whole number"):
        _resolve(bad)


def test_explicit_norm_groups_and_null_are_read_as_the_reference_reads_them(tmp_path):
    text = (DATA / "sr_sr3_16_128.json").read_text()
    for value, expected in (("null", 32), ("8", 8)):
        f = tmp_path / f"g{value}.json"
        f.write_text(text.replace('"in_channel": 6,', f'"in_channel": 6, "norm_groups": {value},'))
        assert _resolve(f).model.unet.norm_groups == expected


def test_param_logging_section_maps_to_the_parameter_monitor(tmp_path):
    text = (DATA / "sr_sr3_16_128.json").read_text().rstrip().removesuffix("}")
    f = tmp_path / "pl.json"
    f.write_text(text + ',"param_logging": {"enabled": true, "save_param_freq": 1e3, "layers_to_monitor": ["downs.1"]}}')
    po = _resolve(f).loggers.param_outputs
    assert (po.enabled, po.save_param_freq, po.layers_to_monitor) == (True, 1000, ["downs.1"])


def test_foreign_resume_from_reference_prefix(tmp_path, tiny, capsys):
    from trainhub.training.run import train
    from trainhub_sr3 import compat
    from trainhub_sr3.recipe import build_unet

    ov = tiny + REFERENCE_OBJECTIVE + ["model.unet.norm_groups=4", "train.optimizer=adam", "train.weight_decay=0"]
    cfg = _resolve(None, ov)
    unet = build_unet(cfg.model)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    unet(torch.randn(1, 6, 16, 16), torch.rand(1)).sum().backward()
    opt.step()
    torch.save(compat.to_reference(unet.state_dict()), tmp_path / "I40_E2_gen.pth")
    torch.save({"epoch": 2, "iter": 40, "scheduler": None, "optimizer": opt.state_dict()}, tmp_path / "I40_E2_opt.pth")
    run = ov + ["train.max_steps=43", "train.eval_every=0", "train.eval_at_end=false", "train.best_metric=null"]
    with pytest.raises(UserError, match=r"I40_E2_gen.pth: reference SR3 weights need model.unet.norm_groups=32; this config has 4 "
                                         r"\(GroupNorm shapes do not show norm_groups"):
        train("sr3", overrides=run, run_dir=tmp_path / "run0", resume=str(tmp_path / "I40_E2"))
    # a config read from a reference JSON names its norm_groups: that one is taken
    res = train("sr3", overrides=run + ["model.reference_config=their.json"], run_dir=tmp_path / "run",
                resume=str(tmp_path / "I40_E2"))
    assert res.step == 43
    assert "continuing from" in capsys.readouterr().out
    with pytest.raises(UserError, match="neither a trainhub checkpoint"):
        train("sr3", overrides=tiny, run_dir=tmp_path / "r2", resume=str(tmp_path / "nothing_here"))


def test_shipped_paper_config_matches_the_reference_json():
    ours = _resolve("sr3_16_128")
    theirs = _resolve(DATA / "sr_sr3_16_128.json")
    assert ours.model.unet == theirs.model.unet
    assert ours.model.unet.noise_encoding == "sqrt_gamma"
    assert _resolve(None).model.unet.noise_encoding == "log_snr"
    assert ours.model.beta_schedule.train == theirs.model.beta_schedule.train
    assert (ours.model.prediction, ours.model.residual, ours.model.sampler) == ("eps", False, "ancestral")
    assert (ours.data.l_resolution, ours.data.r_resolution, ours.train.lr) == (16, 128, 1e-4)
