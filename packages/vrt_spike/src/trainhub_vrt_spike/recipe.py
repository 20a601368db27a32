"""The ``vrt_spike`` recipe: spike-guided video deblurring with a VRT-style transformer.

    trainhub run vrt_spike                                      embedded default: simulated spike data, CPU-sized model
    trainhub run vrt_spike --config $(trainhub vrt_spike presets --path opt) data.root=data/gopro_spike
    trainhub run vrt_spike --config seed_style.yaml             uppercase MODEL/DATA/DATALOADER/TRAIN files are mapped
    trainhub run vrt_spike model.depths=[1,1,1,1,1,1,1,1] distill.teacher=runs/vrt_spike/TEACHER distill.init_from_teacher=true
    trainhub prepare vrt_spike simulate --out data/gopro_spike --size 256 --frames 24
    trainhub prepare vrt_spike voxelize --root data/gopro_spike --bins 32
    trainhub sample vrt_spike --checkpoint runs/vrt_spike/NAME --input data/gopro_spike/val/coffee_001
    trainhub vrt_spike presets                                  the shipped presets and their paths
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, Recipe, StepContext, UserError
from trainhub.kit.distill import init_from_teacher, load_teacher, spread_layers
from trainhub.kit.media import labelled_grid
from trainhub_vrt_spike import seed_config
from trainhub_vrt_spike.config import VRTSpikeConfig, cpu_count, local_processes
from trainhub_vrt_spike.data import SpikeDeblurDataset, read_meta
from trainhub_vrt_spike.metrics import psnr, ssim
from trainhub_vrt_spike.model import TMSAGroup, VRTSpike
from trainhub_vrt_spike.simulate import SimSettings, ensure_embedded

# ---- config ---------------------------------------------------------------------------------------


# ---- building ---------------------------------------------------------------------------------------

def data_root(config: VRTSpikeConfig) -> Path:
    d = config.data
    if d.root:
        root = Path(d.root)
        if not root.is_dir():
            raise UserError(f"data.root={root} does not exist; make a dataset with `trainhub prepare vrt_spike simulate --out {root}` "
                            "or point data.root at GoPro+Spike data")
        return root
    e = d.embedded
    sim = SimSettings(size=e.size, frames=e.frames, subframes=e.subframes, threshold=e.threshold, noise_std=e.noise_std, max_speed=e.max_speed)
    return ensure_embedded(sim, e.train_sequences, e.val_sequences, e.seed, Path(e.dir) if e.dir else None)


def spike_channels(config: VRTSpikeConfig) -> int:
    """Spike channels per frame the network receives: voxel bins, or T raw spike frames."""
    d = config.data
    if d.spike_input == "voxel":
        return d.num_bins
    if d.spike_frames:
        return d.spike_frames
    if d.root is None:
        return d.embedded.subframes
    t = read_meta(Path(d.root)).get("spike_frames")
    if t is None:
        raise UserError("data.spike_input=raw needs data.spike_frames (spike frames per exposure) or a meta.json with spike_frames")
    return int(t)


def build_model(config: VRTSpikeConfig) -> nn.Module:
    from trainhub.plugins import get_plugins

    m = config.model
    channels = spike_channels(config)
    if channels % m.spike_segments:
        raise UserError(f"model.spike_segments={m.spike_segments} must divide the {channels} spike channels per frame")
    heads = m.heads()
    if len(m.embed_dims) != len(m.depths) or len(heads) != len(m.depths) or len(m.depths) < 8:
        raise UserError(f"model.depths ({len(m.depths)}), embed_dims ({len(m.embed_dims)}) and num_heads ({len(heads)}) need one "
                        "entry per stage, at least 8")
    for i, (dim, h) in enumerate(zip(m.embed_dims, heads)):
        if dim % h:
            raise UserError(f"model.embed_dims[{i}]={dim} is not divisible by num_heads[{i}]={h}")
    if any(d % 4 for d in m.embed_dims[4:7]):
        raise UserError(f"model.embed_dims of stages 4-6 must be divisible by 4 (2x pixel shuffle up), got {m.embed_dims[3:7]}")
    for name, spec in (("fuse", m.fuse), ("spike_tsa", m.spike_tsa)):
        dims = [m.embed_dims[s - 1] for s in m.fuse_stages] if name == "fuse" else [m.spike_dim]
        if any(d % spec.heads for d in dims):
            raise UserError(f"model.{name}.heads={spec.heads} must divide the fused channel counts {dims}")
    if any(not 1 <= s <= 7 for s in m.fuse_stages):
        raise UserError(f"model.fuse_stages must lie in 1..7, got {m.fuse_stages}")
    net = get_plugins().model(m.name)(
        spike_channels=channels, depths=m.depths, embed_dims=m.embed_dims, num_heads=heads, window_size=m.window(),
        mul_attn_ratio=m.mul_attn_ratio, mlp_ratio=m.mlp_ratio, drop_path_rate=m.drop_path_rate, upscale=m.upscale,
        use_checkpoint_attn=m.use_checkpoint_attn, use_checkpoint_ffn=m.use_checkpoint_ffn, flow_width=m.flow_width,
        flow_use_spike=m.flow_use_spike, max_residue_magnitude=m.max_residue_magnitude, spike_dim=m.spike_dim,
        spike_segments=m.spike_segments, spike_encoder_blocks=m.spike_encoder_blocks,
        spike_tsa=m.spike_tsa.spec() if m.spike_tsa.enabled else None, fuse=m.fuse.spec(), fuse_stages=m.fuse_stages, profile=m.profile,
    )
    if m.flow_weights:
        load_flow_weights(net, Path(m.flow_weights))
    return net


def load_flow_weights(net: nn.Module, path: Path) -> None:
    """Load a local flow-estimator state dict (keys with or without a ``flow.`` prefix)."""
    if not path.is_file():
        raise UserError(f"model.flow_weights={path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("flow."):] if k.startswith("flow.") else k: v for k, v in state.items()}
    try:
        net.flow.load_state_dict(state)  # type: ignore[union-attr]
    except RuntimeError as e:
        raise UserError(f"model.flow_weights={path} does not fit the flow estimator (model.flow_width, flow_use_spike): "
                        f"{str(e).splitlines()[0]}") from None


def build_teacher(recipe: Recipe, config: VRTSpikeConfig, student: nn.Module) -> nn.Module:
    """The frozen teacher of ``distill.teacher`` (built from its own saved config; a teacher that was itself
    distilled does not load its own teacher), checked against the student's inputs and feature widths."""
    dc = config.distill
    teacher = load_teacher(recipe, dc.model_copy(update={"teacher_overrides": [*dc.teacher_overrides, "distill.teacher=null"]}))
    if not isinstance(teacher, VRTSpike) or not isinstance(student, VRTSpike):
        raise UserError("distill.teacher: distillation needs vrt-spike models for both teacher and student")
    if teacher.spike_channels != student.spike_channels:
        raise UserError(f"distill.teacher takes {teacher.spike_channels} spike channels per frame, the student "
                        f"{student.spike_channels}: use the same data.num_bins / data.spike_input")
    if dc.feature_weight > 0:
        if not feature_pairs(student, teacher):
            raise UserError(f"distill.feature_weight > 0 needs stages of equal width in teacher and student; embed_dims are "
                            f"{teacher.embed_dims[:7]} (teacher) and {student.embed_dims[:7]} (student)")
        student.keep_features = teacher.keep_features = True
    return teacher


