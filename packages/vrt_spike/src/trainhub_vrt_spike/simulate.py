"""Spike-camera simulator and GoPro+Spike-style dataset generator.

From a still photograph, a smooth random camera motion (translation, small rotation and zoom) gives a
continuous-time sharp video. Each output frame is an exposure of ``subframes`` instants:

- ``blur``  = the mean of the exposure's sharp subframes (what a slow camera records),
- ``sharp`` = the sharp frame at the exposure's centre (the target),
- ``spike`` = integrate-and-fire of the subframes' luminance, one spike frame per subframe; the
  accumulator carries over from frame to frame as in a real spike camera.

Written layout (what :class:`trainhub_vrt_spike.data.SpikeDeblurDataset` reads)::

    <out>/meta.json                     spike_height, spike_width, spike_frames, spike_format, flipud, simulator settings
    <out>/<split>/<sequence>/blur/000000.png
    <out>/<split>/<sequence>/sharp/000000.png
    <out>/<split>/<sequence>/spike/000000.dat     the exposure's spike stream (see trainhub_vrt_spike.spike)
    <out>/<split>/<sequence>/voxel/000000.npy     optional: (bins, H, W) float16 firing rates
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from trainhub_vrt_spike import spike as S

#: Photographs bundled with scikit-image (no download); the last two are held out for validation.
EMBEDDED_PHOTOS = ("astronaut", "immunohistochemistry", "hubble_deep_field", "gravel", "chelsea", "coffee")
VAL_PHOTOS = 2


@dataclass
class SimSettings:
    size: int = 64  # output frames are size x size
    frames: int = 12  # frames per sequence
    subframes: int = 32  # sharp instants (= spike frames) per exposure
    threshold: float = 2.0  # integrate-and-fire threshold (intensity in [0, 1] per spike frame)
    noise_std: float = 0.0  # Gaussian noise added to the accumulator per spike frame
    max_speed: float = 10.0  # camera speed per axis, output pixels per frame (random per frame, smooth)
    max_rotation: float = 1.0  # degrees per frame
    max_zoom: float = 0.01  # relative zoom per frame
    view: float = 0.5  # the camera sees this fraction of the photo's shorter side


def embedded_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as (H, W, 3) float32 in [0, 1]."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.float32) / 255.0


def load_photo(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _smooth_curve(rng: np.random.Generator, frames: int, scale: float, samples: np.ndarray) -> np.ndarray:
    """Integral of a velocity that is random at frame boundaries and linear between them, at times ``samples``."""
    knots = rng.uniform(-scale, scale, size=frames + 1)
    fine = np.linspace(0.0, frames, frames * 64 + 1)
    vel = np.interp(fine, np.arange(frames + 1), knots)
    pos = np.concatenate([[0.0], np.cumsum((vel[1:] + vel[:-1]) * 0.5 * (fine[1] - fine[0]))])
    return np.interp(samples, fine, pos)


def camera_path(rng: np.random.Generator, cfg: SimSettings, times: np.ndarray) -> np.ndarray:
    """Camera pose at each time (in frames): (len(times), 4) = (dx, dy) in output pixels, rotation (rad), log zoom.

    Velocities are drawn per frame boundary (uniform, up to ``max_speed`` per axis) and vary linearly in
    between: the camera shakes and turns around rather than drifting off the photograph.
    """
    shift = np.stack([_smooth_curve(rng, cfg.frames, cfg.max_speed, times) for _ in range(2)], 1)
    rot = _smooth_curve(rng, cfg.frames, math.radians(cfg.max_rotation), times)
    zoom = _smooth_curve(rng, cfg.frames, cfg.max_zoom, times)
    return np.concatenate([shift, rot[:, None], zoom[:, None]], 1)


def render(photo: torch.Tensor, poses: np.ndarray, cfg: SimSettings, center: tuple[float, float]) -> torch.Tensor:
    """Views of ``photo`` (3, H, W) at ``poses`` -> (n, 3, size, size) in [0, 1] (bilinear, reflected borders)."""
    _, h, w = photo.shape
    side = cfg.view * min(h, w)  # source pixels covered by the view
    px = side / cfg.size  # source pixels per output pixel
    p = torch.as_tensor(poses, dtype=torch.float32)
    cos, sin, zoom = torch.cos(p[:, 2]), torch.sin(p[:, 2]), torch.exp(-p[:, 3])
    half_w, half_h = side / w * zoom, side / h * zoom  # view half-extent in normalised source coordinates
    cx = (center[0] + p[:, 0] * px) / w * 2 - 1
    cy = (center[1] + p[:, 1] * px) / h * 2 - 1
    theta = torch.stack([
        torch.stack([cos * half_w, -sin * half_w, cx], 1),
        torch.stack([sin * half_h, cos * half_h, cy], 1),
    ], 1)
    grid = F.affine_grid(theta, [len(p), 3, cfg.size, cfg.size], align_corners=False)
    src = photo[None].expand(len(p), -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp(0, 1)


def simulate_sequence(photo_hwc: np.ndarray, cfg: SimSettings, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sequence: ``blur``/``sharp`` (F, H, W, 3) float32 in [0, 1], ``subframes`` (F, T, H, W, 3), ``spikes`` (F, T, H, W) uint8."""
    photo = torch.from_numpy(np.ascontiguousarray(photo_hwc.transpose(2, 0, 1)))
    # downscale the photo so one output pixel covers about one source pixel (no aliasing in the render)
    h, w = photo.shape[1:]
    scale = cfg.size / (cfg.view * min(h, w))
    if scale < 1:
        photo = F.interpolate(photo[None], scale_factor=scale, mode="area")[0]
    h, w = photo.shape[1:]
    margin = 0.5 * cfg.view * min(h, w)
    center = (rng.uniform(margin, max(margin, w - margin)), rng.uniform(margin, max(margin, h - margin)))
    t = cfg.subframes
    sub_times = (np.arange(cfg.frames)[:, None] + (np.arange(t)[None, :] + 0.5) / t).reshape(-1)
    mid_times = np.arange(cfg.frames) + 0.5
    poses = camera_path(rng, cfg, np.concatenate([sub_times, mid_times]))
    views = render(photo, poses, cfg, center).permute(0, 2, 3, 1).numpy()  # (F*T + F, H, W, 3)
    subframes = views[: cfg.frames * t].reshape(cfg.frames, t, cfg.size, cfg.size, 3)
    sharp = views[cfg.frames * t :]
    blur = subframes.mean(axis=1)
    spikes, state = [], None
    for f in range(cfg.frames):
        s, state = S.integrate_and_fire(S.luminance(subframes[f]), cfg.threshold, rng, cfg.noise_std, state)
        spikes.append(s)
    return {"blur": blur, "sharp": sharp, "subframes": subframes, "spikes": np.stack(spikes)}


