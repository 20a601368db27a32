"""What a logging step records besides the loss terms: lr, step and data time, throughput, FLOPs and MFU, and the
system readings (with the >90% memory warning)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from trainhub.observe.system import MemoryWatchdog, system_metrics
from trainhub.training import distributed as dist
from trainhub.training import flops


class StepMetrics:
    """Turns the loss terms summed over a logging window into the ``train`` record of metrics.jsonl."""

    def __init__(self, device: torch.device, precision: str, world: int, warn: Callable[..., None]) -> None:
        self.device, self.precision, self.world, self.warn = device, precision, world, warn
        self.peak: Optional[tuple[float, str]] = None  # the device's FLOP/s for MFU, looked up once
        self.watchdog = MemoryWatchdog()

    def __call__(self, window: dict[str, torch.Tensor], n: int, wall: float, data: float,
                 optimizers: dict[str, torch.optim.Optimizer], samples_per_step: int,
                 flops_per_sample: Optional[float], extra: dict[str, float]) -> dict[str, Any]:
        """``window``: loss terms summed over ``n`` steps that took ``wall`` seconds, ``data`` of them waiting for
        batches; averaged over the ranks."""
        out: dict[str, Any] = {k: float(v.item()) / n for k, v in window.items()}  # the window's one host sync
        if self.world > 1:
            out = dist.all_reduce_mean(out, self.device)
        for name, o in optimizers.items():
            out["lr" if len(optimizers) == 1 else f"lr_{name}"] = o.param_groups[0]["lr"]
        out["step_time"] = step_time = wall / max(n, 1)
        out["data_time"] = data / max(n, 1)
        out["samples_per_sec"] = samples_per_step / max(step_time, 1e-9)
        if flops_per_sample:
            out["flops_per_sample"] = flops_per_sample
            out["tflops"] = flops_per_sample * out["samples_per_sec"] / 1e12
            if self.peak is None and self.device.type == "cuda":
                self.peak = flops.device_peak(self.device, self.precision)
            if self.peak:
                out["mfu"] = flops.mfu(flops_per_sample, out["samples_per_sec"], self.peak[0] * self.world)
        out.update(extra)
        sysm = system_metrics(self.device)
        out.update(sysm)
        if dist.is_main() and self.watchdog.check(sysm["sys_mem_percent"]):
            self.warn("memory", f"system memory at {sysm['sys_mem_percent']:.1f}%: lower loader.num_workers, the batch "
                      "size or dataset caches", {"sys_mem_percent": sysm["sys_mem_percent"]})
        return out
