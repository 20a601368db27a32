"""Reference SR3 weights (`*_gen.pth`): the settings their shapes cannot show are checked or applied, and
`trainhub sr3 import-reference` makes a run directory that `trainhub sample` and `trainhub eval` use.

The fake checkpoints are written here in the reference's layout: `denoise_fn.*` UNet weights plus the twelve
schedule buffers, saved with torch.save, read back with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from trainhub import UserError
from trainhub.config import strip_json_comments
from trainhub.plugins import get_plugins
from trainhub.training.run import train
from trainhub_sr3 import compat
from trainhub_sr3.diffusion import Schedule, make_betas
from trainhub_sr3.model import SR3UNet

DATA = Path(__file__).parent / "data"
ARCH = dict(in_channel=6, out_channel=3, inner_channel=32, channel_multiplier=[1, 2], attn_res=[8], res_blocks=1, image_size=16)


def _reference_ckpt(folder: Path, network="sr3", norm_groups=32, in_channel=6, name="I1200_E3", n=20) -> tuple[Path, SR3UNet]:
    """A reference-layout checkpoint of a small UNet with the reference's function settings, and that UNet."""
    torch.manual_seed(0)
    net = SR3UNet(**{**ARCH, "in_channel": in_channel}, norm_groups=norm_groups, noise_encoding="sqrt_gamma", network=network).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # GroupNorm affine away from 1/0 too
    folder.mkdir(parents=True, exist_ok=True)
    state = compat.to_reference(net.state_dict(), Schedule(make_betas("linear", n, 1e-6, 1e-2)), network)
    torch.save({"module." + k: v for k, v in state.items()}, folder / f"{name}_gen.pth")
    return folder / name, net


def _small_json(tmp_path: Path, norm_groups=None, val_steps=5) -> Path:
    """The published sr_sr3_16_128.json with a UNet and schedules small enough for a test (a copy in tmp_path)."""
    raw = json.loads(strip_json_comments((DATA / "sr_sr3_16_128.json").read_text()))
    unet = raw["model"]["unet"]
    unet.update(inner_channel=32, channel_multiplier=[1, 2], attn_res=[8], res_blocks=1)
    if norm_groups is not None:
        unet["norm_groups"] = norm_groups
    raw["model"]["diffusion"]["image_size"] = 16
    for phase, n in (("train", 20), ("val", val_steps)):
        raw["model"]["beta_schedule"][phase]["n_timestep"] = n
    for d in raw["datasets"].values():
        d.update(l_resolution=4, r_resolution=16)
    f = tmp_path / "small.json"
    f.write_text(json.dumps(raw))
    return f


def _cli(capsys, *args):
    """The trainhub command line, in this process (a subprocess costs seconds of start-up): (exit code, stdout, stderr)."""
    from trainhub.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_resume_refuses_settings_the_weights_were_not_trained_with(tmp_path, tiny):
    prefix, _ = _reference_ckpt(tmp_path)
    run = tiny + ["model.unet.inner_channel=32", "model.unet.channel_multiplier=[1,2]", "model.unet.norm_groups=8",
                  "train.max_steps=2", "train.eval_at_end=false", "train.best_metric=null"]
    with pytest.raises(UserError) as e:
        train("sr3", overrides=run, run_dir=tmp_path / "r", resume=str(prefix))
    assert str(e.value).startswith(
        f"{prefix}_gen.pth: reference SR3 weights need model.unet.noise_encoding=sqrt_gamma model.prediction=eps "
        "model.residual=false model.unet.norm_groups=32; this config has log_snr, x0, true, 8 (GroupNorm shapes do not show "
        "norm_groups: the reference uses 32 unless its JSON says otherwise, so give that JSON as --config); add them as "
        "key=value overrides, or run with the reference JSON as --config")
    ddpm, _ = _reference_ckpt(tmp_path / "ddpm", network="ddpm")
    fixed = run + ["model.unet.noise_encoding=sqrt_gamma", "model.prediction=eps", "model.residual=false", "model.unet.norm_groups=32"]
    with pytest.raises(UserError, match=r"need model.network=ddpm; this config has sr3"):
        train("sr3", overrides=fixed, run_dir=tmp_path / "r2", resume=str(ddpm))
    assert train("sr3", overrides=fixed, run_dir=tmp_path / "r3", resume=f"{prefix}_gen.pth").step == 1200  # at its iteration


