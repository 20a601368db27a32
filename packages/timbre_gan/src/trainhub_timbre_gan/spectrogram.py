"""Spectrogram pictures (numpy + PIL, no plotting library): stacked panels with labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# anchor colours of a dark-to-bright map (black, purple, red, orange, yellow, white): interpolated per pixel
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164], [255, 255, 255]], dtype=np.float64)


def colorize(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (..., 3)."""
    pos = np.clip(x, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    return (_ANCHORS[i] * (1.0 - frac) + _ANCHORS[i + 1] * frac).round().astype(np.uint8)


def spectrogram_db(wave: torch.Tensor, n_fft: int = 512, hop: int = 64) -> np.ndarray:
    """``(T,)`` -> ``(freq, frames)`` power in dB."""
    w = wave.detach().float().cpu().reshape(-1)
    spec = torch.stft(w, n_fft, hop, n_fft, torch.hann_window(n_fft), center=True, return_complex=True)
    return (10.0 * torch.log10(spec.abs().pow(2).clamp_min(1e-10))).numpy()


def spectrogram_panels(waves: Sequence[torch.Tensor], labels: Sequence[str], sample_rate: int, db_range: float = 80.0,
                       n_fft: int = 512, width: int = 640) -> np.ndarray:
    """One panel per wave (low frequencies at the bottom, about ``width`` frames wide), shared dB scale (top =
    loudest bin of all), each labelled; returns ``H x W x 3`` uint8."""
    from PIL import Image, ImageDraw

    hop = max(1, min(n_fft // 2, waves[0].numel() // width))
    specs = [spectrogram_db(w, n_fft, hop) for w in waves]
    top = max(float(s.max()) for s in specs)
    panels = []
    for spec, label in zip(specs, labels):
        img = colorize((spec[::-1] - (top - db_range)) / db_range)
        pil = Image.fromarray(np.ascontiguousarray(img))
        draw = ImageDraw.Draw(pil)
        draw.text((4, 2), f"{label}  (0-{sample_rate // 2000} kHz)", fill=(255, 255, 255))
        panels.append(np.asarray(pil))
        panels.append(np.full((3, img.shape[1], 3), 255, dtype=np.uint8))
    return np.concatenate(panels[:-1], axis=0)
