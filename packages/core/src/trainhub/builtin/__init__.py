"""Core's own plugin: the built-in losses, loggers and the ``tiny`` recipe, registered through the same hooks as any
third-party plugin."""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl
from trainhub.builtin.losses import LOSSES
from trainhub.builtin.tiny import SyntheticRegression, TinyMLP, TinyRecipe


@hookimpl
def trainhub_register_recipes(register: Callable[[Any], None]) -> None:
    register(TinyRecipe())


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("tiny-mlp", TinyMLP)


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("synthetic-regression", SyntheticRegression)


@hookimpl
def trainhub_register_losses(register: Callable[..., None]) -> None:
    for name, cls in LOSSES.items():
        register(name, cls)


@hookimpl
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    from trainhub.loggers import register_builtin

    register_builtin(register)
