"""Devices and precision: which device and autocast dtype a run uses, moving batches there, and activation
checkpointing of a recipe's blocks."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Optional

import torch
from torch import nn

from trainhub.errors import UserError
from trainhub.training import distributed as dist


def select_device(name: str) -> torch.device:
    """``train.device``: auto (CUDA, then MPS, then CPU), or the one named (an error where it is missing)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is available; use auto or cpu")
        return torch.device("cuda", dist.local_rank())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device=mps but MPS is not available; use auto or cpu")
    return torch.device(name)


def select_precision(name: str, device: torch.device) -> str:
    """``train.precision``: auto is bf16 on CUDA where supported (fp16 with a grad scaler otherwise), fp32 elsewhere."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def amp_dtype(precision: str) -> Optional[torch.dtype]:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(batch: Any, device: torch.device, non_blocking: bool, channels_last: bool = False) -> Any:
    """Tensors of a batch (nested dicts, lists, tuples, named tuples) on ``device``; 4-d float ones channels-last
    when asked."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=non_blocking)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        out = [to_device(v, device, non_blocking, channels_last) for v in batch]
        return type(batch)(out) if not hasattr(batch, "_fields") else type(batch)(*out)
    return batch


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in backward instead of storing them (less memory, ~20% slower)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward  # type: ignore[method-assign]


def set_cpu_threads(setting: int | str, num_workers: int | str, local_world_size: int) -> int:
    """Torch's intra-op threads for a run on the CPU (``train.cpu_threads``): a 2-core machine with torch's default 2
    threads plus a loader worker ran a DiT step 8-15x slower under load than with one thread. An explicit
    OMP_NUM_THREADS is the user's choice and stays."""
    from trainhub.training.data import auto_workers, cpu_threads

    if setting == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        workers = auto_workers(local_world_size, cpu_training=True) if num_workers == "auto" else int(num_workers)
        setting = cpu_threads(local_world_size, workers)
    torch.set_num_threads(int(setting))
    return int(setting)
