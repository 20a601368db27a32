"""torch.distributed glue: process-group set-up from torchrun's environment, rank helpers, reductions."""

from __future__ import annotations

import atexit
import os
import sys
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn


def is_initialized() -> bool:
    """A process group is up (torchrun started this process)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Started by torchrun (``--nproc-per-node 1`` included: its one process still joins a group, so NCCL and FSDP
    run as they would with more), or by another launcher that describes several processes."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    return int(os.environ["WORLD_SIZE"]) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


_joined = False  # this process joined a process group (its backend's threads may outlive it: see end_process)


def joined() -> bool:
    return _joined


def init(device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo otherwise). No-op for one process."""
    global _joined
    if not launched_by_torchrun() or dist.is_initialized():
        return
    _joined = True
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """End a process that joined a process group: destroy the group, run the ``atexit`` handlers and flush the
    output while the interpreter is whole, then leave without tearing the interpreter and libtorch down.

    Why: once a DistributedDataParallel has been built on a gloo group, torch keeps the group's backend alive
    after ``destroy_process_group()`` and after the DDP module is gone (its two ``pt_gloo_runloop`` worker threads
    and the ``gloo_tcp_loop`` thread were still running at exit, in trainhub and in a 10-line DDP script alike),
    so a normal exit finalizes the interpreter and runs libtorch's static destructors with those threads live.
    That teardown race is what aborted finished workers now and then ("terminate called without an active
    exception", SIGABRT). Nothing is lost by skipping it: checkpoints, metrics and logs are closed and synced
    by then, and Python's exit handlers have run."""
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def mean_where_reported(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average each key over the ranks that report it, so every rank returns the same keys: an eval metric that only
    the main rank computes (from its samples) keeps the main rank's value, one every rank computes is their mean."""
    if world_size() == 1:
        return values
    reported: list[Any] = [None] * world_size()
    dist.all_gather_object(reported, sorted(values))
    keys = sorted(set().union(*reported))
    if not keys:
        return {}
    t = torch.tensor([[float(values.get(k, 0.0)), float(k in values)] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: total / count for k, (total, count) in zip(keys, t.tolist())}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_min_int(value: int, device: torch.device) -> int:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def any_true(flag: bool, device: torch.device) -> bool:
    if world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def unwrap(module: nn.Module) -> nn.Module:
    """Strip DDP and torch.compile wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module
