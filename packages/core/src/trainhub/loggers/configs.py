"""The ``loggers.*`` sections every recipe's config has, one per built-in logger (kept apart from the loggers'
code, which imports torch, so that ``trainhub config NAME`` shows them without importing it)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from trainhub.config import Section


class ConsoleConfig(Section):
    enabled: bool = True
    progress_bar: bool = True


class JsonlConfig(Section):
    enabled: bool = True
    filename: str = "metrics.jsonl"


class TensorBoardConfig(Section):
    enabled: bool = False
    log_dir: Optional[str] = Field(None, description="event file folder; default <run>/tensorboard")
    log_media: bool = Field(True, description="eval images and audio")
    histograms: bool = Field(False, description="weight and gradient histograms of the trained models")
    histogram_every: int = Field(100, ge=1, description="optimizer steps between histograms")
    flush_secs: int = Field(30, ge=1)


class WandbConfig(Section):
    enabled: bool = False
    mode: Literal["online", "offline", "disabled"] = "offline"
    project: str = "trainhub"
    entity: Optional[str] = None
    name: Optional[str] = Field(None, description="run name shown in the UI (default: the run folder name)")
    group: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    notes: Optional[str] = None
    log_media: bool = Field(True, description="eval images and audio")
    log_checkpoints: bool = Field(False, description="upload the best checkpoint (the final one without train.best_metric) as a model artifact")
    log_eval: bool = Field(False, description="also log eval metrics and media as wandb Tables")
    init_timeout: float = Field(90.0, gt=0.0, description="seconds to wait for the wandb service/server before falling back")


class ParamOutputsConfig(Section):
    enabled: bool = False
    save_param_freq: int = Field(100, ge=1, description="write outputs every N optimizer steps")
    save_weights: bool = True
    save_gradients: bool = True
    save_activations: bool = False
    activation_samples: int = Field(4, ge=1, description="activations of the first N samples of the batch")
    layers_to_monitor: list[str] = Field(
        default_factory=lambda: ["attention", "conv", "norm", "linear"],
        description="module kinds (attention, conv, norm, linear, embedding, all) and/or globs on '<model>.<module path>'",
    )
    models: list[str] = Field(default_factory=list, description="models to monitor (default: all the recipe builds)")
    disk_budget_mb: float = Field(1024.0, gt=0.0, description="stop writing full tensors past this (statistics continue)")
    plots: bool = Field(True, description="PNG plots at the end of the run (needs matplotlib)")