def teacher_layers(student: VRTSpike, teacher: VRTSpike) -> dict[str, list[int]]:
    """For every attention group of the student (``stages.I.mutual``, ``stages.I.self_attn``, ``stage8.G``):
    the teacher layers of the same group its layers start from (``spread_layers`` with the shift parity kept:
    every other layer of a group twice as deep, shifted layers from shifted ones)."""
    tgroups = {n: len(m.blocks) for n, m in teacher.named_modules() if isinstance(m, TMSAGroup)}
    picks = {}
    for name, m in student.named_modules():
        if isinstance(m, TMSAGroup):
            if len(m.blocks) > tgroups.get(name, 0):
                raise UserError(f"distill.init_from_teacher: the student's {name} has {len(m.blocks)} layers, the teacher's "
                                f"{tgroups.get(name, 0)}: a student initialised from its teacher needs depths <= the teacher's per stage")
            picks[name] = spread_layers(tgroups[name], len(m.blocks), keep_parity=True)
    return picks


def init_student(student: VRTSpike, teacher: VRTSpike) -> dict[str, list[int]]:
    """Copy the teacher into the student: every tensor outside the attention groups by name, the layers of each
    group from ``teacher_layers``. Shapes must match (same embed_dims, heads, window, spike and flow settings)."""
    picks = teacher_layers(student, teacher)
    pattern = re.compile(r"^(.+)\.blocks\.(\d+)\.(.+)$")

    def key_map(key: str) -> str:
        m = pattern.match(key)
        if m and m.group(1) in picks:
            return f"{m.group(1)}.blocks.{picks[m.group(1)][int(m.group(2))]}.{m.group(3)}"
        return key

    init_from_teacher(student, teacher, key_map, hint="the student needs the teacher's embed_dims, num_heads, window, "
                      "fuse_stages, spike and flow settings; only depths may be smaller")
    return picks


