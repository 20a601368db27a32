"""``trainhub doctor``: what this machine offers for training, and what would go wrong."""

from __future__ import annotations

import os
import platform
import shutil

import psutil
import torch


def report(dataset: str | None = None, cache_gb: float = 0.0, num_workers: int | None = None) -> tuple[list[str], bool]:
    ok = True
    lines = [f"python   {platform.python_version()} ({platform.machine()})", f"torch    {torch.__version__}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}   {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
                         f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        lines.append("cuda     not available (training runs on CPU" + (" or MPS)" if torch.backends.mps.is_available() else ")"))
    vm = psutil.virtual_memory()
    lines.append(f"memory   {vm.total / 2**30:.1f} GiB total, {vm.available / 2**30:.1f} GiB available ({vm.percent:.0f}% used)")
    lines.append(f"cpus     {os.cpu_count()}")
    disk = shutil.disk_usage(os.getcwd())
    lines.append(f"disk     {disk.free / 2**30:.1f} GiB free in {os.getcwd()}")
    if disk.free < 2 * 2**30:
        lines.append("WARNING  less than 2 GiB free: checkpoints may fail to save")
        ok = False
    shm = "/dev/shm"
    if os.path.isdir(shm):
        lines.append(f"shm      {shutil.disk_usage(shm).total / 2**30:.1f} GiB at /dev/shm (DataLoader workers share batches through it)")
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    for name, info in sorted(plugins.info.items()):
        lines.append(f"plugin   {name} ({info.distribution} {info.version}): {', '.join(f'{k}={len(v)}' for k, v in info.registered.items())}")
    for name, err in sorted(plugins.failed.items()):
        lines.append(f"FAILED   plugin {name}: {err}")
        ok = False
    if dataset and not os.path.isdir(dataset):
        from trainhub.errors import UserError

        raise UserError(f"--dataset {dataset} is not a folder")
    from trainhub.memory import doctor_report

    lines += doctor_report(dataset, cache_gb, num_workers)
    return lines, ok
