"""Every config/*.json of the reference SR3 repository, as published (tests/data, see UPSTREAM.md), works here.

Each file is read unchanged. The dry runs point its dataroots at tiny datasets prepared here (in its datatype:
LMDB or folders) and use batch 1, no loader workers and no FLOP count; they narrow the UNet to inner_channel =
norm_groups (the narrowest width its groups allow), because the published widths cost 9-112 s and up to 5.6 GB
per file on one CPU thread. The published widths are built on the meta device instead, and their mapping is
checked key by key against the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from trainhub.config import strip_json_comments
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config
from trainhub.training.run import train

DATA = Path(__file__).parent / "data"
FILES = ["sr_sr3_16_128.json", "sr_sr3_64_512.json", "sr_ddpm_16_128.json", "sample_sr3_128.json", "sample_ddpm_128.json"]


def _raw(name: str) -> dict:
    return json.loads(strip_json_comments((DATA / name).read_text()))


def _resolve(name: str, overrides=None):
    plugins = get_plugins()
    return resolve_config(plugins.recipe("sr3"), plugins, DATA / name, overrides)


def test_shipped_files_are_the_published_bytes():
    table = dict(re.findall(r"\| (\S+\.json) \| ([0-9a-f]{64}) \|", (DATA / "UPSTREAM.md").read_text()))
    assert sorted(table) == sorted(FILES) == sorted(p.name for p in DATA.glob("*.json"))
    for name, digest in table.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", FILES)
def test_every_key_is_read_as_the_reference_reads_it(name):
    raw, cfg = _raw(name), _resolve(name)
    tr, va, mo, tn = raw["datasets"]["train"], raw["datasets"]["val"], raw["model"], raw["train"]
    u, m, d, t = cfg.model.unet, cfg.model, cfg.data, cfg.train
    for k in ("in_channel", "out_channel", "inner_channel", "channel_multiplier", "attn_res", "res_blocks", "dropout"):
        assert getattr(u, k) == mo["unet"][k], k
    assert u.norm_groups == mo["unet"].get("norm_groups", 32)
    assert u.image_size == mo["diffusion"]["image_size"]
    assert (m.network, m.conditional) == (mo["which_model_G"], mo["diffusion"]["conditional"])
    for phase in ("train", "val"):
        ours, theirs = getattr(m.beta_schedule, phase), mo["beta_schedule"][phase]
        assert (ours.schedule, ours.n_timestep, ours.linear_start, ours.linear_end) == \
            (theirs["schedule"], theirs["n_timestep"], theirs["linear_start"], theirs["linear_end"])
    assert (u.noise_encoding, m.prediction, m.residual, m.sampler, m.loss) == ("sqrt_gamma", "eps", False, "ancestral", "l1")
    kind = {"img": "paired", "lmdb": "lmdb"}
    assert (d.source, d.root, d.train_len) == (kind[tr["datatype"]], tr["dataroot"], tr["data_len"])
    assert (d.val_source, d.val_root, d.val_len) == (kind[va["datatype"]], va["dataroot"], va["data_len"])
    assert (d.l_resolution, d.r_resolution) == (tr["l_resolution"], tr["r_resolution"])
    assert (t.batch_size, cfg.loader.num_workers, cfg.loader.shuffle) == (tr["batch_size"], tr["num_workers"], tr["use_shuffle"])
    assert (t.max_steps, t.eval_every, t.checkpoint_every, t.log_every) == \
        tuple(int(tn[k]) for k in ("n_iter", "val_freq", "save_checkpoint_freq", "print_freq"))
    assert (t.lr, t.optimizer, t.weight_decay, t.max_grad_norm, t.ema.enabled) == (tn["optimizer"]["lr"], "adam", 0.0, None, False)
    assert t.best_metric == ("psnr" if mo["diffusion"]["conditional"] else None)


@pytest.mark.parametrize("name", FILES)
def test_published_width_builds(name):
    """The file's own UNet (on the meta device: shapes only), with attention where attn_res and image_size put it."""
    from trainhub_sr3.model import SelfAttention
    from trainhub_sr3.recipe import build_unet, check_model_config

    m = _resolve(name).model
    check_model_config(m)
    with torch.device("meta"):
        net = build_unet(m)
    u = m.unet
    levels = [lv for lv in range(len(u.channel_multiplier)) if u.image_size >> lv in u.attn_res]
    assert sum(isinstance(x, SelfAttention) for x in net.modules()) == len(levels) * (2 * u.res_blocks + 1) + 1  # + the middle one
    assert net.downs[0].weight.shape == (u.inner_channel, u.in_channel, 3, 3)
    assert (len(net.noise_level_mlp) == 5) == (m.network == "ddpm")  # ddpm: the extra Swish before every block's projection


@pytest.mark.parametrize("name", FILES)
def test_dry_run(name, prepared, capsys):
    raw = _raw(name)
    tr, va = raw["datasets"]["train"], raw["datasets"]["val"]
    sizes = (tr["l_resolution"], tr["r_resolution"])
    groups = raw["model"]["unet"].get("norm_groups") or 32
    overrides = [f"data.root={prepared(tr['datatype'], *sizes)}", f"data.val_root={prepared(va['datatype'], *sizes)}",
                 "train.batch_size=1", "loader.num_workers=0", "train.measure_flops=false", "loggers.console.progress_bar=false",
                 f"model.unet.inner_channel={groups}"]
    res = train("sr3", config_file=DATA / name, overrides=overrides, dry_run=True)
    assert (res.status, res.step) == ("completed", 1)
    assert f"trainhub-sr3: {name}: not used here: " in capsys.readouterr().err
