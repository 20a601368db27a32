"""Images and audio a run writes for people to look at or listen to (PNG grids, wav)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass
class Media:
    kind: str  # "image" or "audio"
    name: str
    path: Optional[Path]
    data: np.ndarray  # image: HxWxC uint8; audio: float32 (samples,) or (channels, samples)
    sample_rate: int = 0
    caption: str = ""


def to_uint8_image(x: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """CxHxW (or HxW) float tensor in ``value_range`` -> HxWxC uint8."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    lo, hi = value_range
    x = (np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] in (1, 3, 4) and x.ndim == 3:
        x = np.transpose(x, (1, 2, 0))
    return x


def make_grid(images: torch.Tensor | Sequence[torch.Tensor], nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile N x C x H x W images into one C x H' x W' image (rows of ``nrow``)."""
    if not isinstance(images, torch.Tensor):
        images = torch.stack(list(images))
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value, dtype=images.dtype)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write HxWxC uint8 (or HxW) atomically as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_wav(path: str | Path, wave: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write float audio in [-1, 1] as 16-bit PCM wav, atomically (stdlib ``wave``, no extra dependency)."""
    import wave as wavmod

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float32))  # channels x samples
    pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype("<i2").T.copy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with wavmod.open(str(tmp), "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    os.replace(tmp, path)
    return path


class MediaWriter:
    """Collects media during an eval: writes files under ``<run>/samples/step_<N>/`` on the main rank."""

    def __init__(self, root: Optional[Path], step: int, enabled: bool = True) -> None:
        self.dir = (root / f"step_{step:07d}") if root is not None else None
        self.enabled = enabled and root is not None
        self.items: list[Media] = []

    def image(self, name: str, image: torch.Tensor | np.ndarray, caption: str = "", value_range: tuple[float, float] = (-1.0, 1.0)) -> Optional[Path]:
        """Save an image (CxHxW float in ``value_range``, or HxWxC uint8) as ``<name>.png``."""
        if not self.enabled:
            return None
        arr = image if (isinstance(image, np.ndarray) and image.dtype == np.uint8) else to_uint8_image(image, value_range)
        path = save_png(self.dir / f"{name}.png", arr)
        self.items.append(Media("image", name, path, arr, caption=caption))
        return path

    def audio(self, name: str, wave: torch.Tensor | np.ndarray, sample_rate: int, caption: str = "") -> Optional[Path]:
        if not self.enabled:
            return None
        path = save_wav(self.dir / f"{name}.wav", wave, sample_rate)
        arr = wave.detach().float().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)
        self.items.append(Media("audio", name, path, arr, sample_rate=sample_rate, caption=caption))
        return path
