"""The ``loggers.*`` sections every recipe's config has, one per built-in logger (kept apart from the loggers'
code, which imports torch, so that ``trainhub config NAME`` shows them without importing it)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from trainhub.config import Section


class ConsoleConfig(Section):
    enabled: bool = Field(True, description="step lines, eval lines and warnings on the console")
    progress_bar: bool = Field(True, description="a progress bar for training, eval and sampling (tqdm)")


class JsonlConfig(Section):
    enabled: bool = Field(True, description="every logged record as one JSON line (trainhub analyze and runs read it)")
    filename: str = Field("metrics.jsonl", description="in the run directory")


class TensorBoardConfig(Section):
    enabled: bool = Field(False, description="TensorBoard event files (needs the tensorboard extra)")
    log_dir: Optional[str] = Field(None, description="event file folder; default <run>/tensorboard")
    log_media: bool = Field(True, description="eval images and audio")
    histograms: bool = Field(False, description="weight and gradient histograms of the trained models")
    histogram_every: int = Field(100, ge=1, description="optimizer steps between histograms")
    flush_secs: int = Field(30, ge=1, description="seconds between flushes to disk")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Weights & Biases (needs the wandb extra)")
    mode: Literal["online", "offline", "disabled"] = Field("offline", description="offline: files in <run>/wandb, synced later "
                                                           "with `wandb sync`")
    project: str = Field("trainhub", description="wandb project")
    entity: Optional[str] = Field(None, description="wandb team or user; null: your default")
    name: Optional[str] = Field(None, description="run name shown in the UI (default: the run folder name)")
    group: Optional[str] = Field(None, description="wandb run group")
    tags: list[str] = Field(default_factory=list, description="wandb run tags")
    notes: Optional[str] = Field(None, description="wandb run notes")
    log_media: bool = Field(True, description="eval images and audio")
    log_checkpoints: bool = Field(False, description="upload the best checkpoint (the final one without train.best_metric) as a model artifact")
    log_eval: bool = Field(False, description="also log eval metrics and media as wandb Tables")
    init_timeout: float = Field(90.0, gt=0.0, description="seconds to wait for the wandb service/server before falling back")


class ParamOutputsConfig(Section):
    enabled: bool = Field(False, description="write weights, gradients and activations of chosen layers (safetensors) with "
                          "statistics, for trainhub analyze and plots")
    save_param_freq: int = Field(100, ge=1, description="write outputs every N optimizer steps")
    save_weights: bool = Field(True, description="full weight tensors (statistics are always written)")
    save_gradients: bool = Field(True, description="full gradient tensors")
    save_activations: bool = Field(False, description="activations of the monitored layers (forward hooks on that step)")
    activation_samples: int = Field(4, ge=1, description="activations of the first N samples of the batch")
    layers_to_monitor: list[str] = Field(
        default_factory=lambda: ["attention", "conv", "norm", "linear"],
        description="module kinds (attention, conv, norm, linear, embedding, all) and/or globs on '<model>.<module path>'",
    )
    models: list[str] = Field(default_factory=list, description="models to monitor (default: all the recipe builds)")
    disk_budget_mb: float = Field(1024.0, gt=0.0, description="stop writing full tensors past this (statistics continue)")
    plots: bool = Field(True, description="PNG plots at the end of the run (needs matplotlib)")


class CurvesConfig(Section):
    enabled: bool = Field(True, description="curves.png in the run directory: loss terms, lr and eval metrics against the "
                          "step, from metrics.jsonl, redrawn after every eval and at the end")

