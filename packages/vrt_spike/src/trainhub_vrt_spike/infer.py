"""Restore whole sequences with a trained model (``trainhub sample vrt_spike``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainhub import UserError
from trainhub.kit.media import save_png, to_uint8_image
from trainhub_vrt_spike.data import IMAGE_SUFFIXES, SpikeDeblurDataset, frame_stems, read_meta
from trainhub_vrt_spike.metrics import psnr


def sequence_folders(path: Path) -> list[Path]:
    if (path / "blur").is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "blur").is_dir()) if path.is_dir() else []
    if not found:
        raise UserError(f"--input {path}: neither a sequence folder (with blur/) nor a folder of them")
    return found


def clip_starts(frames: int, length: int) -> list[int]:
    """Starts of clips covering ``frames`` frames: back to back, the last one aligned to the end."""
    starts = list(range(0, frames - length + 1, length))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return starts


def restore_folder(model: nn.Module, config: Any, path: Path, out_dir: Path, max_frames: int = 0) -> None:
    """Write ``<out>/<sequence>/restored/<stem>.png`` for every frame and a ``<sequence>_strip.png``
    (blurry | restored | sharp when present) of its first frames; prints PSNR when sharp frames exist."""
    from trainhub_vrt_spike.recipe import dataset_kwargs, strip

    if max_frames < 0:
        raise UserError(f"--max-frames {max_frames}: use 0 (all frames) or a positive number")
    device = next(model.parameters()).device
    for seq in sequence_folders(path):
        meta = next((read_meta(p) for p in (seq, seq.parent, seq.parent.parent) if (p / "meta.json").is_file()), {})
        n = len(frame_stems(seq / "blur"))
        if not n:
            raise UserError(f"--input {seq}: no frames ({'/'.join(IMAGE_SUFFIXES)}) in {seq / 'blur'}")
        if max_frames:
            n = min(n, max_frames)
        length = min(config.data.seq_len, n)
        has_sharp = (seq / "sharp").is_dir()
        ds = SpikeDeblurDataset(seq.parent, ".", length, meta=meta, only=seq.name, targets=has_sharp, **dataset_kwargs(config))
        dest = out_dir / seq.name / "restored"
        done: set[int] = set()
        scores: list[float] = []
        first: tuple[torch.Tensor, ...] = ()
        for start in clip_starts(n, length):
            frames = [ds.frame(g)[0] for g in range(start, start + length)]
            blur = torch.stack([torch.from_numpy(f[0]).float() / 255 for f in frames])[None].to(device)
            spike = torch.stack([torch.from_numpy(f[2]).float() for f in frames])[None].to(device)
            out = model(blur, spike).float().clamp(0, 1)[0]
            for k in range(length):
                g = start + k
                if g in done:
                    continue
                done.add(g)
                save_png(dest / f"{ds.frame_stem[g]}.png", to_uint8_image(out[k], (0.0, 1.0)))
                if has_sharp:
                    sharp = torch.from_numpy(frames[k][1]).float().div(255)[None].to(device)
                    scores.append(float(psnr(out[k : k + 1], sharp)))
            if not first:
                sharp = torch.stack([torch.from_numpy(f[1]).float() / 255 for f in frames]).to(device) if has_sharp else out
                first = (blur[0], out, sharp, spike[0])
        save_png(out_dir / f"{seq.name}_strip.png", strip(*first))
        msg = f"{seq.name}: {len(done)} frames restored -> {dest}"
        if scores:
            msg += f" (PSNR {sum(scores) / len(scores):.2f} dB)"
        print(msg)
