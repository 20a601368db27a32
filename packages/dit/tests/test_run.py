"""CPU runs through the shared trainer: exact resume, epoch checkpoints, eval grid, sample CLI, official checkpoints."""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image

from trainhub.cli import main
from trainhub.run import train
from trainhub.testing import assert_config_schema, assert_same_weights


def test_config_schema_and_shipped_configs() -> None:
    from importlib.resources import files

    configs = files("trainhub_dit") / "configs"
    assert_config_schema("dit", files=[configs / "default.yaml", configs / "dit_xl2_256.yaml"])
    # default.yaml is the embedded run written out: the same config as no file at all
    from trainhub.plugins import get_plugins
    from trainhub.run import resolve_config

    recipe = get_plugins().recipe("dit")
    written = resolve_config(recipe, get_plugins(), str(configs / "default.yaml"), []).model_dump()
    assert written == resolve_config(recipe, get_plugins(), None, []).model_dump()
    xl = resolve_config(recipe, get_plugins(), str(configs / "dit_xl2_256.yaml"), [])
    assert (xl.model.name, xl.train.lr, xl.train.warmup_steps, xl.train.ema.decay) == ("DiT-XL/2", 1e-4, 500, 0.9999)


def test_run_resumes_exactly_and_samples(tmp_path, micro, interrupt_and_resume, capsys) -> None:
    # 64 images / (4 x 2) = 8 steps per epoch: 10 steps cross an epoch end, and the cut is mid-epoch
    ov = micro + ["train.max_steps=10", "train.checkpoint_every_epoch=true", "train.eval_every=10"]
    full = train("dit", overrides=ov, run_dir=tmp_path / "full")
    assert "FID skipped: set eval.fid_inception_weights" in capsys.readouterr().err
    res = interrupt_and_resume("dit", ov, tmp_path / "cut", at=5)  # a real SIGTERM after step 5: the trainer saves and stops
    assert res.step == 10
    assert_same_weights(full.last_checkpoint, res.last_checkpoint, ("model.safetensors", "ema.safetensors"))
    assert (res.run_dir / "checkpoints" / "checkpoint-epoch-1").is_dir()
    evals = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert {"val_loss", "val_mse", "val_vb"} <= set(evals[-1]) and "fid" not in evals[-1]
    trains = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert {"loss", "mse", "vb"} <= set(trains[-1])
    grid = Image.open(res.run_dir / "samples" / "step_0000010" / "samples.png")
    assert grid.size == (2 * 16 + 3 * 2, 4 * 16 + 5 * 2)  # 4 classes x 2 samples of 16 px, 2 px padding

    # `trainhub sample dit` with the flags, in this process (where the test plugin's micro model exists)
    out = tmp_path / "out"
    argv = ["sample", "dit", "--checkpoint", str(res.run_dir), "--class-labels", "1", "2", "3", "--cfg-scale", "4",
            "--steps", "3", "--seed", "0", "--per-class", "2", "--device", "cpu"]
    assert main(argv + ["--out", str(out)]) == 0
    first = Image.open(out / "samples.png")
    assert first.size == (2 * 16 + 3 * 2, 3 * 16 + 4 * 2)  # one row per label
    assert json.loads((out / "samples.json").read_text())["class_labels"] == [1, 2, 3]
    assert main(argv + ["--out", str(tmp_path / "again")]) == 0
    assert Image.open(tmp_path / "again" / "samples.png").tobytes() == first.tobytes()  # --seed makes it repeatable
    capsys.readouterr()
    assert main(["sample", "dit", "--checkpoint", str(res.run_dir), "--class-labels", "7", "--steps", "1"]) == 2
    assert "classes 0..3" in capsys.readouterr().err
    assert main(["dit", "nothing"]) == 2 and "precompute-latents" in capsys.readouterr().err


def test_official_training_checkpoint_continues(tmp_path, micro) -> None:
    """--resume <official train.py checkpoint>: weights, Adam moments and the step carry over."""
    from trainhub.plugins import get_plugins
    from trainhub.run import resolve_config
    from trainhub_dit.recipe import build_dit

    recipe = get_plugins().recipe("dit")
    config = resolve_config(recipe, get_plugins(), None, micro)
    torch.manual_seed(1)
    net = build_dit(config)
    for p in net.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    sd = {"pos_embed": net.pos_embed, **{k: v for k, v in net.state_dict().items() if k != "pos_embed"}}
    params = [torch.nn.Parameter(v.clone()) for v in sd.values()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for p in params[1:]:
        p.grad = torch.ones_like(p)
    opt.step()
    official = tmp_path / "0000007.pt"
    torch.save({"model": sd, "ema": sd, "opt": opt.state_dict(), "args": argparse.Namespace(model="DiT-Micro/4")}, official)
    res = train("dit", overrides=micro + ["train.max_steps=9", "train.eval_at_end=false"], run_dir=tmp_path / "run",
                resume=str(official))
    assert res.status == "completed" and res.step == 9
    state = json.loads((res.last_checkpoint / "training_state.json").read_text())
    assert state["step"] == 9


def test_import_official_released_weights(tmp_path, micro) -> None:
    """Released weights (a plain state dict) -> a run directory that `trainhub sample dit` reads."""
    from trainhub.cli import _load_for_inference
    from trainhub_dit.model import DiT_models

    net = DiT_models["DiT-Ti/8"](input_size=8, in_channels=4, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "DiT-Ti-8-64x64.pt")
    from trainhub.plugins import get_plugins

    get_plugins().recipe("dit").command(["import-official", "--checkpoint", str(tmp_path / "DiT-Ti-8-64x64.pt"), "--out", str(tmp_path / "imp"),
                                 "--model", "DiT-Ti/8", "--image-size", "64", "--num-classes", "10"])
    _, config, models, _ = _load_for_inference("dit", str(tmp_path / "imp"), True, [])
    assert config.model.input_size == 8 and config.data.space == "latent"
    assert all(torch.equal(a, b) for a, b in zip(models["model"].state_dict().values(), net.state_dict().values()))
