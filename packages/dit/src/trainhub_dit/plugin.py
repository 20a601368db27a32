"""Registers the dit recipe and the DiT model family with trainhub (entry point ``dit``).

Models are registered by name (``DiT-XL/2``, ...); a third party registers its own variant the same way and trains
it with this recipe by setting ``model.name``::

    @hookimpl
    def trainhub_register_models(register):
        register("DiT-XL/1", lambda **kw: DiT(depth=28, hidden_size=1152, num_heads=16, patch_size=1, **kw))
"""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[[Any], None]) -> None:
    from trainhub_dit.recipe import DiTRecipe

    register(DiTRecipe())


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    from trainhub_dit.model import DiT_models

    for name, factory in DiT_models.items():
        register(name, factory)


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    from trainhub_dit import data, latents

    register("dit-embedded-shapes", data.EmbeddedShapes)
    register("dit-image-folder", data.image_folder)
    register("dit-coco", data.coco)
    register("dit-latent-shards", latents.LatentShards)
