"""Registers the sr3 recipe and the SR3 UNet with trainhub (entry point ``sr3``)."""

from __future__ import annotations

from typing import Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("sr3", "trainhub_sr3.recipe:SR3Recipe", config="trainhub_sr3.config:SR3Config",
             description="SR3 diffusion super-resolution (reference-compatible weights and configs)")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("sr3-unet", "trainhub_sr3.model:SR3UNet")