def test_resume_with_the_reference_json_takes_its_norm_groups(tmp_path, prepared):
    prefix, net = _reference_ckpt(tmp_path, norm_groups=8)
    small = _small_json(tmp_path, norm_groups=8)
    ov = [f"data.root={prepared('lmdb', 4, 16)}", f"data.val_root={prepared('lmdb', 4, 16)}", "train.batch_size=1",
          "loader.num_workers=0", "train.max_steps=1201", "train.eval_at_end=false", "train.checkpoint_every=0"]
    res = train("sr3", config_file=small, overrides=ov, run_dir=tmp_path / "run", resume=str(prefix))
    assert res.step == 1201
    from trainhub.resolve import resolve_config

    m = resolve_config(get_plugins().recipe("sr3"), get_plugins(), res.run_dir / "config.yaml").model
    assert (m.unet.norm_groups, m.reference_config) == (8, str(small))
    w = compat.read_gen(f"{prefix}_gen.pth")
    compat.check_reference(w, m)  # its JSON said 8
    with pytest.raises(UserError, match=r"need model.unet.norm_groups=32; this config has 8"):
        compat.check_reference(w, m.model_copy(update={"reference_config": None}))  # no JSON: the reference default


def test_import_reference_with_its_json(tmp_path, prepared, capsys):
    prefix, net = _reference_ckpt(tmp_path / "exp", norm_groups=8)
    small = _small_json(tmp_path, norm_groups=8)
    out = tmp_path / "imported"
    rc, stdout, err = _cli(capsys, "sr3", "import-reference", "--checkpoint", prefix, "--config", small, "--out", out)
    assert rc == 0, err
    assert f"into {out}; sample with: trainhub sample sr3 --checkpoint {out} --input LR.png" in stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    m = cfg["model"]
    assert (m["unet"]["norm_groups"], m["unet"]["noise_encoding"], m["prediction"], m["residual"], m["sampler"]) == \
        (8, "sqrt_gamma", "eps", False, "ancestral")
    assert m["beta_schedule"]["val"]["n_timestep"] == 5
    ck = out / "checkpoints" / "checkpoint-1200"
    assert json.loads((ck / "training_state.json").read_text())["step"] == 1200
    saved = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items()) and set(saved) == set(net.state_dict())

    lr = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)).save(lr)
    rc, _, err = _cli(capsys, "sample", "sr3", "--checkpoint", out, "--input", lr, "--out", tmp_path / "sr")
    assert rc == 0, err
    assert "sampling 5 steps (the val schedule)" in err and Image.open(tmp_path / "sr" / "lr_sr.png").size == (20, 16)
    rc, stdout, err = _cli(capsys, "eval", "sr3", "--checkpoint", out, f"data.val_root={prepared('lmdb', 4, 16)}",
                           "loader.num_workers=0")
    assert rc == 0, err
    assert {"psnr", "ssim", "psnr_bicubic"} <= set(json.loads(stdout[stdout.index("{"):]))


