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


def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def labelled_grid(images: torch.Tensor | Sequence[torch.Tensor], ncol: int, col_titles: Sequence[str] = (),
                  row_titles: Sequence[str] = (), value_range: tuple[float, float] = (-1.0, 1.0),
                  min_tile: int = 128, padding: int = 4) -> np.ndarray:
    """Tile N x C x H x W images row by row, ``ncol`` to a row, with column titles above and row titles on the left.

    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor with nearest-neighbour sampling, so a
    32 px sample is shown as crisp 128 px pixels instead of a blur or a speck. Returns H x W x 3 uint8 for
    :func:`save_png` or ``MediaWriter.image``.
    """
    from PIL import Image, ImageDraw

    if not isinstance(images, torch.Tensor):
        images = torch.stack(list(images))
    n, c, h, w = images.shape
    scale = max(1, -(-min_tile // max(h, w)))
    tiles = [to_uint8_image(x, value_range) for x in images]
    tiles = [np.repeat(t, 3, axis=2) if t.shape[2] == 1 else t[..., :3] for t in tiles]
    th, tw = h * scale, w * scale
    nrows = -(-n // ncol)
    font = _font(max(11, min(20, tw // 9)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(t: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), t, font=font)
        return box[2] - box[0], box[3] - box[1]

    top = (max(text_size(t)[1] for t in col_titles) + 2 * padding) if col_titles else 0
    left = (max(text_size(t)[0] for t in row_titles) + 2 * padding) if row_titles else 0
    width = left + ncol * (tw + padding) + padding
    height = top + nrows * (th + padding) + padding
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, ncol)
        big = Image.fromarray(tile).resize((tw, th), Image.NEAREST)
        canvas.paste(big, (left + padding + q * (tw + padding), top + padding + r * (th + padding)))
    for q, title in enumerate(col_titles[:ncol]):
        x0 = left + padding + q * (tw + padding)
        draw.text((x0 + (tw - text_size(title)[0]) // 2, padding), title, fill=(0, 0, 0), font=font)
    for r, title in enumerate(row_titles[:nrows]):
        y0 = top + padding + r * (th + padding)
        draw.text((padding, y0 + (th - text_size(title)[1]) // 2), title, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


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
