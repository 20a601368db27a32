"""SR3 datasets: the reference's paired folders (and its LMDB layout, :mod:`trainhub_sr3.lmdb_store`), any
folder of HR images degraded on the fly, and an embedded default cut from the real photographs scikit-image
ships. Items are dicts of CxHxW float tensors in [-1, 1]: ``hr``, ``sr`` (bicubic-upsampled LR) and ``lr``."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainhub import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# photographs shipped inside scikit-image's wheel (skimage.data), no download needed. The colour ones first;
# the last two of them (astronaut, chelsea) are the validation photos. The greyscale ones add texture (brick,
# grass, gravel, moon) and edges (camera, clock, coins) to the training set, as RGB.
EMBEDDED_PHOTOS = ("coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle", "retina", "astronaut", "chelsea")
EMBEDDED_GREY = ("camera", "brick", "grass", "gravel", "moon", "clock", "coins")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    size = (size, size) if isinstance(size, int) else size
    return img.resize(size, Image.BICUBIC)


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic; the longer side ``int(size * long / short)``), then a centre crop at
    ``round((side - size) / 2)``: the arithmetic of the torchvision resize and centre crop the reference's prepare
    script calls."""
    w, h = img.size
    if min(w, h) != size:
        short, long = min(w, h), max(w, h)
        new = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
        img = img.resize(new, Image.BICUBIC)
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def degrade(hr: Image.Image, l_res: int, r_res: int) -> tuple[Image.Image, Image.Image]:
    """(LR, SR): bicubic down to ``l_res``, and back up to ``r_res``."""
    lr = resize(hr, l_res)
    return lr, resize(lr, r_res)