def test_import_reference_without_a_json_reads_the_weights_and_applies_the_reference_settings(tmp_path, capsys):
    from trainhub.resolve import resolve_config
    from trainhub_sr3.model import NoiseLevelEncoding
    from trainhub_sr3.recipe import build_unet

    recipe = get_plugins().recipe("sr3")
    prefix, net = _reference_ckpt(tmp_path / "exp")
    out = tmp_path / "imported"
    recipe.command(["import-reference", "--checkpoint", f"{prefix}_gen.pth", "--out", str(out), "--sizes", "4,16"])
    err = capsys.readouterr().err
    assert ("trainhub-sr3: reference settings applied: network sr3, super-resolution 4->16 (--sizes), noise_encoding "
            "sqrt_gamma, prediction eps, residual false, sampler ancestral, norm_groups 32 (the reference's default") in err
    assert "schedule linear 20 steps 1e-06..0.01 from the file's betas (train and val)" in err
    cfg = resolve_config(recipe, get_plugins(), out / "config.yaml")
    u = cfg.model.unet
    assert (u.inner_channel, u.channel_multiplier, u.res_blocks, u.attn_res, u.image_size, u.norm_groups) == (32, [1, 2], 1, [8], 16, 32)
    val = cfg.model.beta_schedule.val
    assert (val.schedule, val.n_timestep, val.linear_start, val.linear_end) == ("linear", 20, 1e-6, 1e-2)
    loaded = build_unet(cfg.model).eval()
    loaded.load_state_dict(load_file(str(out / "checkpoints" / "checkpoint-1200" / "model.safetensors")))
    assert {m.num_groups for m in loaded.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    assert {m.kind for m in loaded.modules() if isinstance(m, NoiseLevelEncoding)} == {"sqrt_gamma"}
    x, level = torch.randn(2, 6, 16, 16), torch.tensor([0.3, 0.9])
    torch.testing.assert_close(loaded(x, level), net(x, level), rtol=0, atol=0)
    with pytest.raises(UserError, match=r"already holds a run; choose a new directory"):
        recipe.command(["import-reference", "--checkpoint", str(prefix), "--out", str(out)])


def test_eval_of_a_run_imported_without_a_json_scores_data_val_root(tmp_path, photos, capsys):
    """import-reference without --config trains on the embedded photos: eval scores data.val_root where it is given,
    and refuses data.root, which that source does not read."""
    from trainhub_sr3.data import HRFolder
    from trainhub_sr3.metrics import psnr

    prefix, _ = _reference_ckpt(tmp_path / "exp")
    out = tmp_path / "imported"
    get_plugins().recipe("sr3").command(["import-reference", "--checkpoint", str(prefix), "--out", str(out), "--sizes", "4,16"])
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["source"] == "embedded"
    val = photos(tmp_path / "val", n=2, size=(20, 18))
    rc, stdout, err = _cli(capsys, "eval", "sr3", "--checkpoint", out, f"data.val_root={val}", "loader.num_workers=0",
                           "model.beta_schedule.val.n_timestep=3")
    assert rc == 0, err
    items = [HRFolder(val, 4, 16, train=False)[i] for i in range(2)]
    bicubic = float(torch.stack([psnr(x["sr"][None], x["hr"][None])[0] for x in items]).mean())
    assert json.loads(stdout[stdout.index("{"):])["psnr_bicubic"] == pytest.approx(bicubic, abs=1e-4)
    rc, _, err = _cli(capsys, "eval", "sr3", "--checkpoint", out, f"data.root={val}")
    assert rc == 2 and err.strip().splitlines()[-1].startswith(
        f"trainhub: error: data.root={val} is read only with data.source=paired|lmdb|folder, got data.source=embedded")


def test_import_reference_of_unconditional_ddpm_weights_then_sample(tmp_path, capsys):
    prefix, _ = _reference_ckpt(tmp_path / "exp", network="ddpm", in_channel=3, name="I30_E1", n=6)
    out = tmp_path / "gen"
    get_plugins().recipe("sr3").command(["import-reference", "--checkpoint", str(prefix), "--out", str(out), "--sizes", "4,16"])
    assert "network ddpm, unconditional 16px" in capsys.readouterr().err
    rc, _, err = _cli(capsys, "sample", "sr3", "--checkpoint", out, "--num", "2", "--out", tmp_path / "s")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sample_000.png", "sample_001.png"]


def test_import_reference_refuses_a_config_the_weights_do_not_fit(tmp_path):
    prefix, _ = _reference_ckpt(tmp_path / "exp")
    small = _small_json(tmp_path)
    raw = json.loads(small.read_text())
    raw["model"]["unet"]["channel_multiplier"] = [1, 4]
    small.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"does not match model.unet: the weights are a UNet with in_channel 6, out_channel 3, "
                                         r"inner_channel 32, channel_multiplier \[1, 2\], res_blocks 1, attention at levels \[1\]"):
        get_plugins().recipe("sr3").command(["import-reference", "--checkpoint", str(prefix), "--config", str(small),
                                             "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_import_notes_weights_saved_under_another_train_schedule(tmp_path, capsys):
    prefix, _ = _reference_ckpt(tmp_path / "exp", n=30)  # the JSON trains 20 steps
    get_plugins().recipe("sr3").command(["import-reference", "--checkpoint", str(prefix), "--config", str(_small_json(tmp_path)),
                                         "--out", str(tmp_path / "o")])
    assert ("note: I1200_E3_gen.pth was saved while training with a linear 30 steps 1e-06..0.01 schedule; this config trains "
            "with linear 20 steps 1e-06..0.01 (is it the JSON these weights were trained with?)") in capsys.readouterr().err
