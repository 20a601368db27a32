"""Registers the timbre_gan recipe, its networks, dataset and STFT loss (entry point ``timbre_gan``), and
watches timbre_gan runs for GAN trouble (loss spikes, a collapsed or exploding discriminator)."""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl

_WATCHES: dict[str, Any] = {}  # run_id -> GANWatch, for runs of this recipe


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("timbre_gan", "trainhub_timbre_gan.recipe:TimbreGANRecipe", config="trainhub_timbre_gan.config:TimbreGANConfig",
             description="audio timbre restoration GAN (residual-gated generator, multi-resolution spectrogram discriminators)")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("timbre-gan-generator", "trainhub_timbre_gan.model:Generator")
    register("timbre-gan-mrd", "trainhub_timbre_gan.model:MultiResolutionDiscriminator")


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("timbre-restore", "trainhub_timbre_gan.data:TimbreRestoreDataset")


@hookimpl
def trainhub_register_losses(register: Callable[..., None]) -> None:
    register("mrstft", "trainhub_timbre_gan.losses:MultiResolutionSTFTLoss")


@hookimpl
def trainhub_run_start(run: Any) -> None:
    from trainhub_timbre_gan.monitor import GANWatch
    from trainhub_timbre_gan.recipe import TimbreGANRecipe

    if isinstance(run.recipe, TimbreGANRecipe):
        g = run.config.gan
        _WATCHES[run.run_id] = GANWatch(g.spike_factor, g.collapse_eps, g.collapse_patience, g.explode_limit)


@hookimpl
def trainhub_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    watch = _WATCHES.get(run.run_id)
    if watch is None or not metrics:
        return
    for kind, message, data in watch.check(step, metrics):
        run.warn(kind, message, data)


@hookimpl
def trainhub_run_end(run: Any, status: str) -> None:
    _WATCHES.pop(run.run_id, None)