class ImageErrors:
    """Unreadable images: skipped with a counted warning naming each file, or a stop naming it."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.skipped: list[str] = []

    def check(self, paths: list[Path]) -> list[Path]:
        good = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    im.verify()
                good.append(p)
            except Exception as exc:
                self.bad(p, exc)
        return good

    def bad(self, path: Path, exc: BaseException) -> None:
        if self.on_error == "stop":
            raise UserError(f"unreadable image {path}: {type(exc).__name__}: {exc} (data.on_error=skip skips such files)")
        self.skipped.append(str(path))
        warnings.warn(f"skipping unreadable image {path} ({len(self.skipped)} skipped so far): {type(exc).__name__}", stacklevel=2)


def _flip(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.flip(-1) for t in tensors] if random.random() < 0.5 else tensors


class PairedFolder(Dataset):
    """``root/hr_<R>/``, ``root/sr_<r>_<R>/`` and ``root/lr_<r>/`` with the same file names."""

    def __init__(self, root: Path, l_res: int, r_res: int, flips: bool = False, on_error: str = "skip", limit: int = -1) -> None:
        self.dirs = {"hr": root / f"hr_{r_res}", "sr": root / f"sr_{l_res}_{r_res}", "lr": root / f"lr_{l_res}"}
        for key in ("hr", "sr"):
            if not self.dirs[key].is_dir():
                raise UserError(f"{root}: missing folder {self.dirs[key].name}/ (expected hr_{r_res}/, sr_{l_res}_{r_res}/, "
                                f"lr_{l_res}/; `trainhub prepare sr3` writes them)")
        names = {k: {p.name for p in list_images(d)} for k, d in self.dirs.items() if d.is_dir()}
        missing = sorted(names["hr"] - names["sr"])
        if missing:
            raise UserError(f"{root}: {len(missing)} HR images have no matching file in {self.dirs['sr'].name}/, "
                            f"e.g. {', '.join(missing[:3])}")
        self.errors = ImageErrors(on_error)
        hr = self.errors.check([self.dirs["hr"] / n for n in sorted(names["hr"])])
        self.names = [p.name for p in hr][: limit if limit > 0 else None]
        self.has_lr = "lr" in names and names["hr"] <= names["lr"]
        self.flips, self.l_res = flips, l_res
        if not self.names:
            raise UserError(f"{root}: no readable images in {self.dirs['hr'].name}/")
        self._check_sizes(l_res, r_res)

    def _check_sizes(self, l_res: int, r_res: int) -> None:
        """Every image has its folder's size (reading headers only: ~0.1 ms an image), so that a stray one is
        named here instead of failing a batch later."""
        expect = {"hr": r_res, "sr": r_res, "lr": l_res}
        kinds = ("hr", "sr", "lr") if self.has_lr else ("hr", "sr")
        good = []
        for name in self.names:
            try:
                sizes = {}
                for k in kinds:
                    with Image.open(self.dirs[k] / name) as im:
                        sizes[k] = im.size
            except Exception as exc:
                self.errors.bad(self.dirs[k] / name, exc)
                continue
            for k in kinds:
                n = expect[k]
                if sizes[k] != (n, n):
                    key = "data.r_resolution" if k != "lr" else "data.l_resolution"
                    raise UserError(f"{self.dirs[k] / name}: {sizes[k][0]}x{sizes[k][1]} pixels, expected {n}x{n} like every "
                                    f"image in {self.dirs[k].name}/ ({key}={n}); prepare the folder again with `trainhub "
                                    "prepare sr3` or remove the image")
            good.append(name)
        self.names = good
        if not self.names:
            raise UserError(f"{self.dirs['hr'].parent}: no readable image pairs")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name = self.names[i]
        try:
            hr = Image.open(self.dirs["hr"] / name)
            sr = Image.open(self.dirs["sr"] / name)
            lr = Image.open(self.dirs["lr"] / name) if self.has_lr else resize(hr, self.l_res)
            out = [to_tensor(hr), to_tensor(sr), to_tensor(lr)]
        except Exception as exc:
            self.errors.bad(self.dirs["hr"] / name, exc)
            return self[(i + 1) % len(self)]
        if self.flips:
            out = _flip(out)
        return {"hr": out[0], "sr": out[1], "lr": out[2]}


class HRFolder(Dataset):
    """Any folder of images: random (or centre) ``r_res`` crops, bicubic down to ``l_res`` and back up."""

    def __init__(self, root: Path, l_res: int, r_res: int, train: bool = True, flips: bool = True, on_error: str = "skip", limit: int = -1) -> None:
        self.errors = ImageErrors(on_error)
        paths = list_images(root) if root.is_dir() else []
        self.paths = self.errors.check(paths)[: limit if limit > 0 else None]
        if not self.paths:
            raise UserError(f"data.root={root}: no readable images ({', '.join(sorted(IMAGE_EXTS))})")
        self.l_res, self.r_res, self.train, self.flips = l_res, r_res, train, flips

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        try:
            img = Image.open(self.paths[i]).convert("RGB")
        except Exception as exc:
            self.errors.bad(self.paths[i], exc)
            return self[(i + 1) % len(self)]
        if min(img.size) < self.r_res:
            img = resize_and_crop(img, self.r_res)
        w, h = img.size
        if self.train:
            left, top = random.randint(0, w - self.r_res), random.randint(0, h - self.r_res)
        else:
            left, top = (w - self.r_res) // 2, (h - self.r_res) // 2
        hr = img.crop((left, top, left + self.r_res, top + self.r_res))
        lr, sr = degrade(hr, self.l_res, self.r_res)
        out = [to_tensor(hr), to_tensor(sr), to_tensor(lr)]
        if self.train and self.flips:
            out = _flip(out)
        return {"hr": out[0], "sr": out[1], "lr": out[2]}


class EmbeddedPhotos(Dataset):
    """Real photographs from ``skimage.data``, no download.

    ``train``: the colour and greyscale training photos, each scaled to ``scales`` pixels on its short side;
    every item is a random ``r_res`` crop (and flip) of one of them, drawn in proportion to its area (the
    length is the number of non-overlapping tiles). ``val``: the fixed grid of ``r_res`` tiles of the two
    validation photos at ``scale_to`` pixels.
    """

    def __init__(self, l_res: int, r_res: int, split: str, val_photos: int = 2, scale_to: int = 128,
                 flips: bool = True, scales: tuple[int, ...] = (128, 192, 256)) -> None:
        if split == "train":
            names = EMBEDDED_PHOTOS[:-val_photos] + EMBEDDED_GREY
            sizes = tuple(max(sz, r_res) for sz in scales)
        else:
            names, sizes = EMBEDDED_PHOTOS[-val_photos:], (max(scale_to, r_res),)
        flat, table = [], []  # one uint8 buffer + (offset, height, width) rows: cheap to share with workers
        offset = 0
        for name in names:
            img = Image.fromarray(_photo(name)).convert("RGB")
            for size in sizes:
                w, h = img.size
                k = size / min(w, h)
                arr = np.asarray(img.resize((round(w * k), round(h * k)), Image.BICUBIC))
                flat.append(arr.reshape(-1))
                table.append((offset, arr.shape[0], arr.shape[1]))
                offset += arr.size
        self.pixels = np.concatenate(flat)
        self.table = np.asarray(table, dtype=np.int64)
        tiles = (self.table[:, 1] // r_res) * (self.table[:, 2] // r_res)
        self.tile_photo = np.repeat(np.arange(len(table)), tiles)  # item -> photo, in proportion to area
        grid = [(r * r_res, c * r_res) for p, n in enumerate(tiles) for r in range(self.table[p, 1] // r_res)
                for c in range(self.table[p, 2] // r_res)]
        self.tile_pos = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
        self.l_res, self.r_res, self.train = l_res, r_res, split == "train"
        self.flips = flips and self.train

    def __len__(self) -> int:
        return len(self.tile_photo)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        p = self.tile_photo[i]
        off, h, w = (int(v) for v in self.table[p])
        photo = self.pixels[off : off + h * w * 3].reshape(h, w, 3)
        if self.train:
            top, left = random.randint(0, h - self.r_res), random.randint(0, w - self.r_res)
        else:
            top, left = (int(v) for v in self.tile_pos[i])
        hr = Image.fromarray(photo[top : top + self.r_res, left : left + self.r_res])
        lr, sr = degrade(hr, self.l_res, self.r_res)
        out = [to_tensor(hr), to_tensor(sr), to_tensor(lr)]
        if self.flips:
            out = _flip(out)
        return {"hr": out[0], "sr": out[1], "lr": out[2]}


def prepared_triple(img: Image.Image, l_res: int, r_res: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(LR, HR, SR) as the reference's prepare script makes them: LR and HR each resized and centre-cropped from
    the source image, SR the LR upsampled back to ``r_res`` (bicubic throughout)."""
    lr = resize_and_crop(img, l_res)
    return lr, resize_and_crop(img, r_res), resize(lr, r_res)