def feature_pairs(student: VRTSpike, teacher: VRTSpike) -> list[int]:
    """Stages (0-based, of 1-7) whose outputs have the same width in both networks."""
    return [i for i in range(7) if student.embed_dims[i] == teacher.embed_dims[i]]


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the paired stage outputs of their mean squared difference, relative to the mean over the same
    stages of the teacher features' mean square. The stage outputs are small (mean squares of 1e-3 down to 1e-10
    in a trained default model), so a plain MSE is negligible next to the restoration loss; one normaliser for
    all stages keeps their relative weight (a per-stage one would blow up the nearly silent stages)."""
    diff = sum((s.float() - t.float()).square().mean() for s, t in zip(student, teacher))
    scale = sum(t.float().square().mean() for t in teacher)
    return diff / scale.clamp_min(1e-20)  # type: ignore[union-attr]


def distill_losses(ctx: StepContext, batch: dict[str, torch.Tensor], out: torch.Tensor, loss_fn: nn.Module,
                   restoration: torch.Tensor) -> dict[str, torch.Tensor]:
    """Restoration loss + ``output_weight`` x loss(student, teacher output) [+ ``feature_weight`` x ``feature_loss`` of the
    stage 1-7 outputs of equal width]. The teacher runs under no_grad and the trainer's autocast; with both weights 0
    (a student that only starts from the teacher's layers, ``init_from_teacher``) it does not run at all."""
    dc = ctx.config.distill  # type: ignore[attr-defined]
    if dc.output_weight == 0 and dc.feature_weight == 0:
        return {"restore": restoration.detach(), "loss": restoration}
    with torch.no_grad():
        target = ctx.models["teacher"](batch["blur"], batch["spike"])
    logs = {"restore": restoration.detach(), "distill_output": loss_fn(out.float(), target.float())}
    total = restoration + dc.output_weight * logs["distill_output"]
    if dc.feature_weight > 0:
        student, teacher = ctx.unwrap("model"), ctx.unwrap("teacher")
        pairs = feature_pairs(student, teacher)  # type: ignore[arg-type]
        feat = feature_loss([student.features[i] for i in pairs], [teacher.features[i] for i in pairs])
        student.features, teacher.features = [], []
        logs["distill_feature"] = feat  # type: ignore[assignment]
        total = total + dc.feature_weight * feat
    logs["loss"] = total
    return logs


def loader_workers(config: VRTSpikeConfig) -> int:
    """DataLoader workers per rank, as core's ``build_loader`` starts them (``auto`` depends on training on the CPU)."""
    from trainhub.training.data import auto_workers
    from trainhub.training.devices import select_device

    n = config.loader.num_workers
    if n != "auto":
        return int(n)
    cpu_training = select_device(config.train.device).type == "cpu"
    return auto_workers(local_processes(), cpu_training)  # core reads the same LOCAL_WORLD_SIZE


def dataset_kwargs(config: VRTSpikeConfig) -> dict[str, Any]:
    d = config.data
    size = (d.spike_height, d.spike_width) if d.spike_height and d.spike_width else None
    return dict(num_bins=d.num_bins, spike_input=d.spike_input, use_precomputed_voxels=d.use_precomputed_voxels,
                spike_dir=d.spike_dir, voxel_dir=d.voxel_dir, spike_format=d.spike_format, spike_flipud=d.spike_flipud,
                spike_size=size, spike_frames=d.spike_frames)


# ---- the recipe -------------------------------------------------------------------------------------------

def restoration_loss(config: VRTSpikeConfig) -> nn.Module:
    """``model.loss``, a registered loss (Charbonnier with ``model.charbonnier_eps``)."""
    from trainhub.plugins import get_plugins

    cls = get_plugins().loss(config.model.loss)
    return cls(eps=config.model.charbonnier_eps) if config.model.loss == "charbonnier" else cls()


class VRTSpikeRecipe(Recipe):
    name = "vrt_spike"
    description = "spike-guided video deblurring with a VRT-style transformer (simulated spike data by default)"
    config_class = VRTSpikeConfig

    def build_models(self, config: VRTSpikeConfig) -> dict[str, nn.Module]:  # type: ignore[override]
        self._loss_fn = restoration_loss(config)  # this run's (each run builds its own recipe)
        models = {"model": build_model(config)}
        if config.distill.teacher:
            models["teacher"] = build_teacher(self, config, models["model"])
            if config.distill.init_from_teacher:
                picks = init_student(models["model"], models["teacher"])  # type: ignore[arg-type]
                print("[vrt_spike] student initialised from the teacher; layers taken per group: "
                      + ", ".join(f"{k} {v}" for k, v in picks.items()), file=sys.stderr)
        return models

    def frozen_models(self, config: VRTSpikeConfig) -> tuple[str, ...]:  # type: ignore[override]
        return ("teacher",) if config.distill.teacher else ()

    def build_data(self, config: VRTSpikeConfig) -> tuple[Dataset, Optional[Dataset]]:  # type: ignore[override]
        d = config.data
        root = data_root(config)
        cache = int(d.cache_size_gb * 2**30) if d.use_ram_cache else 0
        train = SpikeDeblurDataset(root, d.train_split, d.seq_len, crop=d.train_crop_size, flips=d.flips, clip_stride=d.clip_stride,
                                   cache_bytes=cache, workers=loader_workers(config), **dataset_kwargs(config))
        val = None
        if (root / d.val_split).is_dir() and d.val_max_clips != 0:
            val = SpikeDeblurDataset(root, d.val_split, d.seq_len, center_crop=d.val_crop_size, clip_stride=d.seq_len,
                                     max_clips=d.val_max_clips, **dataset_kwargs(config))
        return train, val

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return model.transformer_blocks() if isinstance(model, VRTSpike) else super().blocks(model)

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor | float]:
        out = ctx.models["model"](batch["blur"], batch["spike"])
        loss_fn = self._loss_fn
        logs: dict[str, torch.Tensor | float] = {"loss": loss_fn(out.float(), batch["sharp"])}
        if "teacher" in ctx.models:
            logs.update(distill_losses(ctx, batch, out, loss_fn, logs["loss"]))  # type: ignore[arg-type]
        if ctx.config.model.profile:  # type: ignore[attr-defined]
            for part, ms in ctx.unwrap("model").timings.items():
                logs[f"time/{part}_ms"] = ms
        if "cache_hit" in batch:
            logs["cache_hit_rate"] = batch["cache_hit"].float().mean()
        return logs

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        net = ctx.models["model"]
        sums = {"psnr": 0.0, "ssim": 0.0, "psnr_blur": 0.0, "ssim_blur": 0.0}
        count, shown = 0, False
        for batch in ctx.data or []:
            blur, sharp, spike = (batch[k].to(ctx.device) for k in ("blur", "sharp", "spike"))
            with ctx.autocast():
                out = net(blur, spike)
            out = out.float().clamp(0, 1)
            flat = lambda t: t.flatten(0, 1)  # noqa: E731
            sums["psnr"] += float(psnr(flat(out), flat(sharp)).sum())
            sums["ssim"] += float(ssim(flat(out), flat(sharp)).sum())
            sums["psnr_blur"] += float(psnr(flat(blur), flat(sharp)).sum())
            sums["ssim_blur"] += float(ssim(flat(blur), flat(sharp)).sum())
            count += out.shape[0] * out.shape[1]
            if not shown:
                ctx.media.image("blur_restored_sharp_spike", strip(blur[0], out[0], sharp[0], spike[0]),
                                caption="rows: blurry input | restored | sharp target | spike firing rate", value_range=(0.0, 1.0))
                shown = True
        if not count:
            return {}
        res = {k: v / count for k, v in sums.items()}
        res["psnr_gain"] = res["psnr"] - res["psnr_blur"]
        return res

    # ---- other commands ----
    def map_config(self, raw: dict[str, Any], path: Path) -> dict[str, Any]:
        return seed_config.map_config(raw, path)

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", required=True, help="a sequence folder (blur/ + spike/ or voxel/), or a folder of them")
        parser.add_argument("--max-frames", type=int, default=0, help="restore at most N frames per sequence (0: all)")

    def sample(self, models: dict[str, nn.Module], config: VRTSpikeConfig, args: argparse.Namespace, out_dir: Path) -> None:  # type: ignore[override]
        from trainhub_vrt_spike.infer import restore_folder

        restore_folder(models["model"], config, Path(args.input), out_dir, args.max_frames)

    def prepare(self, args: list[str]) -> None:
        from trainhub_vrt_spike.prepare import main

        main(args)

    def command(self, args: list[str]) -> None:
        p = argparse.ArgumentParser(prog="trainhub vrt_spike", description="vrt_spike tools")
        sub = p.add_subparsers(dest="cmd", required=True)
        pr = sub.add_parser("presets", help="list the shipped config presets (or print one's path)")
        pr.add_argument("--path", metavar="NAME", help="print the file path of preset NAME (for --config)")
        a = p.parse_args(args)
        names = seed_config.presets()
        if a.path:
            if a.path not in names:
                raise UserError(f"unknown preset {a.path!r}; presets: {', '.join(names)}")
            print(seed_config.CONFIG_DIR / f"{a.path}.yaml")
            return
        for n in names:
            first = (seed_config.CONFIG_DIR / f"{n}.yaml").read_text().splitlines()[0].lstrip("# ").removeprefix(f"{n}: ")
            print(f"{n:12s} {first}")


