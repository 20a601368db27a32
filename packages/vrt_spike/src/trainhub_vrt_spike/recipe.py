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
from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, LoaderConfig, Recipe, RunConfig, Section, StepContext, TrainConfig, UserError
from trainhub.kit.distill import DistillConfig, init_from_teacher, load_teacher, spread_layers
from trainhub.kit.media import make_grid

from trainhub_vrt_spike import seed_config
from trainhub_vrt_spike.data import SpikeDeblurDataset, cpu_count, read_meta, total_workers
from trainhub_vrt_spike.metrics import psnr, ssim
from trainhub_vrt_spike.model import ChunkSpec, TMSAGroup, VRTSpike
from trainhub_vrt_spike.simulate import SimSettings, ensure_embedded


# ---- config ---------------------------------------------------------------------------------------

class ChunkConfig(Section):
    """Per-pixel temporal attention, cut into spatial chunks to bound memory (same result as unchunked)."""

    heads: int = Field(2, ge=1)
    adaptive_chunk: bool = Field(True, description="chunks as large as max_batch_tokens allows (else chunk_size)")
    max_batch_tokens: int = Field(49152, ge=1, description="batch x pixels x key tokens per chunk (adaptive_chunk)")
    chunk_size: int = Field(64, ge=0, description="square side or rows per chunk when adaptive_chunk is off; 0 = no chunking")
    chunk_shape: Literal["square", "rows"] = "square"

    def spec(self) -> ChunkSpec:
        return ChunkSpec(self.heads, self.adaptive_chunk, self.max_batch_tokens, self.chunk_size, self.chunk_shape)


class SpikeTSAConfig(ChunkConfig):
    enabled: bool = Field(True, description="temporal self-attention over the spike tokens of each pixel")


