"""The seeded degradation chain that damages timbre: EQ, band limiting, compression, clipping, noise.

:func:`sample_chain` draws the parameters of every stage from a numpy Generator into a JSON-able list;
:func:`apply_chain` applies such a list with torchaudio filters. Both are deterministic, so a segment's
degradation depends only on the seed it was given (see :func:`segment_rng`), never on which process or
shard made it.
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torchaudio.functional as AF

if TYPE_CHECKING:
    from trainhub_timbre_gan.config import DegradeConfig

STAGES = ("eq", "bandlimit", "compress", "clip", "noise")


def segment_rng(seed: int, key: str, segment: int) -> np.random.Generator:
    """The random stream of one segment, from the dataset seed, the source's key and the segment index."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8")), segment])


def sample_chain(cfg: "DegradeConfig", sample_rate: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Draw which stages run (each with its probability; at least one) and their parameters."""
    nyquist = sample_rate / 2.0
    chosen = [s for s in STAGES if rng.random() < getattr(cfg, f"{s}_prob")]
    if not chosen:
        chosen = [STAGES[int(rng.integers(0, len(STAGES)))]]
    chain: list[dict[str, Any]] = []
    for stage in STAGES:
        if stage not in chosen:
            continue
        if stage == "eq":
            g = cfg.eq_max_gain_db
            bands = []
            for _ in range(int(rng.integers(1, cfg.eq_bands + 1))):
                freq = math.exp(rng.uniform(math.log(80.0), math.log(0.8 * nyquist)))
                bands.append({"freq": freq, "gain_db": float(rng.uniform(-g, g)), "q": math.exp(rng.uniform(math.log(0.5), math.log(4.0)))})
            chain.append({"op": "eq", "bands": bands, "low_shelf_db": float(rng.uniform(-g, g)),
                          "high_shelf_db": float(rng.uniform(-g, g))})
        elif stage == "bandlimit":
            lo, hi = cfg.cutoff_hz
            hi = min(hi, nyquist - 500.0)
            steps = np.arange(math.ceil(lo / 500.0) * 500.0, hi + 1.0, 500.0)
            if len(steps):  # cutoffs on a 500 Hz grid keep the resampling ratio small
                chain.append({"op": "bandlimit", "cutoff_hz": float(rng.choice(steps))})
        elif stage == "compress":
            chain.append({"op": "compress", "threshold_db": float(rng.uniform(*cfg.compress_threshold_db)),
                          "ratio": float(rng.uniform(*cfg.compress_ratio)), "time_ms": float(rng.uniform(5.0, 50.0))})
        elif stage == "clip":
            chain.append({"op": "clip", "level": float(rng.uniform(*cfg.clip_level)), "soft": bool(rng.random() < 0.5)})
        else:
            chain.append({"op": "noise", "snr_db": float(rng.uniform(*cfg.snr_db)), "pink": bool(rng.random() < cfg.pink_prob),
                          "seed": int(rng.integers(0, 2**31 - 1))})
    return chain


def _headroom(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run a linear torchaudio biquad (which clamps its output to [-1, 1]) at a level where it cannot clip."""
    scale = 2.0 ** -math.ceil(math.log2(float(x.abs().max()) * 64.0 + 1e-12))
    return fn(x * scale) / scale


def _eq(x: torch.Tensor, sr: int, p: dict[str, Any]) -> torch.Tensor:
    for b in p["bands"]:
        x = _headroom(lambda v, b=b: AF.equalizer_biquad(v, sr, b["freq"], b["gain_db"], b["q"]), x)
    x = _headroom(lambda v: AF.bass_biquad(v, sr, p["low_shelf_db"], 150.0), x)
    return _headroom(lambda v: AF.treble_biquad(v, sr, p["high_shelf_db"], min(3000.0, 0.4 * sr)), x)


def _bandlimit(x: torch.Tensor, sr: int, p: dict[str, Any]) -> torch.Tensor:
    low_sr = int(2 * p["cutoff_hz"])
    y = AF.resample(AF.resample(x, sr, low_sr), low_sr, sr)
    n = x.shape[-1]
    return y[..., :n] if y.shape[-1] >= n else torch.nn.functional.pad(y, (0, n - y.shape[-1]))


def _compress(x: torch.Tensor, sr: int, p: dict[str, Any]) -> torch.Tensor:
    """Feed-forward RMS compressor: one-pole power envelope, gain above threshold by 1/ratio, peak make-up."""
    alpha = math.exp(-1.0 / (p["time_ms"] * 1e-3 * sr))
    a = torch.tensor([1.0, -alpha], dtype=x.dtype)
    b = torch.tensor([1.0 - alpha, 0.0], dtype=x.dtype)
    power = AF.lfilter(x * x, a, b, clamp=False)
    level_db = 10.0 * torch.log10(power.clamp_min(1e-10))
    gain_db = torch.clamp((p["threshold_db"] - level_db) * (1.0 - 1.0 / p["ratio"]), max=0.0)
    y = x * 10.0 ** (gain_db / 20.0)
    peak_in, peak_out = float(x.abs().max()), float(y.abs().max())
    return y * (peak_in / peak_out) if peak_out > 0 else y


def _clip(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    level = p["level"] * float(x.abs().max())
    if level <= 0:
        return x
    return level * torch.tanh(x / level) if p["soft"] else x.clamp(-level, level)


def _noise(x: torch.Tensor, sr: int, p: dict[str, Any]) -> torch.Tensor:
    g = np.random.default_rng(p["seed"])
    white = g.standard_normal(x.shape[-1])
    if p["pink"]:  # 1/f power: scale the spectrum by 1/sqrt(f)
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        white = np.fft.irfft(spec / np.sqrt(f), n=x.shape[-1])
    noise = torch.from_numpy(white).to(x.dtype)
    p_sig = float((x * x).mean())
    p_noise = float((noise * noise).mean())
    if p_sig <= 0 or p_noise <= 0:
        return x
    return x + noise * math.sqrt(p_sig / (p_noise * 10.0 ** (p["snr_db"] / 10.0)))


def apply_chain(x: torch.Tensor, sample_rate: int, chain: list[dict[str, Any]]) -> torch.Tensor:
    """Apply a chain from :func:`sample_chain` to a 1-D float waveform; returns a new tensor of the same length."""
    y = x.to(torch.float32).clone()
    for p in chain:
        op = p["op"]
        if op == "eq":
            y = _eq(y, sample_rate, p)
        elif op == "bandlimit":
            y = _bandlimit(y, sample_rate, p)
        elif op == "compress":
            y = _compress(y, sample_rate, p)
        elif op == "clip":
            y = _clip(y, p)
        elif op == "noise":
            y = _noise(y, sample_rate, p)
        else:
            raise ValueError(f"unknown degradation {op!r}; known: {', '.join(STAGES)}")
    return y


def degrade(x: torch.Tensor, sample_rate: int, cfg: "DegradeConfig", rng: np.random.Generator) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Sample a chain from ``rng`` and apply it: ``(degraded, chain)``."""
    chain = sample_chain(cfg, sample_rate, rng)
    return apply_chain(x, sample_rate, chain), chain
