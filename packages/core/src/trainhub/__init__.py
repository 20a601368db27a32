"""trainhub: plugin-based training for image, video and audio generative models."""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("trainhub")

from trainhub.config import EMAConfig, LoaderConfig, RunConfig, Section, TrainConfig  # noqa: E402
from trainhub.errors import ConfigError, PluginError, TrainingStopped, UserError  # noqa: E402
from trainhub.recipe import EvalContext, ForeignResume, OptimizerSpec, Recipe, StepContext  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "Recipe",
    "OptimizerSpec",
    "ForeignResume",
    "StepContext",
    "EvalContext",
    "RunConfig",
    "Section",
    "TrainConfig",
    "EMAConfig",
    "LoaderConfig",
    "UserError",
    "ConfigError",
    "PluginError",
    "TrainingStopped",
    "train",
]


def train(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a recipe programmatically; see :func:`trainhub.run.train`."""
    from trainhub.run import train as _train

    return _train(*args, **kwargs)
