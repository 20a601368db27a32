"""FLOPs per sample (counted once with torch.utils.flop_counter) and MFU against the device's peak."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# Dense peak FLOP/s by device name fragment and precision (vendor datasheets, no sparsity).
# "fp32" on Ampere/Hopper means TF32 tensor cores, which the trainer enables for fp32 matmuls.
PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 35e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
}


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of everything ``fn`` runs (mm, bmm, conv, SDPA forward and backward; elementwise ops not counted)."""
    counter = StepFlops()
    with counter.measure():
        fn()
    return counter.total


class StepFlops:
    """The model FLOPs of one real optimizer step, counted as it runs: ``with counter.measure():`` around each
    micro-batch's forward and backward, so there is no copy of the models and no extra step.

    The count uses torch's FLOP formulas (``torch.utils.flop_counter``) in a dispatch mode that only runs each op and
    adds its formula: no module tracking and no decomposition of ops without a formula, which ``FlopCounterMode``
    does (decomposed ops run other kernels, so a counted step could differ from an uncounted one, and its
    bookkeeping made DiT-S/4's counted step 1.44x an uncounted one where this costs about 1.09x on a CPU, of which
    1.075x is any Python dispatch mode's own cost per op). The optimizer step,
    clipping and EMA stay outside: they are not model FLOPs. The trainer counts the first step of a run that
    starts at step 0, unless the models are compiled (a compiled module runs eagerly under a dispatch mode); a
    resumed run takes the count from its checkpoint."""

    def __init__(self) -> None:
        self.total = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        mode = _CountingMode()
        with mode:
            yield
        self.total += mode.total


def _shapes(x: Any) -> Any:
    """Tensors (also inside lists and tuples) replaced by their shapes: what torch's formulas take."""
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, list):
        return [_shapes(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_shapes(v) for v in x)
    return x


class _CountingMode(TorchDispatchMode):
    """Runs every op as it is and adds its FLOP formula, where torch has one."""

    _formulas: dict[Any, Optional[tuple[Callable[..., int], bool]]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            formula = self._formulas[func]
        except KeyError:
            formula = self._formulas[func] = _formula(func)
        if formula is not None:
            f, on_shapes = formula
            if on_shapes:
                self.total += int(f(*_shapes(args), out_shape=_shapes(out), **_shapes(kwargs)))
            else:
                self.total += int(f(*args, **kwargs, out_val=out))
        return out


def _formula(func: Any) -> Optional[tuple[Callable[..., int], bool]]:
    """torch's formula for ``func`` and whether it takes shapes. Registered formulas are wrapped to map tensors to
    shapes with a pytree walk, which cost about a third of counting's overhead; the function it wraps is called
    with shapes made here instead."""
    f = flop_registry.get(func._overloadpacket)
    if f is None:
        return None
    inner = getattr(f, "__wrapped__", None)
    return (inner, True) if inner is not None else (f, False)


def measured_matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192, iters: int = 10) -> float:
    """FLOP/s of an n^3 matmul on ``device`` (the fallback peak for devices not in :data:`PEAKS`)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def device_peak(device: torch.device, precision: str) -> Optional[tuple[float, str]]:
    """(peak FLOP/s, where it comes from) for a CUDA device, or None on CPU/MPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAKS.items():
        if key in name and precision in table:
            return table[precision], f"{key} datasheet {precision}"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measured_matmul_peak(device, dtype), f"measured {precision} matmul on {name}"


def mfu(flops_per_sample: float, samples_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak (all ranks: pass the global rate)."""
    return flops_per_sample * samples_per_sec / peak if peak > 0 else 0.0
