"""A short CPU run that evaluates, is interrupted, resumes exactly, and samples from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from trainhub.testing import assert_same_weights
from trainhub.training.run import train
from trainhub_sr3.recipe import EVAL_METRICS


def test_30_steps_resume_exactly_and_evaluate(tmp_path, tiny, interrupt_and_resume):
    ov = tiny + ["train.max_steps=30", "train.eval_every=15", "train.checkpoint_every=15"]
    full = train("sr3", overrides=ov, run_dir=tmp_path / "full")
    res = interrupt_and_resume("sr3", ov, tmp_path / "cut", at=12)
    assert res.step == 30
    assert_same_weights(full.last_checkpoint, res.last_checkpoint)
    evals = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals and set(EVAL_METRICS) <= set(evals[-1])  # the metrics train.best_metric may name
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


def test_an_unconditional_run_writes_a_titled_grid_of_generated_images_and_keeps_no_best(tmp_path, tiny, capsys):
    ov = tiny + ["model.conditional=false", "model.unet.in_channel=3", "model.residual=false", "train.max_steps=2",
                 "train.eval_every=2", "train.checkpoint_every=2"]
    res = train("sr3", overrides=ov, run_dir=tmp_path / "r")
    assert res.status == "completed"
    grid = Image.open(res.run_dir / "samples" / "step_0000002" / "samples.png")
    # 4 generated 16 px images, enlarged to 128 px tiles in one row, with a title band above them
    assert grid.size[0] >= 4 * 128 and grid.size[1] > 128
    note = ("trainhub-sr3: model.conditional=false: eval generates images and scores no metric, so no best checkpoint is "
            "kept (train.best_metric=auto)")
    assert capsys.readouterr().err.count(note) == 1 and not (res.run_dir / "best.json").exists()
    resumed = train("sr3", overrides=["train.max_steps=4"], run_dir=tmp_path / "r", resume="auto")
    assert (resumed.status, resumed.step) == ("completed", 4)
    # `trainhub eval` on it, which its last lines suggest, generates the grid too
    from trainhub.cli import main

    capsys.readouterr()
    assert main(["eval", "sr3", "--checkpoint", str(res.run_dir)]) == 0
    out = capsys.readouterr()
    grid = res.run_dir / "samples" / "eval" / "step_0000004" / "samples.png"
    assert f"trainhub: wrote {grid}" in out.err and grid.is_file() and out.out.strip() == "{}"


def test_own_images_without_val_root_train_and_keep_no_best(tmp_path, tiny, photos, capsys):
    ov = tiny + ["data.source=folder", f"data.root={photos(tmp_path / 'imgs', n=4)}", "train.max_steps=2",
                 "train.eval_every=2", "train.checkpoint_every=2"]
    res = train("sr3", overrides=ov, run_dir=tmp_path / "r")
    assert res.status == "completed" and not (res.run_dir / "best.json").exists()
    assert ("trainhub-sr3: data.source=folder without data.val_root: there is no validation data to score, so no best "
            "checkpoint is kept (train.best_metric=auto)") in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["model.conditional=false", "model.unet.in_channel=3", "model.residual=false", "train.best_metric=psnr_mean"],
     "train.best_metric=psnr_mean cannot be measured: model.conditional=false: eval generates images and scores no metric; "
     "set train.best_metric=null"),
    (["data.source=folder", "data.root={imgs}", "train.best_metric=psnr"],
     "train.best_metric=psnr cannot be measured: data.source=folder without data.val_root: there is no validation data to "
     "score; set data.val_root, or train.best_metric=null"),
    (["train.best_metric=psnr_mea"], "train.best_metric=psnr_mea is not an sr3 eval metric; those are psnr, ssim, psnr_mean, "
     "ssim_mean, consistency, psnr_bicubic, ssim_bicubic, consistency_bicubic, psnr_gain, psnr_mean_gain, sharpness, "
     "sharpness_bicubic"),
])
def test_a_best_metric_eval_cannot_produce_is_one_line_before_training(tmp_path, tiny, photos, capsys, overrides, message):
    from trainhub.cli import main

    imgs = photos(tmp_path / "imgs", n=4)
    rc = main(["run", "sr3", "--dry-run", *tiny, *(o.format(imgs=imgs) for o in overrides)])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"trainhub: error: {message}"
