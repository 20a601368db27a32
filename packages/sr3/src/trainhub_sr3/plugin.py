"""Registers the sr3 recipe and the SR3 UNet with trainhub (entry point ``sr3``)."""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[[Any], None]) -> None:
    from trainhub_sr3.recipe import SR3Recipe

    register(SR3Recipe())


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    from trainhub_sr3.model import SR3UNet

    register("sr3-unet", SR3UNet)