def to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_sequence(seq: dict[str, np.ndarray], folder: Path, voxel_bins: Optional[int] = None) -> None:
    from PIL import Image

    for sub in ("blur", "sharp", "spike") + (("voxel",) if voxel_bins else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for f in range(len(seq["blur"])):
        stem = f"{f:06d}"
        Image.fromarray(to_uint8(seq["blur"][f])).save(folder / "blur" / f"{stem}.png")
        Image.fromarray(to_uint8(seq["sharp"][f])).save(folder / "sharp" / f"{stem}.png")
        S.write_dat(folder / "spike" / f"{stem}.dat", seq["spikes"][f])
        if voxel_bins:
            np.save(folder / "voxel" / f"{stem}.npy", S.voxelize(seq["spikes"][f], voxel_bins).astype(np.float16))


def _photos(images: Optional[Path], split: str) -> list[tuple[str, np.ndarray]]:
    if images is None:
        names = EMBEDDED_PHOTOS[:-VAL_PHOTOS] if split == "train" else EMBEDDED_PHOTOS[-VAL_PHOTOS:]
        return [(n, embedded_photo(n)) for n in names]
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    if len(files) < 2:
        raise ValueError(f"{images}: need at least 2 images (one held out for validation), found {len(files)}")
    n_val = max(1, len(files) // 5)
    chosen = files[:-n_val] if split == "train" else files[-n_val:]
    return [(p.stem, load_photo(p)) for p in chosen]


def generate(
    out: Path,
    cfg: SimSettings,
    train_sequences: int,
    val_sequences: int,
    seed: int = 0,
    images: Optional[Path] = None,
    voxel_bins: Optional[int] = None,
    progress: bool = True,
) -> Path:
    """Write a dataset (layout in the module docstring) into ``out``; returns ``out``."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, int]] = [("train", i) for i in range(train_sequences)] + [("val", i) for i in range(val_sequences)]
    photos = {split: _photos(images, split) for split in {s for s, _ in jobs}}
    for split, i in tqdm(jobs, desc="simulating sequences", disable=not progress, unit="seq"):
        name, photo = photos[split][i % len(photos[split])]
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        write_sequence(simulate_sequence(photo, cfg, rng), out / split / f"{name}_{i:03d}", voxel_bins)
    meta = {
        "spike_height": cfg.size, "spike_width": cfg.size, "spike_frames": cfg.subframes, "spike_format": "bitpacked",
        "flipud": True, "simulator": asdict(cfg), "seed": seed, "train_sequences": train_sequences,
        "val_sequences": val_sequences, "voxel_bins": voxel_bins,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def cache_root() -> Path:
    """Where generated embedded datasets live: ``$TRAINHUB_CACHE/vrt_spike`` (the cache variable every recipe reads) or ``~/.cache/trainhub/vrt_spike``."""
    base = os.environ.get("TRAINHUB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "trainhub")
    return Path(base) / "vrt_spike"


def ensure_embedded(cfg: SimSettings, train_sequences: int, val_sequences: int, seed: int, where: Optional[Path] = None) -> Path:
    """The embedded default dataset for these settings, generated once (atomically: safe with several ranks)."""
    import hashlib

    key = json.dumps([asdict(cfg), train_sequences, val_sequences, seed, 1], sort_keys=True)
    root = (where or cache_root()) / f"embedded-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if (root / "meta.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        generate(tmp, cfg, train_sequences, val_sequences, seed, progress=False)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            if not (root / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def iter_sequences(root: Path) -> Iterator[Path]:
    """Sequence folders (those holding ``blur/``) under ``root``, sorted."""
    for p in sorted(root.rglob("blur")):
        if p.is_dir():
            yield p.parent


def precompute_voxels(root: Path, bins: int, spike_dir: str = "spike", voxel_dir: str = "voxel", height: Optional[int] = None,
                      width: Optional[int] = None, fmt: Optional[S.SpikeFormat] = None, flipud: Optional[bool] = None,
                      progress: bool = True) -> int:
    """Write ``voxel/<stem>.npy`` (float16 firing rates) next to every ``spike/<stem>.dat`` under ``root``; returns the count.
    The sensor size, ``fmt`` and ``flipud`` left None come from ``<root>/meta.json`` as the dataset reads them."""
    from tqdm import tqdm

    from trainhub_vrt_spike.data import find_image, natural_key, read_meta, spike_layout

    meta = read_meta(root)
    fmt, flipud = spike_layout(meta, root, fmt, flipud)
    files = [f for seq in iter_sequences(root) for f in sorted((seq / spike_dir).glob("*.dat"), key=lambda f: natural_key(f.stem))]
    for f in tqdm(files, desc="voxelising", disable=not progress, unit="frame"):
        h, w = height or meta.get("spike_height"), width or meta.get("spike_width")
        if h is None or w is None:
            from PIL import Image

            frame = find_image(f.parent.parent / "blur", f.stem)
            if frame is None:
                raise ValueError(f"{f}: no blurry frame {f.parent.parent / 'blur' / f.stem}.* to take the spike size from; "
                                 "give --height and --width or set spike_height/spike_width in meta.json")
            with Image.open(frame) as im:
                w, h = im.size
        vox = S.voxelize(S.read_dat(f, h, w, fmt, flipud), bins).astype(np.float16)
        (f.parent.parent / voxel_dir).mkdir(exist_ok=True)
        np.save(f.parent.parent / voxel_dir / f"{f.stem}.npy", vox)
    return len(files)
