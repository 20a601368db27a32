"""Progressive data schedules, grouped sampling and frozen teachers (the core of distillation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file

from trainhub import hookimpl
from trainhub.builtin.samplers import GroupedSampler
from trainhub.builtin.tiny import TinyRecipe
from trainhub.builtin.tiny_config import TinyConfig
from trainhub.config import DistillConfig
from trainhub.kit.distill import load_teacher
from trainhub.testing import assert_same_weights
from trainhub.training.run import train


class Seen(TinyRecipe):
    """Records the epoch and batch size of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def train_step(self, batch, ctx):
        self.seen.append((ctx.epoch, batch["x"].shape[0]))
        return super().train_step(batch, ctx)


def test_data_schedule_switches_at_epoch_boundaries_and_resumes_in_phase(tmp_path, quiet, stop_at):
    sched = 'train.data_schedule=[{from_epoch: 2, data: {jitter: 0.5}, batch_size: 8}]'
    ov = quiet + ["data.num_samples=64", "train.batch_size=16", "train.epochs=4", sched]
    r = Seen()
    res = train(r, overrides=ov, run_dir=tmp_path / "a")
    assert res.step == 4 + 4 + 8 + 8  # 64/16 per epoch, then 64/8
    assert {e: b for e, b in r.seen} == {0: 16, 1: 16, 2: 8, 3: 8}

    stop_at(12)
    cut = train(Seen(), overrides=ov, run_dir=tmp_path / "b")
    assert cut.step == 12 and json.loads((cut.last_checkpoint / "training_state.json").read_text())["batch_size"] == 8
    again = Seen()
    res2 = train(again, overrides=ov, run_dir=tmp_path / "b", resume="auto")
    assert res2.step == 24 and set(again.seen) == {(2, 8), (3, 8)}
    assert_same_weights(res.last_checkpoint, res2.last_checkpoint)


def test_data_schedule_errors_name_the_phase(tmp_path, quiet):
    import pytest

    from trainhub.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.data_schedule\[0\]: unknown key 'jiter' \(did you mean 'jitter'\?\)"):
        train("tiny", overrides=quiet + ['train.data_schedule=[{from_epoch: 1, data: {jiter: 0.5}}]'], run_dir=tmp_path / "x")


def test_grouped_sampler_keeps_groups_together_and_resumes():
    groups = np.repeat(np.arange(6), 10)  # 6 sequences of 10 frames
    s = GroupedSampler(groups, window=5, shuffle=True, seed=0)
    s.set_epoch(3)
    order = [i for _, i in s]
    assert sorted(order) == list(range(60))
    windows = [order[i : i + 5] for i in range(0, 60, 5)]
    assert all(len({groups[i] for i in w}) == 1 and w == sorted(w) and w[-1] - w[0] == 4 for w in windows)
    changes = sum(groups[a] != groups[b] for a, b in zip(order, order[1:]))
    assert changes == 5  # each sequence visited in one stretch
    s.set_epoch(3, start=17)
    assert [i for _, i in s] == order[17:]
    two = [GroupedSampler(groups, 5, True, 0, rank=r, world=2) for r in (0, 1)]
    for t in two:
        t.set_epoch(3)
    assert [i for _, i in two[0]] + [i for _, i in two[1]] == order  # contiguous blocks per rank


class DistillConfigTiny(TinyConfig):
    distill: DistillConfig = Field(default_factory=DistillConfig)


class DistillTiny(TinyRecipe):
    config_class = DistillConfigTiny

    def build_models(self, config):
        models = super().build_models(config)
        if config.distill.teacher:
            models["teacher"] = load_teacher(self, config.distill)
        return models

    def frozen_models(self, config):
        return ("teacher",) if config.distill.teacher else ()

    def train_step(self, batch, ctx):
        out = super().train_step(batch, ctx)
        if "teacher" in ctx.models:
            assert not ctx.models["teacher"].training
            with torch.no_grad():
                target = ctx.models["teacher"](batch["x"])
            out["distill"] = F.mse_loss(ctx.models["model"](batch["x"]).float(), target.float())
            out["loss"] = out["loss"] + ctx.config.distill.output_weight * out["distill"]
        return out


def test_frozen_teacher_is_untouched_and_student_checkpoint_is_ordinary(tmp_path, quiet):
    teacher = train(DistillTiny(), overrides=quiet + ["train.max_steps=30", "model.hidden=64"], run_dir=tmp_path / "teacher")
    before = load_file(str(teacher.last_checkpoint / "ema.safetensors"))
    student = train(DistillTiny(), overrides=quiet + ["train.max_steps=10", "model.hidden=16",
                                                      f"distill.teacher={teacher.run_dir}"], run_dir=tmp_path / "student")
    files = sorted(p.name for p in student.last_checkpoint.iterdir())
    assert not any("teacher" in f for f in files)  # the teacher is never saved
    lines = [json.loads(x) for x in (student.run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert "distill" in lines[-1]
    after = load_file(str(teacher.last_checkpoint / "ema.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the student checkpoint loads into a plain student model
    from trainhub.builtin.tiny import TinyMLP
    from trainhub.training import checkpoint as ckpt

    ckpt.load_models(student.last_checkpoint, {"model": TinyMLP(8, 16, 2, 0.1)}, ema=True)


class Student(DistillTiny):
    """A distillation recipe that keeps something of its config on itself when it builds its models."""

    name = "student"

    def build_models(self, config):
        self.hidden = config.model.hidden
        return super().build_models(config)


def test_the_teacher_build_leaves_the_students_recipe_alone_and_the_student_evaluates_without_it(
        tmp_path, quiet, trainhub_register, capsys):
    from trainhub.cli import main

    class Plugin:
        @hookimpl
        def trainhub_register_recipes(self, register):
            register(Student)

    trainhub_register(Plugin())
    teacher = train("student", overrides=quiet + ["train.max_steps=4", "model.hidden=64"], run_dir=tmp_path / "teacher")
    recipe = Student()
    student = train(recipe, overrides=quiet + ["train.max_steps=2", "model.hidden=16", f"distill.teacher={teacher.run_dir}"],
                    run_dir=tmp_path / "student")
    assert recipe.hidden == 16  # the teacher (hidden 64) was built by a copy of the recipe
    shutil.rmtree(teacher.run_dir)  # sampling and evaluating a student needs no teacher
    capsys.readouterr()
    assert main(["eval", "student", "--checkpoint", str(student.run_dir)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err == f"trainhub: loaded ema.safetensors from {student.run_dir / 'checkpoints' / 'checkpoint-2'}\n"
