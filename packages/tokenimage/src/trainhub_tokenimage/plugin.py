"""Registers the tokenimage recipe, its denoiser and dataset with trainhub (entry point ``tokenimage``)."""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("tokenimage", "trainhub_tokenimage.recipe:TokenImageRecipe", config="trainhub_tokenimage.config:TokenImageConfig",
             description="text tokens as 64x64 images, denoised by a masked DiT (stdlib docstrings by default)")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("tokenimage-dit", "trainhub_tokenimage.model:TokenDiT")


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("tokenimage-text", "trainhub_tokenimage.data:TokenImageDataset")
