"""``trainhub prepare vrt_spike simulate|voxelize``: make a GoPro+Spike-style dataset, or precompute voxels."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainhub import UserError
from trainhub_vrt_spike import simulate as sim


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainhub prepare vrt_spike", description=__doc__,
                                epilog="layout written: <out>/{train,val}/<sequence>/{blur,sharp,spike[,voxel]}/ and <out>/meta.json")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sim.SimSettings()
    s = sub.add_parser("simulate", help="synthesise sequences from photographs: camera motion, exposure blur, integrate-and-fire spikes")
    s.add_argument("--out", required=True, help="dataset root to write")
    s.add_argument("--images", help="folder of photographs (default: the scikit-image sample photographs)")
    s.add_argument("--train-sequences", type=int, default=8)
    s.add_argument("--val-sequences", type=int, default=2)
    s.add_argument("--frames", type=int, default=24, help="frames per sequence")
    s.add_argument("--size", type=int, default=128, help="frame side in pixels")
    s.add_argument("--subframes", type=int, default=d.subframes, help="sharp instants = spike frames per exposure")
    s.add_argument("--threshold", type=float, default=d.threshold, help="integrate-and-fire threshold (intensity in [0, 1] per spike frame)")
    s.add_argument("--noise", type=float, default=d.noise_std, help="std of Gaussian noise added to the accumulator per spike frame")
    s.add_argument("--max-speed", type=float, default=d.max_speed, help="camera speed, pixels per frame")
    s.add_argument("--voxel-bins", type=int, default=0, help="also write voxel/<stem>.npy with this many bins (0: no)")
    s.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("voxelize", help="write voxel/<stem>.npy (float16 firing rates) next to every spike/<stem>.dat")
    v.add_argument("--root", required=True)
    v.add_argument("--bins", type=int, default=32)
    v.add_argument("--spike-dir", default="spike")
    v.add_argument("--voxel-dir", default="voxel")
    v.add_argument("--height", type=int, help="spike rows (default: meta.json, else the blurry frame's)")
    v.add_argument("--width", type=int)
    v.add_argument("--format", choices=["bitpacked", "bytes"], help="spike .dat layout (default: meta.json's spike_format, else bitpacked)")
    v.add_argument("--flipud", action=argparse.BooleanOptionalAction, default=None,
                   help="rows are stored bottom-up; --no-flipud: top-down (default: meta.json's flipud, else bottom-up)")
    return p


def main(args: list[str]) -> None:
    a = parser().parse_args(args)
    if a.cmd == "simulate":
        for flag, value in (("--frames", a.frames), ("--subframes", a.subframes)):
            if value < 1:
                raise UserError(f"{flag} {value}: use 1 or more")
        if a.size < 8 or a.size % 8:
            raise UserError(f"--size {a.size}: use a positive multiple of 8 (bitpacked spike frames and the network's three 2x downsamplings)")
        cfg = sim.SimSettings(size=a.size, frames=a.frames, subframes=a.subframes, threshold=a.threshold, noise_std=a.noise, max_speed=a.max_speed)
        images = Path(a.images) if a.images else None
        if images is not None and not images.is_dir():
            raise UserError(f"--images {images} is not a folder")
        try:
            out = sim.generate(Path(a.out), cfg, a.train_sequences, a.val_sequences, a.seed, images, a.voxel_bins or None)
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"wrote {a.train_sequences} train and {a.val_sequences} val sequences of {a.frames} frames ({a.size}x{a.size}, "
              f"{a.subframes} spike frames per exposure) to {out}")
    else:
        root = Path(a.root)
        if not root.is_dir():
            raise UserError(f"--root {root} is not a folder")
        try:
            n = sim.precompute_voxels(root, a.bins, a.spike_dir, a.voxel_dir, a.height, a.width, a.format, a.flipud)
        except ValueError as e:
            raise UserError(str(e)) from None
        print(f"wrote {n} voxel files ({a.bins} bins) under {root}")
