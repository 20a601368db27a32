"""Latent space: a Stable-Diffusion-style VAE (diffusers ``AutoencoderKL``) from a local directory, and latents
precomputed once into safetensors shards so training never runs the VAE.

Shard layout (``DIR/index.json`` is written last and marks the set complete)::

    shard-00000.safetensors   mean, std: (n, 2, C, h, w) float16, [:, 0] the image, [:, 1] its mirror image
                              label:     (n,) int64
    index.json                {"format": "trainhub-dit-latents", "channels", "size", "scale", "shards": [...], ...}

Training draws ``z = (mean + std * noise) * scale`` per sample, as the reference samples the VAE posterior every
step, and picks the mirrored latent with probability 1/2 (both flips are stored, so flipping stays an
augmentation; a single stored flip would freeze one orientation per image).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainhub import UserError
from trainhub_dit.data import subsample

FORMAT = "trainhub-dit-latents"


# ---- the VAE -----------------------------------------------------------------------------------------

def vae_shape(vae_dir: str | Path, image_size: int) -> tuple[int, int]:
    """(latent channels, latent size) for ``image_size`` images, read from the VAE's ``config.json`` (no import)."""
    f = Path(vae_dir) / "config.json"
    if not f.is_file():
        raise UserError(f"data.vae={vae_dir}: no config.json there; give a local diffusers AutoencoderKL directory "
                        "(save_pretrained output, e.g. a downloaded stabilityai/sd-vae-ft-ema)")
    cfg = json.loads(f.read_text())
    factor = 2 ** (len(cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    if image_size % factor:
        raise UserError(f"data.image_size={image_size} must be divisible by the VAE's downsampling factor {factor}")
    return int(cfg.get("latent_channels", 4)), image_size // factor


def load_vae(vae_dir: str | Path, device: torch.device, slicing: bool = True) -> nn.Module:
    """The diffusers AutoencoderKL saved in ``vae_dir``, frozen, in eval mode on ``device`` (never downloads)."""
    vae_shape(vae_dir, 8)  # a clear error for a wrong directory before importing diffusers
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError("latent mode needs diffusers: pip install 'trainhub-dit[latent]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise UserError(f"data.vae={vae_dir}: cannot load an AutoencoderKL from it: {e}") from None
    if slicing:
        vae.enable_slicing()  # one image at a time through the VAE: peak memory independent of the batch
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] -> (mean, std) of the VAE posterior (unscaled latents), float32."""
    dist = vae.encode(x.to(next(vae.parameters()).dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


@torch.no_grad()
def decode(vae: nn.Module, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1], float32."""
    return vae.decode((z / scale).to(next(vae.parameters()).dtype)).sample.float().clamp(-1, 1)


# ---- precomputed shards ---------------------------------------------------------------------------------

def read_index(root: str | Path) -> dict[str, Any]:
    f = Path(root) / "index.json"
    if not f.is_file():
        raise UserError(f"data.root={root}: no index.json; write latents with `trainhub dit precompute-latents`")
    index = json.loads(f.read_text())
    if index.get("format") != FORMAT:
        raise UserError(f"{f}: not a {FORMAT} index")
    return index


class LatentShards(Dataset):
    """Latents written by :func:`precompute`; items ``{"x": (C, h, w) scaled latent sample, "y": label}``."""

    def __init__(self, root: str | Path, hflip: bool = True, num_samples: Optional[int] = None) -> None:
        self.root = Path(root)
        self.index = read_index(self.root)
        self.files = np.array([s["file"] for s in self.index["shards"]], dtype=np.str_)
        counts = np.array([s["count"] for s in self.index["shards"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.keep = subsample(int(self.starts[-1]), num_samples)  # the same fixed random subset as for images
        self.scale = float(self.index["scale"])
        self.hflip = hflip
        self.classes = tuple(self.index.get("classes", []))
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.keep)

    def __getstate__(self) -> dict[str, Any]:  # open file handles stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def _shard(self, k: int) -> Any:
        if k not in self._handles:
            from safetensors import safe_open

            self._handles[k] = safe_open(str(self.root / self.files[k]), framework="pt")
        return self._handles[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(self.keep[index])
        k = int(np.searchsorted(self.starts, index, side="right") - 1)
        i = index - int(self.starts[k])
        f = self._shard(k)
        flip = 1 if self.hflip and torch.rand(()) < 0.5 else 0
        mean = f.get_slice("mean")[i : i + 1, flip : flip + 1][0, 0].float()
        std = f.get_slice("std")[i : i + 1, flip : flip + 1][0, 0].float()
        label = f.get_slice("label")[i : i + 1][0]
        return {"x": (mean + std * torch.randn(mean.shape)) * self.scale, "y": label.long()}


@torch.no_grad()
def precompute(dataset: Dataset, vae: nn.Module, out: Path, device: torch.device, scale: float, image_size: int,
               batch_size: int = 32, shard_size: int = 4096, num_workers: int = 0, meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Encode every image of ``dataset`` (no random flip) and its mirror image; write shards and ``index.json``."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    if (out / "index.json").exists():
        (out / "index.json").unlink()  # the set is incomplete until the new index is written
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    shards: list[dict[str, Any]] = []
    buf: dict[str, list[torch.Tensor]] = {"mean": [], "std": [], "label": []}
    shape: tuple[int, ...] = ()

    def flush() -> None:
        if not buf["label"]:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {k: torch.cat(v).contiguous() for k, v in buf.items()}
        tmp = out / (name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, out / name)
        shards.append({"file": name, "count": int(tensors["label"].shape[0])})
        for v in buf.values():
            v.clear()

    pending = 0
    for batch in tqdm(loader, desc="encoding latents", unit="batch"):
        x = batch["x"].to(device)
        m, s = encode(vae, torch.cat([x, x.flip(-1)]))
        n = x.shape[0]
        buf["mean"].append(torch.stack([m[:n], m[n:]], 1).half().cpu())
        buf["std"].append(torch.stack([s[:n], s[n:]], 1).half().cpu())
        buf["label"].append(batch["y"].long().cpu())
        shape = tuple(m.shape[1:])
        pending += n
        if pending >= shard_size:
            flush()
            pending = 0
    flush()
    if not shards:
        raise UserError("precompute-latents: the dataset is empty")
    index = {"format": FORMAT, "version": 1, "num_samples": sum(s["count"] for s in shards), "channels": shape[0],
             "size": shape[1], "scale": scale, "image_size": image_size, "flips": 2, "shards": shards, **(meta or {})}
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / "index.json")
    return index
