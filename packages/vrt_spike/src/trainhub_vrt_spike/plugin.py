"""Registers the vrt_spike recipe, model and dataset with trainhub (entry point ``vrt_spike``), and prints
memory lines during vrt_spike runs (lifecycle hooks; other recipes' runs are left alone)."""

from __future__ import annotations

from typing import Any, Callable

from trainhub import hookimpl


@hookimpl
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    register("vrt_spike", "trainhub_vrt_spike.recipe:VRTSpikeRecipe", config="trainhub_vrt_spike.config:VRTSpikeConfig",
             description="spike-guided video deblurring with a VRT-style transformer (simulated spike data by default)")


@hookimpl
def trainhub_register_models(register: Callable[..., None]) -> None:
    register("vrt-spike", "trainhub_vrt_spike.model:VRTSpike")


@hookimpl
def trainhub_register_datasets(register: Callable[..., None]) -> None:
    register("gopro-spike", "trainhub_vrt_spike.data:SpikeDeblurDataset")


@hookimpl
def trainhub_run_start(run: Any) -> None:
    if getattr(run.recipe, "name", None) == "vrt_spike":
        from trainhub_vrt_spike import monitor
        from trainhub_vrt_spike.recipe import describe_loader

        monitor.emit([describe_loader(run.config)])
        if monitor.every(run):
            monitor.report(run.step)


@hookimpl
def trainhub_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    if getattr(run.recipe, "name", None) != "vrt_spike":
        return
    from trainhub_vrt_spike import monitor

    n = monitor.every(run)
    if n and step % n == 0:
        monitor.report(step)
