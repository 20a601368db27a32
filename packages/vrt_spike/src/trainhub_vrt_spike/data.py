"""GoPro+Spike data: clips of blurry frames, their sharp targets and the spike streams of their exposures.

Layout of a dataset root (the simulator in :mod:`trainhub_vrt_spike.simulate` writes it; GoPro+Spike
folders look the same)::

    <root>/meta.json                                optional: spike_height, spike_width, spike_frames, spike_format, flipud
    <root>/<split>/<sequence>/blur/<stem>.png       blurry frame (png/jpg)
    <root>/<split>/<sequence>/sharp/<stem>.png      sharp target, same stem
    <root>/<split>/<sequence>/spike/<stem>.dat      spike stream of that frame's exposure (format: trainhub_vrt_spike.spike)
    <root>/<split>/<sequence>/voxel/<stem>.npy      or precomputed (bins, H, W) firing rates

A sample is ``seq_len`` consecutive frames of one sequence: ``blur``/``sharp`` (N, 3, h, w) float32 in
[0, 1] and ``spike`` (N, S, h, w) float32, S = ``num_bins`` voxel bins or, with ``spike_input="raw"``,
the T binary spike frames themselves; plus ``cache_hit`` (share of the clip's frames served from the
RAM cache) when the cache is on. Sample tables are numpy arrays (no per-item Python objects that
DataLoader workers would copy on read).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from trainhub import UserError
from trainhub_vrt_spike import spike as S
from trainhub_vrt_spike.cache import LRUCache

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# ---- reading files ------------------------------------------------------------------------------------

def natural_key(name: str) -> tuple[list[Any], str]:
    """Sort key comparing runs of digits as numbers: 2 before 10 (unpadded frame numbers stay in time order)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)], name


def frame_stems(folder: Path) -> list[str]:
    """Stems of the images (``IMAGE_SUFFIXES``) in ``folder``, in frame order (:func:`natural_key`)."""
    return sorted((p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=natural_key)


def find_image(folder: Path, stem: str) -> Optional[Path]:
    """``folder/<stem><suffix>`` for the first of ``IMAGE_SUFFIXES`` (lower or upper case) that exists, else None."""
    names = (f"{stem}{e}" for suffix in IMAGE_SUFFIXES for e in (suffix, suffix.upper()))
    return next((folder / n for n in names if (folder / n).is_file()), None)


def read_image(path: Path) -> np.ndarray:
    """(3, H, W) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))


def resize_planes(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float -> (C, H, W) (area when shrinking, bilinear when enlarging): spike maps at image size."""
    if x.shape[-2:] == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    shrink = size[0] <= x.shape[-2] and size[1] <= x.shape[-1]
    out = torch.nn.functional.interpolate(t, size=size, mode="area" if shrink else "bilinear", align_corners=None if shrink else False)
    return out[0].numpy()


def read_meta(root: Path) -> dict[str, Any]:
    f = root / "meta.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: invalid JSON ({e.msg} at line {e.lineno})") from None


def spike_layout(meta: dict[str, Any], root: Path, spike_format: Optional[str] = None,
                 flipud: Optional[bool] = None) -> tuple[S.SpikeFormat, bool]:
    """The ``.dat`` layout (format, rows bottom-up): a setting given here wins, then meta.json's ``spike_format`` /
    ``flipud``, then bitpacked and bottom-up."""
    fmt = spike_format or meta.get("spike_format", "bitpacked")
    flip = meta.get("flipud", True) if flipud is None else flipud
    if fmt not in ("bitpacked", "bytes"):
        raise UserError(f"meta.json of {root}: spike_format={fmt!r}; use bitpacked or bytes")
    if not isinstance(flip, bool):
        raise UserError(f"meta.json of {root}: flipud={flip!r}; use true or false")
    return fmt, flip


