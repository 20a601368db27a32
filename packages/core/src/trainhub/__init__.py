"""trainhub: plugin-based training for image, video and audio generative models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

hookimpl = pluggy.HookimplMarker("trainhub")

from trainhub.errors import ConfigError, PluginError, TrainingStopped, UserError  # noqa: E402

if TYPE_CHECKING:
    from trainhub.config import DistillConfig, EMAConfig, LoaderConfig, RunConfig, Section, TrainConfig
    from trainhub.recipe import EvalContext, ForeignResume, OptimizerSpec, Recipe, StepContext
    from trainhub.training.data import ResumableSampler

# Imported on first use: ``import trainhub`` stays light (pluggy only), so the ``trainhub`` command installs its
# Ctrl-C handler before torch's import (3-5 s) instead of after it.
_LAZY = {**dict.fromkeys(("DistillConfig", "EMAConfig", "LoaderConfig", "RunConfig", "Section", "TrainConfig"), "trainhub.config"),
         **dict.fromkeys(("EvalContext", "ForeignResume", "OptimizerSpec", "Recipe", "StepContext"), "trainhub.recipe"),
         "ResumableSampler": "trainhub.training.data"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainhub' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "Recipe",
    "OptimizerSpec",
    "ForeignResume",
    "StepContext",
    "EvalContext",
    "ResumableSampler",
    "RunConfig",
    "Section",
    "TrainConfig",
    "EMAConfig",
    "DistillConfig",
    "LoaderConfig",
    "UserError",
    "ConfigError",
    "PluginError",
    "TrainingStopped",
    "train",
]


def train(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a recipe programmatically; see :func:`trainhub.training.run.train`."""
    from trainhub.training.run import train as _train

    return _train(*args, **kwargs)
