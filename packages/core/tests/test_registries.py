"""Optimizers, learning-rate schedules and samplers are registries plugins fill: the built-ins are registered the
same way, a third-party optimizer, schedule and sampler train end to end and resume exactly, and a wrong name or
option is one line naming the key."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from trainhub import hookimpl
from trainhub.components import ScheduleSettings, warmup_then
from trainhub.errors import ConfigError, PluginError
from trainhub.testing import assert_same_weights
from trainhub.training import checkpoint as ckpt
from trainhub.training.data import ResumableSampler
from trainhub.training.run import train

FAST = ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=1", "train.eval_every=0",
        "train.eval_at_end=false", "train.best_metric=null", "data.num_samples=256", "train.batch_size=16",
        "train.schedule=constant", "train.warmup_steps=0"]


class SignSGD(torch.optim.Optimizer):
    """A Lion-style sign update with momentum: ``m = b1 m + (1 - b1) g``, ``p -= lr sign(m)``."""

    def __init__(self, params, lr: float, beta: float) -> None:
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.add_(m.sign(), alpha=-group["lr"])


def sign_sgd(params, s, beta: float = 0.9):  # noqa: ANN001, ANN201
    return SignSGD(params, lr=s.lr, beta=beta)


def inverse_sqrt(s: ScheduleSettings, floor: float = 0.0):  # noqa: ANN201
    """Warm-up, then ``1 / sqrt(progress * total + 1)`` (the Transformer schedule's tail)."""
    return warmup_then(s, lambda p: max(floor, 1.0 / math.sqrt(p * s.total_steps + 1)))


class Reversed(ResumableSampler):
    """Each epoch's permutation read backwards: a different order that still depends on (seed, epoch) alone."""

    def epoch_order(self) -> list[int]:
        return super().epoch_order()[::-1]


def reversed_sampler(dataset, s):  # noqa: ANN001, ANN201
    return Reversed(len(dataset), s.shuffle, s.seed, s.rank, s.world, s.drop_last)


class Components:
    @hookimpl
    def trainhub_register_optimizers(self, register):
        register("sign_sgd", sign_sgd)

    @hookimpl
    def trainhub_register_schedules(self, register):
        register("inverse_sqrt", inverse_sqrt)

    @hookimpl
    def trainhub_register_samplers(self, register):
        register("reversed", reversed_sampler)


@pytest.fixture
def components(trainhub_register):
    trainhub_register(Components())


def test_the_built_ins_are_registered_like_a_plugins(trainhub_plugins):
    reg = trainhub_plugins.registry
    assert {"adamw", "adam", "sgd"} <= set(reg["optimizers"]) and reg["optimizers"]["sgd"].distribution == "trainhub"
    assert {"constant", "cosine", "linear"} <= set(reg["schedules"])
    assert {"auto", "random", "grouped"} <= set(reg["samplers"])
    assert {"optimizers", "schedules", "samplers"} <= set(trainhub_plugins.info["trainhub"].registered)


def test_sgd_with_nesterov_momentum_trains_with_its_options(tmp_path):
    res = train("tiny", overrides=FAST + ["train.max_steps=4", "train.optimizer=sgd", "train.lr=0.05",
                                          "train.optimizer_args={momentum: 0.8, nesterov: true}"], run_dir=tmp_path / "r")
    saved = torch.load(res.last_checkpoint / "optimizer.pt", weights_only=True)["optimizers"]["model"]
    group = saved["param_groups"][0]
    assert (group["momentum"], group["nesterov"], group["lr"]) == (0.8, True, 0.05)
    assert all("momentum_buffer" in s for s in saved["state"].values())


def test_a_third_party_optimizer_schedule_and_sampler_train_and_resume_exactly(tmp_path, components, interrupt_and_resume):
    ov = FAST + ["train.max_steps=10", "train.optimizer=sign_sgd", "train.optimizer_args={beta: 0.8}", "train.lr=0.003",
                 "train.schedule=inverse_sqrt", "train.warmup_steps=2", "train.schedule_args={floor: 0.1}",
                 "loader.sampler=reversed", "train.checkpoint_every=5"]
    whole = train("tiny", overrides=ov, run_dir=tmp_path / "whole")
    resumed = interrupt_and_resume("tiny", ov, tmp_path / "cut", at=7)
    assert whole.status == resumed.status == "completed" and resumed.step == 10
    assert_same_weights(whole.last_checkpoint, resumed.last_checkpoint, files=("model.safetensors", "ema.safetensors"))
    opt = torch.load(whole.last_checkpoint / "optimizer.pt", weights_only=True)
    assert all(set(s) == {"m"} for s in opt["optimizers"]["model"]["state"].values())  # the sign update's own state
    lr = [r["lr"] for r in _train_records(whole.run_dir)]
    expected = [0.003 * inverse_sqrt(ScheduleSettings(10, 2, 0.0), floor=0.1)(s) for s in range(1, 11)]
    assert lr == pytest.approx(expected)
    reference = train("tiny", overrides=[o for o in ov if not o.startswith("loader.sampler")], run_dir=tmp_path / "random")
    a, b = load_file(str(whole.last_checkpoint / "model.safetensors")), load_file(str(reference.last_checkpoint / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a), "the reversed sampler changed nothing: was it used?"


def _train_records(run_dir):
    import json

    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=lion", "train.optimizer=lion: unknown optimizer; available: adam, adamw, sgd"),
    ("train.schedule=wsd", "train.schedule=wsd: unknown schedule; available: constant, cosine, linear"),
    ("loader.sampler=balanced", "loader.sampler=balanced: unknown sampler; available: auto, grouped, random"),
    ("train.optimizer_args={momentun: 0.9}", "train.optimizer_args: adamw does not take momentun; it takes: amsgrad"),
    ("train.schedule_args={floor: 1}", "train.schedule_args: constant does not take floor; it takes: nothing"),
])
def test_a_wrong_name_or_option_is_one_line_naming_the_key(tmp_path, override, message):
    with pytest.raises((ConfigError, PluginError)) as e:
        train("tiny", overrides=FAST + ["train.max_steps=2", override], run_dir=tmp_path / "r")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_optimizer_spec_names_its_own_optimizer(tmp_path, trainhub_register):
    from trainhub.builtin.tiny import TinyRecipe
    from trainhub.recipe import OptimizerSpec

    class SGDTiny(TinyRecipe):
        name = "sgd_tiny"

        def optimizers(self, config, models):
            return {"model": OptimizerSpec(models=("model",), optimizer="sgd", lr=0.01)}

    class Plugin:
        @hookimpl
        def trainhub_register_recipes(self, register):
            register(SGDTiny)

    trainhub_register(Plugin())
    res = train("sgd_tiny", overrides=FAST + ["train.max_steps=2"], run_dir=tmp_path / "r")
    group = torch.load(ckpt.latest(res.run_dir / "checkpoints") / "optimizer.pt", weights_only=True)["optimizers"]["model"]["param_groups"][0]
    assert "momentum" in group and group["lr"] == 0.01
