"""Image datasets for DiT: the embedded procedural classes, a folder of images, class-per-subfolder, COCO.

Every dataset returns ``{"x": (3, S, S) float in [-1, 1], "y": int64 label}``. Random horizontal flips draw from
the global torch RNG, which the trainer reseeds per batch position, so resumed runs see the same flips. Sample
tables are numpy arrays (no per-item Python objects copied into every loader worker).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainhub import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
EMBEDDED_CLASSES = ("red disc", "green square", "blue stripes", "yellow ring")


# ---- embedded: procedural class-conditional images ------------------------------------------------

class EmbeddedShapes(Dataset):
    """Four visually distinct classes drawn on the fly (deterministic per index and split):
    0 red disc, 1 green square, 2 blue horizontal stripes, 3 yellow ring; position, size, colour and
    background vary. Labels cycle 0, 1, 2, 3, ..."""

    classes = EMBEDDED_CLASSES

    def __init__(self, num_samples: int, image_size: int = 32, split: str = "train", hflip: bool = True, seed: int = 0) -> None:
        self.num_samples, self.size, self.hflip = num_samples, image_size, hflip
        self.seed = seed * 2 + (0 if split == "train" else 1)

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """(S, S, 3) float32 image in [0, 1] and its label."""
        label = index % len(self.classes)
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        bg = rng.uniform(0.05, 0.3) * np.ones(3, np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
        img = np.broadcast_to(bg, (s, s, 3)).copy()
        jitter = rng.uniform(-0.1, 0.1, 3).astype(np.float32)
        cx, cy = rng.uniform(0.35, 0.65, 2) * s
        if label == 0:  # red disc
            r = rng.uniform(0.18, 0.3) * s
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            img[mask] = np.array([0.9, 0.15, 0.12], np.float32) + jitter
        elif label == 1:  # green square
            h = rng.uniform(0.15, 0.27) * s
            mask = (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
            img[mask] = np.array([0.15, 0.85, 0.2], np.float32) + jitter
        elif label == 2:  # blue stripes over the whole image
            period = rng.uniform(0.18, 0.28) * s
            mask = np.sin(2 * math.pi * (yy + rng.uniform(0, period)) / period) > 0
            img[mask] = np.array([0.15, 0.3, 0.95], np.float32) + jitter
        else:  # yellow ring
            r = rng.uniform(0.22, 0.32) * s
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            mask = np.abs(d - r) <= 0.07 * s
            img[mask] = np.array([0.95, 0.85, 0.1], np.float32) + jitter
        img += rng.normal(0, 0.02, img.shape).astype(np.float32)
        return np.clip(img, 0, 1), label

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, label = self.render(index)
        x = torch.from_numpy(img).permute(2, 0, 1) * 2 - 1
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return {"x": x.contiguous(), "y": torch.tensor(label, dtype=torch.long)}


# ---- image files -------------------------------------------------------------------------------------

def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def center_crop_image(img: Image.Image, size: int) -> Image.Image:
    """ADM-style centre crop: halve with a box filter while the short side is >= 2x ``size``, resize the short side
    to ``size`` (bicubic), crop the centre square."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(v // 2 for v in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(v * scale) for v in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | Path, size: int, center_crop: bool = True) -> torch.Tensor:
    """Read an image as (3, size, size) float in [-1, 1] (centre crop, or a plain resize that ignores aspect)."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__})") from None
    img = center_crop_image(img, size) if center_crop else img.resize((size, size), resample=Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def subsample(n: int, num_samples: Optional[int]) -> np.ndarray:
    """Indices of a fixed random subset of size ``num_samples`` (all when None), in order."""
    if num_samples is None or num_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:num_samples])


class ImageFiles(Dataset):
    """Images with labels: the tables are numpy arrays; ``classes`` names the labels."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], classes: Sequence[str], image_size: int,
                 center_crop: bool = True, hflip: bool = True, num_samples: Optional[int] = None,
                 on_error: str = "skip") -> None:
        keep = subsample(len(paths), num_samples)
        self.paths = np.array([str(p) for p in paths], dtype=np.str_)[keep] if len(paths) else np.array([], dtype=np.str_)
        self.labels = np.asarray(labels, dtype=np.int64)[keep] if len(paths) else np.array([], dtype=np.int64)
        self.classes = tuple(classes)
        self.size, self.center_crop, self.hflip, self.on_error = image_size, center_crop, hflip, on_error
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The image at ``index``; an unreadable one stops with a one-line error (``on_error="stop"``) or is replaced
        by the next readable image with a warning on stderr (``"skip"``, the same replacement every time)."""
        for k in range(len(self.paths)):
            i = (index + k) % len(self.paths)
            try:
                x = load_image(self.paths[i], self.size, self.center_crop)
            except UserError as e:
                if self.on_error == "stop":
                    raise
                if i not in self._warned:
                    self._warned.add(i)
                    print(f"trainhub-dit: skipping an unreadable image ({e}); data.on_error=stop makes this an error",
                          file=sys.stderr, flush=True)
                continue
            if self.hflip and torch.rand(()) < 0.5:
                x = x.flip(-1)
            return {"x": x, "y": torch.tensor(int(self.labels[i]), dtype=torch.long)}
        raise UserError("none of the dataset's images can be read")


def custom_folder(root: Path, **kw: object) -> ImageFiles:
    """Every image under ``root`` (recursively), unconditional: label 0."""
    paths = list_images(root)
    return ImageFiles(paths, [0] * len(paths), ["image"], **kw)  # type: ignore[arg-type]


def image_folder(root: Path, **kw: object) -> ImageFiles:
    """One class per subfolder of ``root`` (sorted names -> labels 0..K-1), images found recursively inside."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = list_images(root / c)
        paths += found
        labels += [i] * len(found)
    return ImageFiles(paths, labels, classes, **kw)  # type: ignore[arg-type]


def coco(images: Path, annotations: Path, labels: str = "category", **kw: object) -> ImageFiles:
    """COCO-format annotations: with ``labels="category"`` each image takes the category of its largest annotation
    (categories renumbered 0..K-1 by id; images without annotations are left out); ``"none"``: every image, label 0."""
    try:
        meta = json.loads(Path(annotations).read_text())
        imgs, cats = meta["images"], meta.get("categories", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"data.annotations={annotations}: not a readable COCO annotation file ({type(e).__name__}: {e})") from None
    if labels == "none":
        paths = [images / im["file_name"] for im in imgs]
        return ImageFiles(paths, [0] * len(paths), ["image"], **kw)  # type: ignore[arg-type]
    cat_ids = sorted(c["id"] for c in cats)
    index = {cid: i for i, cid in enumerate(cat_ids)}
    names = {c["id"]: c.get("name", str(c["id"])) for c in cats}
    best: dict[int, tuple[float, int]] = {}
    for a in meta.get("annotations", []):
        area = float(a.get("area", 0.0))
        if a["category_id"] in index and (a["image_id"] not in best or area > best[a["image_id"]][0]):
            best[a["image_id"]] = (area, index[a["category_id"]])
    kept = [im for im in imgs if im["id"] in best]
    return ImageFiles([images / im["file_name"] for im in kept], [best[im["id"]][1] for im in kept],
                      [names[c] for c in cat_ids], **kw)  # type: ignore[arg-type]