class VRTSpikeModel(Section):
    """Defaults: a CPU-sized network for the embedded run; configs/baseline.yaml has the VRT-sized one."""

    name: str = Field("vrt-spike", description="a registered model name")
    depths: list[int] = Field([2, 2, 2, 2, 1, 1, 1, 2], description="layers per stage: stages 1-7 (U-shape), then stage-8 groups")
    embed_dims: list[int] = Field([16, 16, 16, 16, 16, 16, 16, 24], description="channels per stage (same length as depths)")
    num_heads: Union[int, list[int]] = Field(2, description="attention heads, one number or one per stage")
    window_size: Union[int, list[int]] = Field(8, description="spatial window side, or [frames, height, width]")
    window_frames: int = Field(6, ge=1, description="temporal window when window_size is one number")
    mul_attn_ratio: float = Field(0.75, ge=0.0, le=1.0, description="share of a stage's layers with mutual attention")
    mlp_ratio: float = Field(2.0, gt=0.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    upscale: Literal[1] = Field(1, description="1: deblurring (same resolution in and out)")
    use_checkpoint_attn: bool = Field(False, description="recompute attention (and spike attention chunks) in backward")
    use_checkpoint_ffn: bool = Field(False, description="recompute the MLPs in backward")
    flow_width: int = Field(16, ge=1, description="channels of the learned flow estimator")
    flow_use_spike: bool = Field(True, description="the flow estimator also sees the spike firing rate")
    flow_weights: Optional[str] = Field(None, description="local file (safetensors or .pth state dict) for the flow estimator; "
                                        "nothing is ever downloaded")
    max_residue_magnitude: float = Field(10.0, ge=0.0, description="bound of the learned flow correction (pixels at full scale)")
    spike_dim: int = Field(16, ge=1)
    spike_segments: int = Field(4, ge=1, description="spike tokens per frame (sub-exposures); must divide the spike channels")
    spike_encoder_blocks: int = Field(1, ge=0)
    spike_tsa: SpikeTSAConfig = SpikeTSAConfig()
    fuse: ChunkConfig = ChunkConfig()
    fuse_stages: list[int] = Field([1, 2, 3, 4], description="stages (1-7) after which spike features are fused")
    loss: Literal["charbonnier", "l1"] = "charbonnier"
    charbonnier_eps: float = Field(1e-3, gt=0.0)
    profile: bool = Field(False, description="time every stage's forward (CUDA events / timers), logged as time/<part>_ms")

    def heads(self) -> list[int]:
        return [self.num_heads] * len(self.depths) if isinstance(self.num_heads, int) else list(self.num_heads)

    def window(self) -> tuple[int, int, int]:
        w = self.window_size
        if isinstance(w, int):
            return (self.window_frames, w, w)
        if len(w) != 3:
            raise UserError(f"model.window_size must be one number or [frames, height, width], got {w}")
        return (w[0], w[1], w[2])


class EmbeddedData(Section):
    """The simulated dataset used when data.root is not set (generated once into the cache folder)."""

    size: int = Field(64, ge=16)
    frames: int = Field(12, ge=1, description="frames per sequence")
    train_sequences: int = Field(5, ge=1)
    val_sequences: int = Field(2, ge=0)
    subframes: int = Field(32, ge=1, description="sharp instants = spike frames per exposure")
    threshold: float = Field(2.0, gt=0.0)
    noise_std: float = Field(0.02, ge=0.0)
    max_speed: float = Field(10.0, ge=0.0, description="camera speed per axis, pixels per frame")
    seed: int = 0
    dir: Optional[str] = Field(None, description="where to generate it (default $TRAINHUB_CACHE_DIR/vrt_spike or ~/.cache/trainhub/vrt_spike)")


class VRTSpikeData(Section):
    root: Optional[str] = Field(None, description="dataset root (<root>/<split>/<sequence>/{blur,sharp,spike|voxel}); null = embedded")
    train_split: str = "train"
    val_split: str = Field("val", description="GoPro+Spike calls it test")
    seq_len: int = Field(4, ge=1, description="frames per clip")
    clip_stride: int = Field(1, ge=1, description="frames between training clip starts")
    train_crop_size: Optional[int] = Field(32, ge=8, description="random square crop for training (null: full frames)")
    val_crop_size: Optional[int] = Field(None, ge=8, description="centre crop for evaluation (null: full frames)")
    val_max_clips: int = Field(4, description="evaluate at most N clips spread over the val sequences (-1: all)")
    flips: bool = Field(True, description="random horizontal and vertical flips")
    num_bins: int = Field(32, ge=1, description="voxel bins per frame")
    spike_input: Literal["voxel", "raw"] = Field("voxel", description="voxel bins, or the raw binary spike frames as channels")
    use_precomputed_voxels: bool = Field(False, description="read <sequence>/<voxel_dir>/<stem>.npy instead of voxelising .dat on the fly")
    spike_dir: str = "spike"
    voxel_dir: str = "voxel"
    spike_format: Literal["bitpacked", "bytes"] = Field("bitpacked", description=".dat layout: 8 pixels per byte, or one byte per pixel")
    spike_flipud: Optional[bool] = Field(None, description="rows stored bottom-up (null: meta.json, else true)")
    spike_height: Optional[int] = Field(None, ge=1, description="spike sensor rows (null: meta.json, else the frame height)")
    spike_width: Optional[int] = Field(None, ge=1)
    spike_frames: Optional[int] = Field(None, ge=1, description="spike frames per exposure (raw input; null: meta.json or the files)")
    use_ram_cache: bool = Field(True, description="LRU RAM cache of decoded frames (training set)")
    cache_size_gb: float = Field(1.0, ge=0.0, description="cache budget for all DataLoader workers of all local ranks together")
    total_workers: Union[int, str, None] = Field(None, description="auto (80% of CPUs over the GPUs, >= 4 each), cpu*F, or N in "
                                                 "total; sets loader.num_workers; null = keep loader.num_workers")
    embedded: EmbeddedData = EmbeddedData()

    @field_validator("total_workers")
    @classmethod
    def _workers(cls, v: Union[int, str, None]) -> Union[int, str, None]:
        if isinstance(v, str):
            total_workers(v, 1, 1)  # raises a clear error on anything but auto / cpu*F
        elif isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0")
        return v


class VRTSpikeTrain(TrainConfig):
    memory_log_every: int = Field(100, ge=0, description="print a process/system memory line every N steps (0: off)")


class VRTSpikeConfig(RunConfig):
    model: VRTSpikeModel = VRTSpikeModel()
    data: VRTSpikeData = VRTSpikeData()
    train: VRTSpikeTrain = VRTSpikeTrain(
        lr=4e-4, batch_size=2, max_steps=300, schedule="cosine", warmup_steps=20, eval_every=100, checkpoint_every=100,
        log_every=10, best_metric="psnr", best_mode="max", ema=dict(decay=0.99),
    )
    loader: LoaderConfig = LoaderConfig(prefetch_factor=2)
    distill: DistillConfig = Field(default_factory=DistillConfig,
                                   description="knowledge distillation from a trained vrt_spike teacher (distill.teacher=RUN_DIR)")

    @model_validator(mode="after")
    def _apply_total_workers(self) -> "VRTSpikeConfig":
        """``data.total_workers`` decides ``loader.num_workers`` (per training process)."""
        if self.data.total_workers is not None:
            _, per = total_workers(self.data.total_workers, cpu_count(), local_processes())
            if self.loader.num_workers != per:
                self.loader = self.loader.model_copy(update={"num_workers": per})
        return self


def local_processes() -> int:
    """Training processes on this machine (one per GPU under torchrun)."""
    import os

    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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
    """DataLoader workers per rank, as core will start them."""
    from trainhub.training.data import auto_workers

    n = config.loader.num_workers
    return auto_workers(local_processes()) if n == "auto" else int(n)


def dataset_kwargs(config: VRTSpikeConfig) -> dict[str, Any]:
    d = config.data
    size = (d.spike_height, d.spike_width) if d.spike_height and d.spike_width else None
    return dict(num_bins=d.num_bins, spike_input=d.spike_input, use_precomputed_voxels=d.use_precomputed_voxels,
                spike_dir=d.spike_dir, voxel_dir=d.voxel_dir, spike_format=d.spike_format, spike_flipud=d.spike_flipud,
                spike_size=size, spike_frames=d.spike_frames)


# ---- the recipe -------------------------------------------------------------------------------------------

class VRTSpikeRecipe(Recipe):
    name = "vrt_spike"
    description = "spike-guided video deblurring with a VRT-style transformer (simulated spike data by default)"
    config_class = VRTSpikeConfig

    def build_models(self, config: VRTSpikeConfig) -> dict[str, nn.Module]:  # type: ignore[override]
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

    def _loss(self, config: VRTSpikeConfig) -> nn.Module:
        if not hasattr(self, "_loss_fn"):
            from trainhub.plugins import get_plugins

            cls = get_plugins().loss(config.model.loss)
            self._loss_fn = cls(eps=config.model.charbonnier_eps) if config.model.loss == "charbonnier" else cls()
        return self._loss_fn

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor | float]:
        out = ctx.models["model"](batch["blur"], batch["spike"])
        loss_fn = self._loss(ctx.config)  # type: ignore[arg-type]
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


def strip(blur: torch.Tensor, out: torch.Tensor, sharp: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) clips -> one image: rows of blurry input, restored, sharp target, spike firing rate."""
    rate = spike.float().mean(1, keepdim=True)
    rate = (rate / rate.amax().clamp_min(1e-6)).expand(-1, 3, -1, -1)
    return make_grid(torch.cat([blur, out, sharp, rate]).float().cpu(), nrow=blur.shape[0])


def describe_loader(config: VRTSpikeConfig) -> str:
    """One line about the data-loading set-up (printed at run start)."""
    d, lo = config.data, config.loader
    workers = loader_workers(config)
    cache = f"RAM cache {d.cache_size_gb:g} GB over {max(1, workers) * local_processes()} processes" if d.use_ram_cache else "no RAM cache"
    how = f"total_workers {d.total_workers}: " if d.total_workers is not None else ""
    return (f"[vrt_spike] DataLoader: {how}{workers} workers per process ({cpu_count()} CPUs, {local_processes()} local processes), "
            f"prefetch {lo.prefetch_factor}, pin_memory {'auto' if lo.pin_memory is None else lo.pin_memory}, persistent {lo.persistent_workers}, drop_last {lo.drop_last}; {cache}")

