"""A short CPU run that evaluates, is interrupted, resumes exactly, and samples from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from PIL import Image

from trainhub.testing import assert_same_weights
from trainhub.training.run import train


def test_30_steps_resume_exactly_and_evaluate(tmp_path, tiny, interrupt_and_resume):
    ov = tiny + ["train.max_steps=30", "train.eval_every=15", "train.checkpoint_every=15"]
    full = train("sr3", overrides=ov, run_dir=tmp_path / "full")
    res = interrupt_and_resume("sr3", ov, tmp_path / "cut", at=12)
    assert res.step == 30
    assert_same_weights(full.last_checkpoint, res.last_checkpoint)
    evals = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and {"psnr", "ssim", "psnr_bicubic", "psnr_gain", "psnr_mean", "consistency", "consistency_bicubic",
                      "sharpness", "sharpness_bicubic"} <= set(evals[-1])
    grid = res.run_dir / "samples" / "step_0000030" / "lr_sr_hr.png"
    assert grid.is_file() and Image.open(grid).size[0] > 5 * 128  # LR | bicubic | SR | mean of K | HR, 128 px tiles
    best = json.loads((res.run_dir / "best.json").read_text())
    assert best["metric"] == "psnr_mean"

    lr = tmp_path / "lr.png"
    Image.fromarray((torch.rand(6, 5, 3) * 255).byte().numpy()).save(lr)
    r = subprocess.run([sys.executable, "-m", "trainhub", "sample", "sr3", "--checkpoint", str(res.run_dir), "--input", str(lr),
                        "--steps", "3", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out" / "lr_sr.png").size == (5 * 4, 6 * 4)


def test_two_runs_in_one_process_each_train_on_their_own_schedule(tmp_path, tiny, trainhub_register):
    """Each run builds its own recipe: the second run's 50-step schedule is not the first run's 100-step one."""
    from trainhub import hookimpl

    seen = []

    class Watch:
        @hookimpl
        def trainhub_run_start(self, run):
            seen.append((run.recipe, len(run.recipe.noise_schedule(run.models)["betas"])))

    trainhub_register(Watch())
    for n in (100, 50):
        train("sr3", overrides=tiny + ["train.max_steps=2", "train.eval_every=0", "train.eval_at_end=false",
                                       f"model.beta_schedule.train.n_timestep={n}"], run_dir=tmp_path / f"n{n}")
    (first, n_first), (second, n_second) = seen
    assert (n_first, n_second) == (100, 50) and first is not second


def test_an_unconditional_run_writes_a_titled_grid_of_generated_images(tmp_path, tiny):
    ov = tiny + ["model.conditional=false", "model.unet.in_channel=3", "model.residual=false", "train.max_steps=2",
                 "train.eval_every=2", "train.best_metric=null"]
    res = train("sr3", overrides=ov, run_dir=tmp_path / "r")
    grid = Image.open(res.run_dir / "samples" / "step_0000002" / "samples.png")
    # 4 generated 16 px images, enlarged to 128 px tiles in one row, with a title band above them
    assert grid.size[0] >= 4 * 128 and grid.size[1] > 128
