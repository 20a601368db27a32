"""Spike-camera streams: the ``.dat`` file format, voxelisation into temporal bins, integrate-and-fire.

The ``.dat`` format read and written here (the one spike-camera datasets use)::

    a file = T frames back to back, no header
    a frame = H * W / 8 bytes ("bitpacked") or H * W bytes ("bytes": one 0/1 byte per pixel)
    bitpacked: byte k of a frame holds pixels 8k .. 8k+7 in row-major order, least significant bit first
               (numpy ``unpackbits(..., bitorder="little")``)
    rows are stored bottom-up (the sensor's readout order); ``flipud=True`` turns them top-down

``T`` follows from the file size. ``H * W`` must be a multiple of 8 for the bitpacked layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np

SpikeFormat = Literal["bitpacked", "bytes"]


def frame_bytes(height: int, width: int, fmt: SpikeFormat = "bitpacked") -> int:
    """Bytes of one spike frame."""
    if fmt == "bytes":
        return height * width
    if (height * width) % 8:
        raise ValueError(f"bitpacked spike frames need height*width divisible by 8, got {height}x{width}")
    return height * width // 8


def decode(raw: np.ndarray, height: int, width: int, fmt: SpikeFormat = "bitpacked", flipud: bool = True) -> np.ndarray:
    """uint8 file contents -> (T, H, W) uint8 array of 0/1."""
    fb = frame_bytes(height, width, fmt)
    if raw.size % fb:
        raise ValueError(f"{raw.size} bytes is not a whole number of {height}x{width} {fmt} spike frames ({fb} bytes each)")
    t = raw.size // fb
    if fmt == "bytes":
        spikes = (raw.reshape(t, height, width) != 0).astype(np.uint8)
    else:
        spikes = np.unpackbits(raw.reshape(t, fb), axis=1, bitorder="little").reshape(t, height, width)
    return np.ascontiguousarray(spikes[:, ::-1]) if flipud else spikes


def encode(spikes: np.ndarray, fmt: SpikeFormat = "bitpacked", flipud: bool = True) -> bytes:
    """(T, H, W) 0/1 array -> file contents (the inverse of :func:`decode`)."""
    s = (np.asarray(spikes) != 0).astype(np.uint8)
    if flipud:
        s = s[:, ::-1]
    t, h, w = s.shape
    if fmt == "bytes":
        return np.ascontiguousarray(s).tobytes()
    frame_bytes(h, w, fmt)
    return np.packbits(s.reshape(t, h * w), axis=1, bitorder="little").tobytes()


def read_dat(path: str | Path, height: int, width: int, fmt: SpikeFormat = "bitpacked", flipud: bool = True) -> np.ndarray:
    """Read a spike ``.dat`` file into (T, H, W) uint8 0/1; errors name the file."""
    raw = np.fromfile(path, dtype=np.uint8)
    try:
        return decode(raw, height, width, fmt, flipud)
    except ValueError as e:
        raise ValueError(f"{path}: {e} (check data.spike_height/spike_width/spike_format)") from None


def write_dat(path: str | Path, spikes: np.ndarray, fmt: SpikeFormat = "bitpacked", flipud: bool = True) -> None:
    Path(path).write_bytes(encode(spikes, fmt, flipud))


def bin_edges(frames: int, bins: int) -> np.ndarray:
    """First spike frame of each bin: frame ``t`` belongs to the last bin ``b`` with ``b*T//bins <= t``."""
    if not 1 <= bins <= frames:
        raise ValueError(f"cannot split {frames} spike frames into {bins} bins (need 1 <= bins <= frames)")
    return (np.arange(bins) * frames) // bins


def voxelize(spikes: np.ndarray, bins: int) -> np.ndarray:
    """(T, H, W) spikes -> (bins, H, W) float32 firing rates.

    Bin ``b`` covers frames ``[b*T//bins, (b+1)*T//bins)``; its value is the fraction of those frames
    in which the pixel fired (so values lie in [0, 1] whatever ``T`` and ``bins`` are).
    """
    t = spikes.shape[0]
    edges = bin_edges(t, bins)
    counts = np.diff(np.append(edges, t)).astype(np.float32)
    sums = np.add.reduceat(spikes.astype(np.float32), edges, axis=0)
    return sums / counts[:, None, None]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (...) luma (ITU-R BT.601 weights), the intensity a spike pixel integrates."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)


def integrate_and_fire(
    intensity: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    noise_std: float = 0.0,
    state: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spike-camera model: (T, H, W) intensities in [0, 1] -> ((T, H, W) uint8 spikes, accumulator state).

    Each pixel adds its intensity (plus Gaussian noise of ``noise_std`` when set) to an accumulator that
    starts uniform in ``[0, threshold)``; when the accumulator reaches ``threshold`` the pixel fires once
    and the threshold is subtracted. Pass the returned state back in to continue a stream.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    t, h, w = intensity.shape
    acc = rng.uniform(0.0, threshold, size=(h, w)) if state is None else state.astype(np.float64, copy=True)
    out = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        acc += intensity[i]
        if noise_std > 0:
            acc += rng.normal(0.0, noise_std, size=(h, w))
        fire = acc >= threshold
        acc[fire] -= threshold
        out[i] = fire
    return out, acc