def prepare(src: Path, out: Path, l_res: int, r_res: int, on_error: str = "skip", progress: bool = True,
            lmdb: bool = False) -> int:
    """Write the reference's paired layout from a folder of images, numbered 00000, 00001, ... in sorted file
    order: folders ``hr_<R>/``, ``lr_<r>/``, ``sr_<r>_<R>/`` (each PNG written to a temporary name and renamed),
    or with ``lmdb`` one LMDB database (:class:`~trainhub_sr3.lmdb_store.LMDBWriter`; a second run continues
    after the images it already holds). Returns the number of images in ``out``."""
    import os

    from tqdm.auto import tqdm

    from trainhub_sr3.lmdb_store import LMDBWriter

    if not src.is_dir():
        raise UserError(f"--path {src} is not a folder")
    errors = ImageErrors(on_error)
    paths = list_images(src)
    if not paths:
        raise UserError(f"--path {src}: no images ({', '.join(sorted(IMAGE_EXTS))})")
    writer = LMDBWriter(out, l_res, r_res) if lmdb else None
    dirs = {k: out / name for k, name in (("hr", f"hr_{r_res}"), ("lr", f"lr_{l_res}"), ("sr", f"sr_{l_res}_{r_res}"))}
    if writer is None:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
    done = writer.length if writer is not None else 0  # images an interrupted run already wrote
    written = 0
    try:
        for p in tqdm(paths, desc="prepare sr3", unit="img", disable=not progress):
            try:
                img = Image.open(p).convert("RGB")
            except Exception as exc:
                errors.bad(p, exc)
                continue
            if written < done:  # already in the database: the same sorted sources give the same numbering
                written += 1
                continue
            lr, hr, sr = prepared_triple(img, l_res, r_res)
            if writer is not None:
                writer.add(lr, hr, sr)
            else:
                name = f"{written:05d}.png"
                for key, im in (("hr", hr), ("lr", lr), ("sr", sr)):
                    tmp = dirs[key] / f".{name}.tmp"
                    im.save(tmp, format="PNG")
                    os.replace(tmp, dirs[key] / name)
            written += 1
    finally:
        if writer is not None:
            writer.close()
    return written


