"""Built-in logging backends, registered by core through ``trainhub_register_loggers``."""

from __future__ import annotations

from typing import Callable


def register_builtin(register: Callable[..., None]) -> None:
    from trainhub.observe import param_outputs
    from trainhub.loggers import console, jsonl, tensorboard, wandb

    register("console", console.ConsoleLogger, console.ConsoleConfig)
    register("jsonl", jsonl.JsonlLogger, jsonl.JsonlConfig)
    register("tensorboard", tensorboard.TensorBoardLogger, tensorboard.TensorBoardConfig)
    register("wandb", wandb.WandbLogger, wandb.WandbConfig)
    register("param_outputs", param_outputs.ParamOutputs, param_outputs.ParamOutputsConfig)
