"""Optimizers, learning-rate schedules and the training sampler, built from the registries that plugins fill
(:mod:`trainhub.components`) by the names the config gives."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainhub.components import OptimizerSettings, SamplerSettings, ScheduleSettings, call_factory
from trainhub.config import LoaderConfig, TrainConfig
from trainhub.plugins import Plugins
from trainhub.recipe import OptimizerSpec
from trainhub.training.data import ResumableSampler


def build_optimizer(plugins: Plugins, params: list[nn.Parameter], spec: OptimizerSpec, tc: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``spec.optimizer`` (or ``train.optimizer``) over ``params``; the spec's values override ``train``'s."""
    name = spec.optimizer or tc.optimizer
    key = "train.optimizer" if spec.optimizer is None else f"the recipe's optimizer spec ({name})"
    factory = plugins.get("optimizers", name, key)
    settings = OptimizerSettings(
        lr=spec.lr if spec.lr is not None else tc.lr,
        betas=spec.betas if spec.betas is not None else tc.betas,
        eps=tc.eps,
        weight_decay=spec.weight_decay if spec.weight_decay is not None else tc.weight_decay,
        fused=tc.fused if tc.fused is not None else device.type == "cuda",
        device=device,
    )
    opt = call_factory(factory, "train.optimizer_args", name, params, settings, options=dict(tc.optimizer_args))
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer {name!r}: its factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def build_schedulers(plugins: Plugins, optimizers: dict[str, torch.optim.Optimizer], tc: TrainConfig,
                     total_steps: int) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    """One ``LambdaLR`` per optimizer following ``train.schedule`` over ``total_steps`` optimizer steps."""
    factory = plugins.get("schedules", tc.schedule, "train.schedule")
    settings = ScheduleSettings(total_steps, tc.warmup_steps, tc.min_lr_ratio)
    out = {}
    for name, opt in optimizers.items():
        multiplier = call_factory(factory, "train.schedule_args", tc.schedule, settings, options=dict(tc.schedule_args))
        out[name] = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
    return out


def build_sampler(plugins: Plugins, dataset: Any, cfg: LoaderConfig, seed: int, rank: int, world: int) -> ResumableSampler:
    """The training sampler ``loader.sampler`` over ``dataset``."""
    factory = plugins.get("samplers", cfg.sampler, "loader.sampler")
    settings = SamplerSettings(seed, rank, world, cfg.shuffle, cfg.drop_last, cfg.group_window)
    sampler = call_factory(factory, "loader.sampler_args", cfg.sampler, dataset, settings, options=dict(cfg.sampler_args))
    if not isinstance(sampler, ResumableSampler):
        raise TypeError(f"sampler {cfg.sampler!r}: its factory returned {type(sampler).__name__}, not a ResumableSampler "
                        "(exact resume needs set_epoch(epoch, start))")
    return sampler