def strip(blur: torch.Tensor, out: torch.Tensor, sharp: torch.Tensor, spike: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) clips -> one labelled picture: a column per frame, rows of blurry input, restored, sharp target
    and spike firing rate (H x W x 3 uint8)."""
    rate = spike.float().mean(1, keepdim=True)
    rate = (rate / rate.amax().clamp_min(1e-6)).expand(-1, 3, -1, -1)
    frames = blur.shape[0]
    return labelled_grid(torch.cat([blur, out, sharp, rate]).float().cpu(), frames,
                         col_titles=[f"frame {i + 1}" for i in range(frames)],
                         row_titles=["blurry", "restored", "sharp", "spike rate"], value_range=(0.0, 1.0))


def describe_loader(config: VRTSpikeConfig) -> str:
    """One line about the data-loading set-up (printed at run start)."""
    d, lo = config.data, config.loader
    workers = loader_workers(config)
    cache = f"RAM cache {d.cache_size_gb:g} GB over {max(1, workers) * local_processes()} processes" if d.use_ram_cache else "no RAM cache"
    how = f"total_workers {d.total_workers}: " if d.total_workers is not None else ""
    return (f"[vrt_spike] DataLoader: {how}{workers} workers per process ({cpu_count()} CPUs, {local_processes()} local processes), "
            f"prefetch {lo.prefetch_factor}, pin_memory {'auto' if lo.pin_memory is None else lo.pin_memory}, persistent {lo.persistent_workers}, drop_last {lo.drop_last}; {cache}")

