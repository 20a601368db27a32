"""The vrt_spike recipe's config schema (imports no torch: `trainhub config vrt_spike` and `--help` read it alone), and the worker-count settings it derives."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from trainhub.config import DistillConfig, LoaderConfig, RunConfig, Section, TrainConfig
from trainhub.errors import UserError

if TYPE_CHECKING:
    from trainhub_vrt_spike.model import ChunkSpec

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def total_workers(setting: Union[int, str], cpus: int, processes: int) -> tuple[int, int]:
    """``data.total_workers`` -> (total workers on this machine, workers per training process).

    ``"auto"``: 80% of the CPUs, split over the training processes (one per GPU); at least 4 per
    process where the machine has 4 CPUs per process; never more than the CPU count in total.
    ``"cpu*F"``: F x CPUs, split the same way. An int: that many in total, split the same way.
    """
    processes = max(1, processes)
    if isinstance(setting, str):
        s = setting.strip().lower().replace(" ", "")
        if s == "auto":
            frac = 0.8
        elif s.startswith("cpu*"):
            try:
                frac = float(s[4:])
            except ValueError:
                raise UserError(f"data.total_workers={setting!r}: use auto, cpu*FRACTION (e.g. cpu*0.9) or an integer") from None
        else:
            raise UserError(f"data.total_workers={setting!r}: use auto, cpu*FRACTION (e.g. cpu*0.9) or an integer")
        per = int(cpus * frac) // processes
        if setting.strip().lower() == "auto" and per < 4 and 4 * processes <= cpus:
            per = 4
    else:
        per = int(setting) // processes
    per = max(0, min(per, cpus // processes))
    return per * processes, per


class ChunkConfig(Section):
    """Per-pixel temporal attention, cut into spatial chunks to bound memory (same result as unchunked)."""

    heads: int = Field(2, ge=1, description="attention heads; must divide the attended channels (spike_tsa: spike_dim; "
                       "fuse: the embed_dims of fuse_stages)")
    adaptive_chunk: bool = Field(True, description="chunks as large as max_batch_tokens allows (else chunk_size)")
    max_batch_tokens: int = Field(49152, ge=1, description="batch x pixels x key tokens per chunk (adaptive_chunk)")
    chunk_size: int = Field(64, ge=0, description="square side or rows per chunk when adaptive_chunk is off; 0 = no chunking")
    chunk_shape: Literal["square", "rows"] = Field("square", description="chunks are squares, or bands of whole rows")

    def spec(self) -> "ChunkSpec":
        from trainhub_vrt_spike.model import ChunkSpec

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
    mlp_ratio: float = Field(2.0, gt=0.0, description="GEGLU MLP hidden width = the stage's embed_dim x this (VRT: 2)")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth, rising linearly from 0 to this over "
                                  "all TMSA layers (VRT: 0.2)")
    upscale: Literal[1] = Field(1, description="1: deblurring (same resolution in and out)")
    use_checkpoint_attn: bool = Field(False, description="recompute attention (and spike attention chunks) in backward")
    use_checkpoint_ffn: bool = Field(False, description="recompute the MLPs in backward")
    flow_width: int = Field(16, ge=1, description="channels of the learned flow estimator")
    flow_use_spike: bool = Field(True, description="the flow estimator also sees the spike firing rate")
    flow_weights: Optional[str] = Field(None, description="local file (safetensors or .pth state dict) for the flow estimator; "
                                        "nothing is ever downloaded")
    max_residue_magnitude: float = Field(10.0, ge=0.0, description="bound of the learned flow correction (pixels at full scale)")
    spike_dim: int = Field(16, ge=1, description="channels of the spike encoder's tokens (and of its 1/2, 1/4, 1/8 pyramid)")
    spike_segments: int = Field(4, ge=1, description="spike tokens per frame (sub-exposures); must divide the spike channels")
    spike_encoder_blocks: int = Field(1, ge=0, description="residual conv blocks encoding each spike segment, before "
                                      "the temporal attention")
    spike_tsa: SpikeTSAConfig = SpikeTSAConfig()
    fuse: ChunkConfig = ChunkConfig()
    fuse_stages: list[int] = Field([1, 2, 3, 4], description="stages (1-7) after which spike features are fused")
    loss: Literal["charbonnier", "l1"] = Field("charbonnier", description="charbonnier (VRT's: mean sqrt((output - sharp)^2 "
                                               "+ eps^2)) or l1")
    charbonnier_eps: float = Field(1e-3, gt=0.0, description="eps of the Charbonnier loss")
    profile: bool = Field(False, description="time every stage's forward (CUDA events / timers), logged as time/<part>_ms")

    def heads(self) -> list[int]:
        return [self.num_heads] * len(self.depths) if isinstance(self.num_heads, int) else list(self.num_heads)

    def window(self) -> tuple[int, int, int]:
        w = self.window_size
        if isinstance(w, int):
            return (self.window_frames, w, w)
        return (w[0], w[1], w[2])


class EmbeddedData(Section):
    """The simulated dataset used when data.root is not set (generated once into the cache folder)."""

    size: int = Field(64, ge=16, description="side of the simulated square frames and spike maps in pixels")
    frames: int = Field(12, ge=1, description="frames per sequence")
    train_sequences: int = Field(5, ge=1, description="training sequences, from 4 bundled photographs in turn")
    val_sequences: int = Field(2, ge=0, description="validation sequences, from 2 held-out photographs (0: no validation)")
    subframes: int = Field(32, ge=1, description="sharp instants = spike frames per exposure")
    threshold: float = Field(2.0, gt=0.0, description="integrate-and-fire threshold: a pixel spikes when its accumulated "
                             "luminance (0..1 per spike frame) reaches it")
    noise_std: float = Field(0.02, ge=0.0, description="std of the Gaussian noise added to each accumulator per spike frame")
    max_speed: float = Field(10.0, ge=0.0, description="camera speed per axis, pixels per frame")
    seed: int = Field(0, description="seeds the simulation (camera motions, spike accumulators and noise)")
    dir: Optional[str] = Field(None, description="where to generate it (default $TRAINHUB_CACHE/vrt_spike, else ~/.cache/trainhub/vrt_spike, as every recipe caches)")


class VRTSpikeData(Section):
    root: Optional[str] = Field(None, description="dataset root (<root>/<split>/<sequence>/{blur,sharp,spike|voxel}); null = embedded")
    train_split: str = Field("train", description="subfolder of root holding the training sequences")
    val_split: str = Field("val", description="GoPro+Spike calls it test")
    seq_len: int = Field(2, ge=1, description="frames per clip")
    clip_stride: int = Field(1, ge=1, description="frames between training clip starts")
    train_crop_size: Optional[int] = Field(32, ge=8, description="random square crop for training (null: full frames)")
    val_crop_size: Optional[int] = Field(None, ge=8, description="centre crop for evaluation (null: full frames)")
    val_max_clips: int = Field(4, description="evaluate at most N clips spread over the val sequences (-1: all)")
    flips: bool = Field(True, description="random horizontal and vertical flips")
    num_bins: int = Field(32, ge=1, description="voxel bins per frame")
    spike_input: Literal["voxel", "raw"] = Field("voxel", description="voxel bins, or the raw binary spike frames as channels")
    use_precomputed_voxels: bool = Field(False, description="read <sequence>/<voxel_dir>/<stem>.npy instead of voxelising .dat on the fly")
    spike_dir: str = Field("spike", description="folder of each sequence holding the .dat spike streams")
    voxel_dir: str = Field("voxel", description="folder of each sequence holding precomputed voxels (use_precomputed_voxels; "
                           "`trainhub prepare vrt_spike voxelize` writes it)")
    spike_format: Optional[Literal["bitpacked", "bytes"]] = Field(None, description=".dat layout: 8 pixels per byte, or one byte "
                                                                  "per pixel (null: meta.json, else bitpacked)")
    spike_flipud: Optional[bool] = Field(None, description="rows stored bottom-up (null: meta.json, else true)")
    spike_height: Optional[int] = Field(None, ge=1, description="spike sensor rows (null: meta.json, else the frame height)")
    spike_width: Optional[int] = Field(None, ge=1, description="spike sensor columns (null: meta.json, else the frame width); "
                                       "used only with spike_height")
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
        lr=4e-4, batch_size=2, max_steps=1500, schedule="cosine", warmup_steps=20, eval_every=500, checkpoint_every=500,
        log_every=50, best_metric="psnr", best_mode="max", ema=dict(decay=0.99),
    )
    loader: LoaderConfig = LoaderConfig(prefetch_factor=2)
    distill: DistillConfig = Field(default_factory=DistillConfig,
                                   description="knowledge distillation from a trained vrt_spike teacher (distill.teacher=RUN_DIR)")

    @model_validator(mode="after")
    def _check_model(self) -> "VRTSpikeConfig":
        """Shapes the network cannot take, as one line naming the keys (before anything is built)."""
        m = self.model
        w = m.window_size
        if isinstance(w, list) and len(w) != 3 or min([w] if isinstance(w, int) else w) < 1:
            raise ValueError(f"model.window_size={w}: use one number >= 1 or [frames, height, width], each >= 1")
        if len(set(m.embed_dims[7:])) > 1:
            raise ValueError(f"model.embed_dims={m.embed_dims}: entries 8 onward (the stage-8 groups of model.depths) share one "
                             f"width, got {m.embed_dims[7:]}")
        return self

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
