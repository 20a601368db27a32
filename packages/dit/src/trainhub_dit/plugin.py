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
from trainhub_dit.sizes import PATCHES, SIZES


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("dit", "trainhub_dit.recipe:DiTRecipe", config="trainhub_dit.config:DiTConfig",
             description="DiT class-conditional diffusion transformer, pixel or latent (official checkpoints load)")


def _dit(name: str) -> Callable[..., Any]:
    """The factory of ``name`` (``DiT-XL/2``), importing the model module only when a model is built."""

    def factory(**kwargs: Any) -> Any:
        from trainhub_dit.model import DiT_models

        return DiT_models[name](**kwargs)

    return factory


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    for size in SIZES:
        for patch in PATCHES:
            register(f"DiT-{size}/{patch}", _dit(f"DiT-{size}/{patch}"))


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("dit-embedded-shapes", "trainhub_dit.data:EmbeddedShapes")
    register("dit-image-folder", "trainhub_dit.data:image_folder")
    register("dit-coco", "trainhub_dit.data:coco")
    register("dit-latent-shards", "trainhub_dit.latents:LatentShards")
