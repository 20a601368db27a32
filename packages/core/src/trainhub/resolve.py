"""The config a recipe runs with: its schema plus every registered logger's section, the configs its package
ships, and the sources in order (defaults < ``--config`` < overrides). Imports no torch: ``trainhub config`` and
``--help`` use it."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Optional

from trainhub import config as C
from trainhub.errors import UserError
from trainhub.plugins import Plugins, RecipeEntry


def config_class_for(recipe: Any, plugins: Plugins) -> type[C.RunConfig]:
    """The recipe's config class with a ``loggers.<name>`` section for every registered logger (``recipe``: a
    Recipe, or the :class:`~trainhub.plugins.RecipeEntry` of one)."""
    loggers = {name: reg.extra[0] for name, reg in plugins.registry["loggers"].items() if reg.extra}
    return C.with_loggers(recipe.config_class, loggers)


def shipped_configs(recipe: Any) -> dict[str, Path]:
    """The named configs a recipe's package ships in its ``configs/`` folder, as ``{name: path}``."""
    package = recipe.package if isinstance(recipe, RecipeEntry) else type(recipe).__module__.split(".")[0]
    try:
        root = Path(str(importlib.resources.files(package) / "configs"))
    except (ModuleNotFoundError, TypeError):
        return {}
    exts = (".yaml", ".yml", ".json")
    return {p.stem: p for p in sorted(root.iterdir()) if p.suffix in exts} if root.is_dir() else {}


def config_path(recipe: Any, config_file: Any) -> Optional[Path]:
    """``--config`` as given: a file, or the name of a config the recipe ships (``sr3_16_128``)."""
    if config_file is None:
        return None
    p = Path(config_file)
    if p.is_file() or p.suffix or len(p.parts) > 1:
        return p
    named = shipped_configs(recipe)
    if str(config_file) in named:
        return named[str(config_file)]
    raise UserError(f"--config {config_file}: no such file, and recipe {recipe.name!r} ships no config of that name "
                    f"(shipped: {', '.join(named) or 'none'})")


def resolve_config(recipe: Any, plugins: Plugins, config_file: Any = None, overrides: Any = None) -> C.RunConfig:
    """Recipe defaults < ``config_file`` (a path or a shipped config's name) < ``overrides``."""
    return C.resolve(config_class_for(recipe, plugins), config_path(recipe, config_file), overrides,
                     file_mapper=recipe.map_config)
