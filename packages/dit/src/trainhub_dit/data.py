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
EMBEDDED_CLASSES = ("stripes", "square", "disc", "cross", "ring", "triangle")


# ---- embedded: procedural class-conditional images ------------------------------------------------

def _random_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) RGB drawn independently of the class: a saturated bright colour of any hue on a dark
    one of any hue, so that only the shape tells the classes apart."""

    def hsv(h: float, s: float, v: float) -> np.ndarray:
        k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
        return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)

    fg = hsv(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0))
    bg = hsv(rng.uniform(), rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.3))
    return fg, bg


class EmbeddedShapes(Dataset):
    """Procedural classes that differ by shape alone (deterministic per index and split): 0 horizontal stripes,
    1 square, 2 disc, 3 cross, 4 ring, 5 triangle (roughly the order in which a small DiT learns them, so that
    ``num_classes=2`` or 3 keeps the easiest). Each image draws its colours (a bright foreground on a dark
    background, any hue), position and size at random, independently of the class, so colour does not give the class
    away. Edges are anti-aliased (4x4 supersampling). Labels cycle 0, 1, ..., ``num_classes`` - 1."""

    classes = EMBEDDED_CLASSES

    def __init__(self, num_samples: int, image_size: int = 32, split: str = "train", hflip: bool = True, seed: int = 0,
                 num_classes: Optional[int] = None) -> None:
        k = len(EMBEDDED_CLASSES) if num_classes is None else num_classes
        if not 1 <= k <= len(EMBEDDED_CLASSES):
            raise UserError(f"the embedded data has {len(EMBEDDED_CLASSES)} classes ({', '.join(EMBEDDED_CLASSES)}); "
                            f"model.num_classes={k} must be 1..{len(EMBEDDED_CLASSES)}")
        self.classes = EMBEDDED_CLASSES[:k]
        self.num_samples, self.size, self.hflip = num_samples, image_size, hflip
        self.seed = seed * 2 + (0 if split == "train" else 1)

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[np.ndarray, int]:
        """(S, S, 3) float32 image in [0, 1] and its label."""
        label = index % len(self.classes)
        rng = np.random.default_rng([self.seed, index])
        s, ss = self.size, 4  # supersampling factor
        yy, xx = (np.mgrid[0 : s * ss, 0 : s * ss].astype(np.float32) + 0.5) / (s * ss)  # coordinates in [0, 1]
        fg, bg = _random_colours(rng)
        cx, cy = rng.uniform(0.46, 0.54, 2)  # near the middle: a tiny model learns where a shape is quickly
        r = rng.uniform(0.26, 0.32)  # half the shape's extent
        dx, dy = xx - cx, yy - cy
        name = self.classes[label]
        if name == "disc":
            mask = dx**2 + dy**2 <= r**2
        elif name == "square":
            h = r * 0.85
            mask = (np.abs(dx) <= h) & (np.abs(dy) <= h)
        elif name == "triangle":  # apex up, base down: inside the base and the two slanted sides
            mask = (dy <= 0.8 * r) & (2 * np.abs(dx) <= 1.1 * (dy + r))
        elif name == "ring":
            d = np.sqrt(dx**2 + dy**2)
            mask = np.abs(d - 0.8 * r) <= 0.2 * r + 0.02
        elif name == "cross":
            w = 0.3 * r
            mask = ((np.abs(dx) <= r) & (np.abs(dy) <= w)) | ((np.abs(dy) <= r) & (np.abs(dx) <= w))
        else:  # stripes over the whole image
            period = rng.uniform(0.2, 0.3)
            mask = np.sin(2 * math.pi * (yy + rng.uniform(0, period)) / period) > 0
        alpha = mask.reshape(s, ss, s, ss).mean((1, 3), dtype=np.float32)[..., None]
        img = alpha * fg + (1 - alpha) * bg
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
