"""Spectrogram pictures (numpy + PIL, no plotting library): one labelled grid, an example per row,
degraded | restored | clean side by side."""

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


def spectrogram_tiles(waves: Sequence[torch.Tensor], db_range: float = 80.0, n_fft: int = 512, width: int = 320) -> list[np.ndarray]:
    """One colour spectrogram per wave (low frequencies at the bottom, about ``width`` frames wide) on a shared dB
    scale (top = the loudest bin of them all, ``db_range`` dB down to black): ``freq x frames x 3`` uint8 each."""
    hop = max(1, min(n_fft // 2, waves[0].numel() // width))
    specs = [spectrogram_db(w, n_fft, hop) for w in waves]
    top = max(float(s.max()) for s in specs)
    return [colorize((spec[::-1] - (top - db_range)) / db_range) for spec in specs]


def spectrogram_grid(rows: Sequence[Sequence[torch.Tensor]], col_titles: Sequence[str], row_titles: Sequence[str],
                     db_range: float = 80.0, n_fft: int = 512) -> np.ndarray:
    """Rows of waves (e.g. degraded, restored, clean of one example) as one labelled picture: column titles above,
    row titles on the left, each row on its own shared dB scale. Returns ``H x W x 3`` uint8."""
    from trainhub.kit.media import labelled_grid

    tiles = [torch.from_numpy(np.ascontiguousarray(t)).permute(2, 0, 1).float() / 255.0
             for row in rows for t in spectrogram_tiles(row, db_range, n_fft)]
    return labelled_grid(tiles, ncol=len(rows[0]), col_titles=col_titles, row_titles=row_titles, value_range=(0.0, 1.0))