class SpikeDeblurDataset(Dataset):
    """Clips of ``seq_len`` frames from the layout in the module docstring (one dataset per split).

    ``crop``: random square crop of this size (training); ``center_crop``: a centred one (evaluation);
    neither: full frames. ``cache_bytes`` > 0 turns on the :class:`LRUCache` of decoded frames
    (``workers``: DataLoader workers per rank, for its budget split). ``meta``: the dataset's
    meta.json contents (default: read ``<root>/meta.json``); ``only``: use just this sequence folder;
    ``targets=False``: no sharp/ folder needed (inference; ``sharp`` then repeats ``blur``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        seq_len: int,
        num_bins: int = 32,
        spike_input: Literal["voxel", "raw"] = "voxel",
        crop: Optional[int] = None,
        center_crop: Optional[int] = None,
        flips: bool = False,
        clip_stride: int = 1,
        max_clips: int = -1,
        use_precomputed_voxels: bool = False,
        spike_dir: str = "spike",
        voxel_dir: str = "voxel",
        spike_format: Optional[S.SpikeFormat] = None,
        spike_flipud: Optional[bool] = None,
        spike_size: Optional[tuple[int, int]] = None,
        spike_frames: Optional[int] = None,
        cache_bytes: int = 0,
        workers: int = 0,
        meta: Optional[dict[str, Any]] = None,
        only: Optional[str] = None,
        targets: bool = True,
    ) -> None:
        self.root = Path(root)
        base = self.root / split
        if not base.is_dir():
            raise UserError(f"data split folder {base} does not exist (data.root={root}, split {split!r}); "
                            "make one with `trainhub prepare vrt_spike simulate --out DIR`")
        meta = read_meta(self.root) if meta is None else meta
        self.seq_len, self.num_bins, self.spike_input = seq_len, num_bins, spike_input
        self.crop, self.center_crop, self.flips = crop, center_crop, flips
        self.use_voxels = use_precomputed_voxels
        self.spike_dir, self.voxel_dir = spike_dir, voxel_dir
        self.spike_format, self.flipud = spike_layout(meta, self.root, spike_format, spike_flipud)
        if spike_size is None and "spike_height" in meta:
            spike_size = (int(meta["spike_height"]), int(meta["spike_width"]))
        self.spike_size = spike_size
        self.spike_frames = spike_frames or meta.get("spike_frames")
        if spike_input == "raw" and use_precomputed_voxels:
            raise UserError("data.spike_input=raw reads the spike streams; it cannot use data.use_precomputed_voxels=true")

        seq_dirs, stems, starts, groups = [], [], [], []
        for si, seq in enumerate(sorted(p for p in base.iterdir() if (p / "blur").is_dir() and only in (None, p.name))):
            frames = frame_stems(seq / "blur")
            first = len(stems)
            seq_dirs.extend([str(seq)] * len(frames))
            stems.extend(frames)
            stride = max(1, clip_stride)
            for s in range(0, len(frames) - seq_len + 1, stride):
                starts.append(first + s)
                groups.append(si)
        if not starts:
            raise UserError(f"{base}: no sequence with at least data.seq_len={seq_len} frames in <sequence>/blur/")
        self.frame_seq = np.array(seq_dirs)  # per frame: its sequence folder
        self.frame_stem = np.array(stems)
        self.blur_ext = np.array([self._find_ext(Path(d) / "blur", s) for d, s in zip(seq_dirs, stems)])
        self.starts = np.array(starts, dtype=np.int64)
        self.sample_groups = np.array(groups, dtype=np.int64)  # used by core's grouped sampler (loader.group_window)
        if max_clips > 0 and len(self.starts) > max_clips:  # evenly spread over all sequences
            keep = np.linspace(0, len(self.starts) - 1, max_clips).round().astype(np.int64)
            self.starts, self.sample_groups = self.starts[keep], self.sample_groups[keep]
        self.cache = LRUCache(cache_bytes, workers) if cache_bytes > 0 else None
        self.targets = targets

    @staticmethod
    def _find_ext(folder: Path, stem: str) -> str:
        found = find_image(folder, stem)
        return found.suffix if found else ".png"

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def spike_channels(self) -> int:
        """Channels of ``spike`` per frame: voxel bins, or T raw spike frames."""
        if self.spike_input == "voxel":
            return self.num_bins
        return int(self.spike_frames or self._load_spikes(0, (1, 1)).shape[0])

    # ---- one frame ----
    def _load_spikes(self, g: int, size: tuple[int, int]) -> np.ndarray:
        seq, stem = Path(self.frame_seq[g]), str(self.frame_stem[g])
        if self.use_voxels:
            f = seq / self.voxel_dir / f"{stem}.npy"
            if not f.is_file():
                raise UserError(f"missing voxel file {f} (data.use_precomputed_voxels=true; make them with "
                                f"`trainhub prepare vrt_spike voxelize --root {self.root} --bins {self.num_bins}`)")
            vox = np.load(f, allow_pickle=False)
            if vox.ndim != 3 or vox.shape[0] != self.num_bins:
                raise UserError(f"{f}: voxel array of shape {vox.shape}, expected ({self.num_bins}, H, W) for data.num_bins={self.num_bins}")
            return resize_planes(vox, size).astype(np.float16)
        f = seq / self.spike_dir / f"{stem}.dat"
        if not f.is_file():
            raise UserError(f"missing spike stream {f}")
        h, w = self.spike_size or size
        try:
            spikes = S.read_dat(f, h, w, self.spike_format, self.flipud)
        except ValueError as e:
            raise UserError(str(e)) from None
        if self.spike_input == "raw":
            if self.spike_frames and spikes.shape[0] != self.spike_frames:
                raise UserError(f"{f}: {spikes.shape[0]} spike frames, expected data.spike_frames={self.spike_frames}")
            return spikes if (h, w) == size else resize_planes(spikes, size).astype(np.float16)
        if self.num_bins > spikes.shape[0]:
            raise UserError(f"{f}: data.num_bins={self.num_bins} exceeds its {spikes.shape[0]} spike frames per exposure")
        return resize_planes(S.voxelize(spikes, self.num_bins), size).astype(np.float16)

    def _load_frame(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seq, stem = Path(self.frame_seq[g]), str(self.frame_stem[g])
        blur = read_image(seq / "blur" / f"{stem}{self.blur_ext[g]}")
        if not self.targets:
            return blur, blur, self._load_spikes(g, blur.shape[1:])
        sharp_path = seq / "sharp" / f"{stem}{self.blur_ext[g]}"
        if not sharp_path.is_file():
            sharp_path = find_image(seq / "sharp", stem) or sharp_path
        if not sharp_path.is_file():
            raise UserError(f"missing sharp frame {sharp_path} for {seq / 'blur' / stem}")
        sharp = read_image(sharp_path)
        if sharp.shape != blur.shape:
            raise UserError(f"{sharp_path}: size {sharp.shape[1:]} differs from its blurry frame {blur.shape[1:]}")
        return blur, sharp, self._load_spikes(g, blur.shape[1:])

    def frame(self, g: int, region: Optional[tuple[slice, slice]] = None) -> tuple[tuple[np.ndarray, ...], bool]:
        """Frame ``g`` as (blur, sharp, spike) arrays cropped to ``region``, and whether the cache had it."""
        if self.cache is not None:
            got = self.cache.get(g, region)
            if got is not None:
                return got, True
        arrays = self._load_frame(g)
        if self.cache is not None:
            self.cache.put(g, arrays)
        if region is not None:
            arrays = tuple(a[..., region[0], region[1]] for a in arrays)
        return arrays, False

    def frame_size(self, g: int) -> tuple[int, int]:
        from PIL import Image

        with Image.open(Path(self.frame_seq[g]) / "blur" / f"{self.frame_stem[g]}{self.blur_ext[g]}") as im:
            return im.size[1], im.size[0]

    # ---- one clip ----
    def _region(self, h: int, w: int) -> Optional[tuple[slice, slice]]:
        size = self.crop or self.center_crop
        if size is None:
            return None
        if size > h or size > w:
            raise UserError(f"crop size {size} is larger than the frames ({h}x{w}) under {self.root}")
        if self.crop:
            top, left = np.random.randint(0, h - size + 1), np.random.randint(0, w - size + 1)
        else:
            top, left = (h - size) // 2, (w - size) // 2
        return slice(top, top + size), slice(left, left + size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g0 = int(self.starts[i])
        region = self._region(*self.frame_size(g0)) if (self.crop or self.center_crop) else None
        blurs, sharps, spikes, hits = [], [], [], 0
        for g in range(g0, g0 + self.seq_len):
            (b, s, sp), hit = self.frame(g, region)
            blurs.append(b)
            sharps.append(s)
            spikes.append(sp)
            hits += hit
        blur, sharp, spike = np.stack(blurs), np.stack(sharps), np.stack(spikes)
        if self.flips:
            if np.random.rand() < 0.5:
                blur, sharp, spike = blur[..., ::-1], sharp[..., ::-1], spike[..., ::-1]
            if np.random.rand() < 0.5:
                blur, sharp, spike = blur[..., ::-1, :], sharp[..., ::-1, :], spike[..., ::-1, :]
        item = {
            "blur": torch.from_numpy(np.ascontiguousarray(blur)).float().div_(255.0),
            "sharp": torch.from_numpy(np.ascontiguousarray(sharp)).float().div_(255.0),
            "spike": torch.from_numpy(np.ascontiguousarray(spike)).float(),
        }
        if self.cache is not None:
            item["cache_hit"] = torch.tensor(hits / self.seq_len)
        return item

    def cache_stats(self) -> dict[str, float]:
        """This process's cache: items, bytes_used, budget_bytes, hits, misses, hit_rate (zeros when off)."""
        if self.cache is None:
            return {"items": 0.0, "bytes_used": 0.0, "budget_bytes": 0.0, "hits": 0.0, "misses": 0.0, "hit_rate": 0.0}
        return self.cache.stats()

