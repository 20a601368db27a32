"""Registers the tokenimage recipe, its denoiser and dataset with trainhub (entry point ``tokenimage``)."""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[[Any], None]) -> None:
    from trainhub_tokenimage.recipe import TokenImageRecipe

    register(TokenImageRecipe())


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    from trainhub_tokenimage.model import TokenDiT

    register("tokenimage-dit", TokenDiT)


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    from trainhub_tokenimage.data import TokenImageDataset

    register("tokenimage-text", TokenImageDataset)
