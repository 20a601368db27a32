"""Core's own plugin: the built-in optimizers, schedules, samplers, losses, loggers and the ``tiny`` recipe,
registered through the same hooks as any third-party plugin (by reference, so listing them imports no torch)."""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl
from trainhub.loggers.configs import ConsoleConfig, CurvesConfig, JsonlConfig, ParamOutputsConfig, TensorBoardConfig, WandbConfig


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("tiny", "trainhub.builtin.tiny:TinyRecipe", config="trainhub.builtin.tiny_config:TinyConfig",
             description="tiny MLP regression on synthetic data (built-in demo and trainer test recipe)")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("tiny-mlp", "trainhub.builtin.tiny:TinyMLP")


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("synthetic-regression", "trainhub.builtin.tiny:SyntheticRegression")


@hookimpl
def trainhub_register_losses(register: Callable[..., None]) -> None:
    register("l1", "torch.nn:L1Loss")
    register("mse", "torch.nn:MSELoss")
    register("charbonnier", "trainhub.builtin.losses:CharbonnierLoss")


@hookimpl
def trainhub_register_optimizers(register: Callable[..., None]) -> None:
    for name in ("adamw", "adam", "sgd"):
        register(name, f"trainhub.builtin.optimizers:{name}")


@hookimpl
def trainhub_register_schedules(register: Callable[..., None]) -> None:
    for name in ("constant", "cosine", "linear"):
        register(name, f"trainhub.builtin.schedules:{name}")


@hookimpl
def trainhub_register_samplers(register: Callable[..., None]) -> None:
    for name in ("auto", "random", "grouped"):
        register(name, f"trainhub.builtin.samplers:{name}")


@hookimpl
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    register("console", "trainhub.loggers.console:ConsoleLogger", ConsoleConfig)
    register("jsonl", "trainhub.loggers.jsonl:JsonlLogger", JsonlConfig)
    register("curves", "trainhub.observe.curves:CurvesLogger", CurvesConfig)
    register("tensorboard", "trainhub.loggers.tensorboard:TensorBoardLogger", TensorBoardConfig)
    register("wandb", "trainhub.loggers.wandb:WandbLogger", WandbConfig)
    register("param_outputs", "trainhub.observe.param_outputs:ParamOutputs", ParamOutputsConfig)