def bicubic_sr(lr: torch.Tensor, r_res: int) -> torch.Tensor:
    """Bicubic upsampling of a batch in [-1, 1] (for inputs given as LR images)."""
    return torch.nn.functional.interpolate(lr, size=(r_res, r_res), mode="bicubic", align_corners=False).clamp(-1, 1)


def open_image(path: Path) -> Optional[Image.Image]:
    try:
        return Image.open(path).convert("RGB")
    except Exception:
        return None


def draw_shapes(rng: np.random.Generator, size: int, supersample: int = 4) -> Image.Image:
    """One ``size`` x ``size`` RGB picture of 2-5 flat-coloured discs, ellipses, rotated rectangles and triangles
    over a smooth two-colour gradient, drawn ``supersample`` times larger and box-filtered down (anti-aliased edges).

    The detail bicubic upsampling misses is the edges, and where an edge lies is readable from the LR pixels
    around it: a small model learns it in minutes, where the photographs' detail (texture, fur) is mostly
    unpredictable from 8 x 8 pixels (their best mean estimate gains +0.6 dB over bicubic at that budget)."""
    from PIL import ImageDraw

    big = size * supersample
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big
    ramp = np.clip((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5, 0, 1)[..., None]
    canvas = Image.fromarray((a * (1 - ramp) + b * ramp).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0.1, 0.9, 2) * big
        r = rng.uniform(0.18, 0.34) * big
        kind = int(rng.integers(0, 3))
        if kind == 0:  # disc or ellipse
            rx, ry = r, r * rng.uniform(0.5, 1.0)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:  # rotated rectangle (4 corners) or triangle (3)
            n = 4 if kind == 1 else 3
            turn = rng.uniform(0, 2 * np.pi)
            corners = [turn + k * 2 * np.pi / n for k in range(n)]
            stretch = rng.uniform(0.5, 1.0) if n == 4 else 1.0
            pts = [(cx + r * np.cos(t), cy + r * stretch * np.sin(t)) for t in corners]
            draw.polygon(pts, fill=colour)
    return canvas.resize((size, size), Image.BOX)


class Shapes(Dataset):
    """Procedural pictures (:func:`draw_shapes`), degraded as every source is: bicubic down to ``l_res`` and up.

    ``train``: a fresh picture per item, drawn from the host RNG (seeded by the trainer, so resume is exact);
    the length only sets the epoch. ``val``: ``length`` fixed pictures, the same at every eval and in every run."""

    def __init__(self, l_res: int, r_res: int, split: str, length: int = 0) -> None:
        self.l_res, self.r_res, self.train = l_res, r_res, split == "train"
        self.length = length or (2048 if self.train else 32)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        seed = random.getrandbits(63) if self.train else 1_000_003 + i
        hr = draw_shapes(np.random.default_rng(seed), self.r_res)
        lr, sr = degrade(hr, self.l_res, self.r_res)
        return {"hr": to_tensor(hr), "sr": to_tensor(sr), "lr": to_tensor(lr)}
