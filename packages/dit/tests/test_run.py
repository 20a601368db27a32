"""CPU runs through the shared trainer: exact resume, epoch checkpoints, eval grid, sample CLI, official checkpoints."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trainhub import UserError
from trainhub.cli import main
from trainhub.testing import assert_config_schema, assert_same_weights
from trainhub.training.run import train


def test_config_schema_and_shipped_configs() -> None:
    from importlib.resources import files

    configs = files("trainhub_dit") / "configs"
    assert_config_schema("dit", files=[configs / "default.yaml", configs / "dit_xl2_256.yaml"])
    # default.yaml is the embedded run written out: the same config as no file at all
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    recipe = get_plugins().recipe("dit")
    written = resolve_config(recipe, get_plugins(), str(configs / "default.yaml"), []).model_dump()
    assert written == resolve_config(recipe, get_plugins(), None, []).model_dump()
    xl = resolve_config(recipe, get_plugins(), str(configs / "dit_xl2_256.yaml"), [])
    assert (xl.model.name, xl.train.lr, xl.train.warmup_steps, xl.train.ema.decay) == ("DiT-XL/2", 1e-4, 500, 0.9999)


def test_the_latent_space_config_without_a_vae_is_refused_before_training(tmp_path, capsys) -> None:
    """dit_xl2_256 names the VAE required: a folder without data.vae must not train DiT-XL/2 on 256 px pixels."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "imgs" / c / "0.png")
    capsys.readouterr()
    assert main(["run", "dit", "--config", "dit_xl2_256", f"data.root={tmp_path / 'imgs'}", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "trainhub: error: data.space=latent on data.source=imagefolder needs data.vae (a local diffusers AutoencoderKL "
        "directory) to encode the images, or precomputed latents (data.source=latents)")


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
    # 4 classes x 2 samples of 16 px, enlarged 8x to 128 px tiles with 4 px padding; class names on the left
    assert grid.size[1] == 4 * 132 + 4 and grid.size[0] > 2 * 132 + 4 + 20

    # `trainhub sample dit` with the flags, in this process (where the test plugin's micro model exists)
    out = tmp_path / "out"
    argv = ["sample", "dit", "--checkpoint", str(res.run_dir), "--class-labels", "1", "2", "3", "--cfg-scale", "4",
            "--steps", "3", "--seed", "0", "--per-class", "2", "--device", "cpu"]
    assert main(argv + ["--out", str(out)]) == 0
    first = Image.open(out / "samples.png")
    assert first.size[1] == 3 * 132 + 4 and first.size[0] > 2 * 132 + 4 + 20  # one titled row per label
    assert json.loads((out / "samples.json").read_text())["class_labels"] == [1, 2, 3]
    assert main(argv + ["--out", str(tmp_path / "again")]) == 0
    assert Image.open(tmp_path / "again" / "samples.png").tobytes() == first.tobytes()  # --seed makes it repeatable
    capsys.readouterr()
    assert main(["sample", "dit", "--checkpoint", str(res.run_dir), "--class-labels", "7", "--steps", "1"]) == 2
    assert "classes 0..3" in capsys.readouterr().err
    # sampling arguments are checked before any sampling: one line each, exit code 2 (the run has 100 timesteps)
    for flags, message in ((["--steps", "101"], "--steps 101: respaced sampling takes 1..100 steps"),
                           (["--steps", "0"], "--steps 0: respaced sampling takes 1..100 steps"),
                           (["--per-class", "0"], "--per-class 0: must be at least 1"),
                           (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
                           (["--cfg-channels", "-1"], "--cfg-channels -1: must be at least 1")):
        assert main(["sample", "dit", "--checkpoint", str(res.run_dir), "--out", str(tmp_path / "bad"), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err.splitlines()[-1] and "Traceback" not in err, flags
    assert not (tmp_path / "bad" / "samples.png").exists()
    assert main(["dit", "nothing"]) == 2 and "precompute-latents" in capsys.readouterr().err


def test_eval_sampling_settings_are_checked_before_training(tmp_path, micro) -> None:
    """eval.steps beyond the training timesteps (the reference's respacing cannot take them) and eval.classes outside
    0..num_classes-1 (an index error, or the null class drawn silently) are config errors, before any step."""
    from trainhub import ConfigError

    with pytest.raises(ConfigError, match=r"eval.steps=4 exceeds model.diffusion_steps=3: respaced sampling takes 1..3"):
        train("dit", overrides=micro + ["model.diffusion_steps=3"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for classes in ("[0,4]", "[-1]", "[]"):  # 4 classes: label 4 is the null class
        with pytest.raises(ConfigError, match=r"eval.classes=.*: give labels in 0..3 \(model.num_classes=4\)"):
            train("dit", overrides=micro + [f"eval.classes={classes}"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = micro_config(micro + ["model.diffusion_steps=4", "eval.classes=[3,0]"])  # the limits themselves are accepted
    assert (cfg.eval.steps, cfg.eval.classes) == (4, [3, 0])


def official_checkpoint(path, config, num_classes=None, with_ema=True):
    """An official train.py checkpoint ({"model", "ema", "opt", "args"}, torch.save) of the micro DiT after one
    AdamW step, EMA different from the weights everywhere (pos_embed too); ``with_ema=False``: released weights."""
    from trainhub_dit.recipe import build_dit

    if num_classes is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"num_classes": num_classes})})
    torch.manual_seed(1)
    net = build_dit(config)
    sd = {"pos_embed": net.pos_embed, **{k: v for k, v in net.state_dict().items() if k != "pos_embed"}}
    params = [torch.nn.Parameter(v + 0.01 * torch.randn_like(v)) for v in sd.values()]  # official order: pos_embed first
    opt = torch.optim.AdamW(params, lr=1e-4)  # as train.py: every parameter, pos_embed (frozen there) without a grad
    for p in params[1:]:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = {k: p.detach().clone() for k, p in zip(sd, params)}
    ema = {k: v + 0.05 * torch.randn_like(v) for k, v in sd.items()}
    args = argparse.Namespace(model="DiT-Micro/4", image_size=16, num_classes=config.model.num_classes, epochs=1400,
                              global_batch_size=256, global_seed=0, vae="ema", ckpt_every=7)
    official = {"model": sd, "ema": ema, "opt": opt.state_dict(), "args": args}
    torch.save(official if with_ema else sd, path)
    return official


def micro_config(micro):
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    return resolve_config(get_plugins().recipe("dit"), get_plugins(), None, micro)


def test_official_checkpoint_resumes_with_its_ema_bit_exact(tmp_path, micro, capsys) -> None:
    """--resume <official train.py checkpoint> with nothing left to train: the first trainhub checkpoint holds the
    checkpoint's weights and its EMA exactly as saved there, and the resume line names what was restored."""
    official = official_checkpoint(tmp_path / "0000007.pt", micro_config(micro))
    res = train("dit", overrides=micro + ["train.max_steps=7", "train.eval_at_end=false"], run_dir=tmp_path / "run",
                resume=str(tmp_path / "0000007.pt"))
    assert res.status == "completed" and res.step == 7
    for file, expect in (("model.safetensors", official["model"]), ("ema.safetensors", official["ema"])):
        saved = load_file(str(res.last_checkpoint / file))
        assert set(saved) == set(expect)
        for k, v in expect.items():
            assert torch.equal(saved[k], v), (file, k)
    out = capsys.readouterr()
    assert "at step 7 (weights, optimizer, ema, step)" in out.out and "restarted" not in out.out
    assert "train.py keeps its EMA at decay 0.9999" in out.err and "train.ema.decay=0.9" in out.err


@pytest.mark.parametrize("with_ema", [True, False], ids=["train.py checkpoint", "released weights"])
def test_one_step_after_an_official_checkpoint_moves_its_ema(tmp_path, micro, capsys, with_ema) -> None:
    """One step after the resume: EMA = lerp(the checkpoint's EMA, the new weights, 1 - train.ema.decay) for every
    parameter, buffers (pos_embed) follow the weights; released weights (no EMA) start it from the weights."""
    name = "0000007.pt" if with_ema else "DiT-Micro-4-16x16.pt"
    official = official_checkpoint(tmp_path / name, micro_config(micro), with_ema=with_ema)
    start = 7 if with_ema else 0
    res = train("dit", overrides=micro + [f"train.max_steps={start + 1}", "train.eval_at_end=false"],
                run_dir=tmp_path / "run", resume=str(tmp_path / name))
    assert res.status == "completed" and res.step == start + 1
    weights = load_file(str(res.last_checkpoint / "model.safetensors"))
    ema = load_file(str(res.last_checkpoint / "ema.safetensors"))
    before = official["ema"] if with_ema else official["model"]
    assert not torch.equal(weights["final_layer.linear.weight"], official["model"]["final_layer.linear.weight"])  # it trained
    for k, v in before.items():
        expect = weights[k] if k == "pos_embed" else torch.lerp(v, weights[k], 1 - 0.9)
        assert torch.equal(ema[k], expect), k
    out = capsys.readouterr().out
    if with_ema:
        assert "at step 7 (weights, optimizer, ema, step)" in out and "restarted" not in out
    else:
        assert "at step 0 (weights); EMA of model restarted from the loaded weights" in out


def test_official_checkpoint_with_other_classes_keeps_a_fresh_class_table(tmp_path, micro, capsys) -> None:
    """A train.py checkpoint with 10 classes resumed with 4: weights, EMA and Adam moments carry over except the class
    table, which is fresh in the weights and the EMA alike (and trains without its old moments)."""
    official = official_checkpoint(tmp_path / "0000007.pt", micro_config(micro), num_classes=10)
    res = train("dit", overrides=micro + ["train.max_steps=8", "train.eval_at_end=false"], run_dir=tmp_path / "run",
                resume=str(tmp_path / "0000007.pt"))
    assert res.status == "completed" and res.step == 8
    weights = load_file(str(res.last_checkpoint / "model.safetensors"))
    ema = load_file(str(res.last_checkpoint / "ema.safetensors"))
    table = "y_embedder.embedding_table.weight"
    assert ema[table].shape == weights[table].shape == (5, 32)
    for k, v in official["ema"].items():
        if k not in (table, "pos_embed"):
            assert torch.equal(ema[k], torch.lerp(v, weights[k], 1 - 0.9)), k
    err = capsys.readouterr().err
    assert err.count("class count differs") == 2  # one line for the weights, one for the EMA


def test_official_checkpoint_resumed_without_label_dropout_keeps_its_class_rows(tmp_path, micro, capsys) -> None:
    """A train.py checkpoint (4 classes + the null row) resumed with model.class_dropout_prob=0 (4 rows): the weights
    and the EMA keep the 4 trained class rows, the null row is dropped, one line each says so."""
    official = official_checkpoint(tmp_path / "0000007.pt", micro_config(micro))
    table = "y_embedder.embedding_table.weight"
    assert official["model"][table].shape == (5, 32)
    res = train("dit", overrides=micro + ["model.class_dropout_prob=0", "train.max_steps=7", "train.eval_at_end=false"],
                run_dir=tmp_path / "run", resume=str(tmp_path / "0000007.pt"))
    assert res.status == "completed" and res.step == 7
    for file, expect in (("model.safetensors", official["model"]), ("ema.safetensors", official["ema"])):
        assert torch.equal(load_file(str(res.last_checkpoint / file))[table], expect[table][:4]), file
    out = capsys.readouterr()
    assert "at step 7 (weights, optimizer, ema, step)" in out.out
    assert out.err.count("the 4 class rows loaded, the null class row dropped") == 2 and "class count differs" not in out.err


def test_import_official_released_weights(tmp_path, micro) -> None:
    """Released weights (a plain state dict) -> a run directory that `trainhub sample dit` reads."""
    from trainhub.cli import _load_for_inference
    from trainhub_dit.model import DiT_models

    net = DiT_models["DiT-Ti/8"](input_size=8, in_channels=4, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "DiT-Ti-8-64x64.pt")
    from trainhub.plugins import get_plugins

    get_plugins().recipe("dit").command(["import-official", "--checkpoint", str(tmp_path / "DiT-Ti-8-64x64.pt"), "--out", str(tmp_path / "imp"),
                                 "--model", "DiT-Ti/8", "--image-size", "64", "--num-classes", "10"])
    _, config, models, _ = _load_for_inference("sample", "dit", str(tmp_path / "imp"), True, [])
    assert config.model.input_size == 8 and config.data.space == "latent"
    assert all(torch.equal(a, b) for a, b in zip(models["model"].state_dict().values(), net.state_dict().values()))


def test_import_official_training_checkpoint_keeps_its_ema(tmp_path, micro) -> None:
    """A train.py checkpoint -> a run directory: architecture, size and classes from its args, the step from its name,
    `trainhub sample dit` samples its EMA (the raw weights with --no-ema)."""
    from trainhub.cli import _load_for_inference
    from trainhub.plugins import get_plugins
    from trainhub_dit.model import DiT_models

    torch.manual_seed(0)
    sd = DiT_models["DiT-Ti/8"](input_size=8, in_channels=4, num_classes=10).state_dict()
    ema = {k: v + 0.05 * torch.randn_like(v) for k, v in sd.items()}
    args = argparse.Namespace(model="DiT-Ti/8", image_size=64, num_classes=10, global_batch_size=256)
    torch.save({"model": sd, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, tmp_path / "0000300.pt")
    get_plugins().recipe("dit").command(["import-official", "--checkpoint", str(tmp_path / "0000300.pt"),
                                         "--out", str(tmp_path / "imp")])
    state = json.loads((tmp_path / "imp" / "checkpoints" / "checkpoint-300" / "training_state.json").read_text())
    assert state["step"] == 300
    for use_ema, expect in ((True, ema), (False, sd)):
        _, config, models, _ = _load_for_inference("sample", "dit", str(tmp_path / "imp"), use_ema, [])
        assert (config.model.name, config.model.input_size, config.model.num_classes) == ("DiT-Ti/8", 8, 10)
        got = models["model"].state_dict()
        assert all(torch.equal(got[k], v) for k, v in expect.items())
    # a second import into the same run directory is refused before anything is written
    before = {p: p.read_bytes() for p in (tmp_path / "imp").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"^--out .*imp already holds a run; choose a new directory$"):
        get_plugins().recipe("dit").command(["import-official", "--checkpoint", str(tmp_path / "0000300.pt"),
                                             "--out", str(tmp_path / "imp"), "--model", "DiT-S/8"])
    assert {p: p.read_bytes() for p in (tmp_path / "imp").rglob("*") if p.is_file()} == before
