"""CPU runs: train, evaluate, stop, resume exactly; stage timings, cache hit rate and memory lines in the
logs; restore a sequence from the command line (and odd sequence folders); the RAM cache with the default
loader workers; distillation from a frozen teacher; progressive crops."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trainhub import UserError
from trainhub.cli import main
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config
from trainhub.testing import assert_same_weights
from trainhub.training.checkpoint import load_models
from trainhub.training.run import train
from trainhub_vrt_spike.recipe import VRTSpikeRecipe, build_model, init_student


def test_run_stop_resume_exactly_then_sample(tmp_path, tiny, embedded_dir, interrupt_and_resume, capfd):
    ov = tiny + ["train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3", "model.profile=true",
                 "train.memory_log_every=2"]
    full = train("vrt_spike", overrides=ov, run_dir=tmp_path / "full")
    res = interrupt_and_resume("vrt_spike", ov, tmp_path / "cut", at=2)
    assert res.status == "completed" and res.step == 6
    assert_same_weights(full.last_checkpoint, res.last_checkpoint, ("model.safetensors", "ema.safetensors"))

    records = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    assert {"time/stage1_ms", "time/stage8_ms", "time/fuse1_ms", "time/fuse4_ms", "time/forward_ms", "time/align_ms"} <= set(trains[-1])
    assert trains[-1]["cache_hit_rate"] > 0  # 2 sequences x 3 frames: the second epoch is served from RAM
    evals = [r for r in records if r["kind"] == "eval"]
    assert {"psnr", "ssim", "psnr_blur", "ssim_blur", "psnr_gain"} <= set(evals[-1])
    strip = full.run_dir / "samples" / "step_0000006" / "blur_restored_sharp_spike.png"
    assert Image.open(strip).size[1] > 4 * 32  # four rows of 32-pixel frames

    err = capfd.readouterr().err
    lines = re.findall(r"^\[Step (\d+)\] Memory - Process: [\d.]+MB \([\d.]+%\), System: [\d.]+/[\d.]+GB \([\d.]+%\)$", err, re.M)
    assert {"0", "2", "4", "6"} <= set(lines)
    assert "[vrt_spike] DataLoader:" in err

    val_seq = next(p for p in Path(embedded_dir).glob("embedded-*/val/*") if (p / "blur").is_dir())
    r = subprocess.run([sys.executable, "-m", "trainhub", "sample", "vrt_spike", "--checkpoint", str(full.run_dir),
                        "--input", str(val_seq), "--out", str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    restored = sorted((tmp_path / "out" / val_seq.name / "restored").glob("*.png"))
    assert len(restored) == 3 and Image.open(restored[0]).size == (32, 32)
    assert "PSNR" in r.stdout and (tmp_path / "out" / f"{val_seq.name}_strip.png").is_file()


def test_distil_a_frozen_teacher_into_a_smaller_student(tmp_path, tiny, read_metrics):
    teacher = train("vrt_spike", overrides=tiny + ["train.max_steps=2", "model.depths=[2,2,1,1,1,1,1,2]"], run_dir=tmp_path / "teacher")
    before = load_file(str(teacher.last_checkpoint / "ema.safetensors"))
    student_ov = tiny + ["train.max_steps=2", "model.depths=[2,1,1,1,1,1,1,1]", f"distill.teacher={teacher.run_dir}",
                         "distill.feature_weight=0.5", "model.embed_dims=[8,8,8,8,8,8,8,8]"]
    student = train("vrt_spike", overrides=student_ov, run_dir=tmp_path / "student")
    last = read_metrics(student.run_dir, "train")[-1]
    assert last["distill_output"] > 0 and last["distill_feature"] > 0 and "restore" in last
    assert last["loss"] > last["restore"]  # the distillation terms are part of the optimised loss
    assert not any("teacher" in p.name for p in student.last_checkpoint.iterdir())  # never saved
    after = load_file(str(teacher.last_checkpoint / "ema.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the student checkpoint is an ordinary one: it loads into a plain student of its config
    cfg = resolve_config(get_plugins().recipe("vrt_spike"), get_plugins(), student.run_dir / "config.yaml", ["distill.teacher=null"])
    load_models(student.last_checkpoint, {"model": build_model(cfg)}, ema=True)
    with pytest.raises(UserError, match="equal width"):
        train("vrt_spike", overrides=student_ov + ["model.embed_dims=[4,4,4,4,4,4,4,4]", "model.fuse_stages=[1]",
                                                   "model.depths=[2,1,1,1,1,1,1,1]"], run_dir=tmp_path / "bad")


def test_student_initialised_from_teacher_layers(tmp_path, tiny):
    """init_from_teacher: every student tensor is the teacher's tensor of the same name, except the layers of the
    attention groups, which come from the spread subset (stage 8: layers 0 and 3 of 4, shift parity kept)."""
    plugins = get_plugins()
    recipe = plugins.recipe("vrt_spike")
    teacher = build_model(resolve_config(recipe, plugins, None, tiny + ["model.depths=[4,1,1,1,1,1,1,4]"]))
    student = build_model(resolve_config(recipe, plugins, None, tiny + ["model.depths=[2,1,1,1,1,1,1,2]"]))
    picks = init_student(student, teacher)
    # stage 1: 4 layers = 3 mutual + 1 self; the student's 2 = 1 mutual + 1 self
    assert picks == {"stages.0.mutual": [0], "stages.0.self_attn": [0], **{f"stages.{i}.self_attn": [0] for i in range(1, 7)},
                     "stage8.0": [0, 3]}
    tsd, ssd = teacher.state_dict(), student.state_dict()
    moved = {"stage8.0.blocks.1.": "stage8.0.blocks.3."}
    for key, value in ssd.items():
        tkey = next((key.replace(a, b) for a, b in moved.items() if key.startswith(a)), key)
        assert torch.equal(value, tsd[tkey]), key
    assert torch.equal(ssd["stage8.0.blocks.1.attn.qkv.weight"], tsd["stage8.0.blocks.3.attn.qkv.weight"])
    assert not torch.equal(ssd["stage8.0.blocks.1.attn.qkv.weight"], tsd["stage8.0.blocks.1.attn.qkv.weight"])
    deeper = build_model(resolve_config(recipe, plugins, None, tiny + ["model.depths=[4,2,1,1,1,1,1,4]"]))
    with pytest.raises(UserError, match=r"stages\.1\.mutual has 1 layers, the teacher's 0"):
        init_student(deeper, teacher)


def test_distil_with_teacher_init_resumes_exactly_and_mismatch_is_one_line(tmp_path, tiny, interrupt_and_resume, read_metrics):
    teacher = train("vrt_spike", overrides=tiny + ["train.max_steps=2", "model.depths=[2,2,1,1,1,1,1,2]"], run_dir=tmp_path / "teacher")
    ov = tiny + ["train.max_steps=4", "train.checkpoint_every=2", f"distill.teacher={teacher.run_dir}", "distill.init_from_teacher=true",
                 "distill.feature_weight=0.1"]
    # before any step the student is the teacher's layers (EMA weights of the teacher)
    models = VRTSpikeRecipe().build_models(resolve_config(get_plugins().recipe("vrt_spike"), get_plugins(), None, ov))
    ema = load_file(str(teacher.last_checkpoint / "ema.safetensors"))
    assert torch.equal(models["model"].state_dict()["stage8.0.blocks.0.mlp.fc2.weight"], ema["stage8.0.blocks.0.mlp.fc2.weight"])
    assert torch.equal(models["model"].state_dict()["stages.1.self_attn.blocks.0.attn.qkv.weight"],
                       ema["stages.1.self_attn.blocks.0.attn.qkv.weight"])
    full = train("vrt_spike", overrides=ov, run_dir=tmp_path / "full")
    assert read_metrics(full.run_dir, "train")[-1]["distill_feature"] > 0
    res = interrupt_and_resume("vrt_spike", ov, tmp_path / "cut", at=2)
    assert res.status == "completed" and res.step == 4
    assert_same_weights(full.last_checkpoint, res.last_checkpoint, ("model.safetensors", "ema.safetensors"))
    assert not any("teacher" in p.name for p in res.last_checkpoint.iterdir())
    # with both loss weights 0 the teacher only gives the start: it never runs during training
    only = train("vrt_spike", overrides=ov + ["train.max_steps=1", "distill.output_weight=0", "distill.feature_weight=0"],
                 run_dir=tmp_path / "init_only")
    last = read_metrics(only.run_dir, "train")[-1]
    assert "distill_output" not in last and last["loss"] == last["restore"]
    with pytest.raises(UserError) as e:
        train("vrt_spike", overrides=ov + ["model.embed_dims=[8,8,8,8,8,8,8,16]"], run_dir=tmp_path / "bad")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("distill.init_from_teacher:") and "stage8_in.1.weight (student [16, 8], teacher" in msg


def test_progressive_crops_and_grouped_sampling(tmp_path, tiny, capfd):
    # the tiny embedded set has 2 train sequences of 3 frames: 4 two-frame clips = 4 steps per epoch at batch 1
    # with loader.group_window=2 (core's GroupedSampler over the clips' sample_groups) both clips of a sequence come
    # one after the other, so the second reuses a cached frame: hits [0, 1/2, 0, 1/2] in the first epoch (a shuffled
    # order with seed 1 gives [0, 0, 1/2, 1/2])
    sizes: list[int] = []
    hits: list[float] = []

    class Probe(VRTSpikeRecipe):
        def train_step(self, batch, ctx):
            sizes.append(batch["blur"].shape[-1])
            hits.append(float(batch["cache_hit"].mean()))
            return super().train_step(batch, ctx)

    res = train(Probe(), overrides=tiny + ["train.seed=1", "train.max_steps=6", "train.data_schedule=[{from_epoch: 1, data: {train_crop_size: 24}}]",
                                           "loader.group_window=2"], run_dir=tmp_path / "prog")
    assert res.status == "completed"
    assert sizes == [16] * 4 + [24] * 2
    assert hits[:4] == [0.0, 0.5, 0.0, 0.5]
    assert "data phase 0" in capfd.readouterr().out


def test_a_short_run_restores_beyond_the_blurry_input(tmp_path, tiny):
    """The direction of learning on the recipe's own eval: after 40 steps the restored val frames are closer to the
    sharp targets than the blurry inputs are, and closer at step 40 than at step 20 (the default run's margin is
    measured in the README, not here)."""
    ov = tiny + ["train.max_steps=40", "train.eval_every=20", "train.lr=2e-3", "train.batch_size=2", "train.checkpoint_every=0"]
    res = train("vrt_spike", overrides=ov, run_dir=tmp_path / "r")
    records = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    gains = [r["psnr_gain"] for r in records if r["kind"] == "eval"]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(gains) == 2 and gains[1] > gains[0] > 0.02, gains
    assert sum(losses[-10:]) < sum(losses[:10]), losses


@pytest.fixture(scope="module")
def default_workers_run(tmp_path_factory, tiny):
    """A run with the default ``loader.num_workers: auto`` on the CPU of a 2-core machine, where core loads in-process."""
    from trainhub.training import data as core_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core_data, "cpu_count", lambda: 2)
        mp.setenv("LOCAL_WORLD_SIZE", "1")
        ov = tiny + ["loader.num_workers=auto", "train.device=cpu", "train.max_steps=6"]
        return train("vrt_spike", overrides=ov, run_dir=tmp_path_factory.mktemp("auto_workers") / "run")


def test_ram_cache_serves_hits_with_the_default_loader_workers_on_cpu(default_workers_run, read_metrics):
    import yaml

    assert yaml.safe_load((default_workers_run.run_dir / "config.yaml").read_text())["loader"]["num_workers"] == "auto"
    # 4 clips of 2 sequences x 3 frames per epoch: from the second epoch on the clips come from RAM
    assert read_metrics(default_workers_run.run_dir, "train")[-1]["cache_hit_rate"] > 0


def test_sample_skips_stray_files_and_names_an_empty_blur_folder(default_workers_run, embedded_dir, tmp_path, capsys):
    val_seq = next(p for p in Path(embedded_dir).glob("embedded-*/val/*") if (p / "blur").is_dir())
    stray = tmp_path / "stray"
    shutil.copytree(val_seq, stray)
    (stray / "blur" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "empty" / "blur").mkdir(parents=True)
    ckpt = str(default_workers_run.run_dir)
    assert main(["sample", "vrt_spike", "--checkpoint", ckpt, "--input", str(stray), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out" / "stray" / "restored").glob("*.png"))) == 3
    capsys.readouterr()
    assert main(["sample", "vrt_spike", "--checkpoint", ckpt, "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "out2"),
                 "--device", "cpu"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"trainhub: error: --input {tmp_path / 'empty'}: no frames (.png/.jpg/.jpeg/.bmp) in {tmp_path / 'empty' / 'blur'}"
