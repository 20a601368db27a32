"""The timbre_gan recipe's config schema (imports no torch: `trainhub config timbre_gan` and `--help` read it alone)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from trainhub.config import RunConfig, Section, TrainConfig

Resolution = tuple[int, int, int]


PWG = [(1024, 120, 600), (2048, 240, 1200), (512, 50, 240)]


class GeneratorConfig(Section):
    name: str = Field("timbre-gan-generator", description="a registered model name")
    channels: int = Field(16, ge=1, description="channels at full resolution, doubled at each encoder level")
    strides: list[int] = Field([4, 4], description="down-sampling factor of each encoder level")
    res_blocks: int = Field(1, ge=0, description="residual blocks per level")
    bottleneck_dilations: list[int] = Field([1, 3, 9, 27], description="dilations of the bottleneck's residual blocks")
    kernel_size: int = Field(7, ge=1, description="odd")
    gate_bias: float = Field(0.0, description="initial gate = sigmoid(gate_bias); the correction starts at zero (identity)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v


class DiscriminatorConfig(Section):
    name: str = Field("timbre-gan-mrd", description="a registered model name")
    channels: int = Field(16, ge=1, description="UnivNet: 32")
    strides: list[tuple[int, int]] = Field([(2, 2), (2, 2), (2, 2)], description="(freq, time) stride of each (3, 9) "
                                           "convolution; UnivNet: [[1, 1], [1, 2], [1, 2], [1, 2]]")
    resolutions: list[Resolution] = Field(PWG, description="(n_fft, hop, window) of each spectrogram discriminator")


class TimbreModel(Section):
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class LossConfig(Section):
    l1: float = Field(30.0, ge=0.0, description="waveform L1")
    stft: float = Field(3.0, ge=0.0, description="multi-resolution STFT: spectral convergence + log magnitude")
    adversarial: float = Field(1.0, ge=0.0, description="LSGAN generator term")
    feature_matching: float = Field(2.0, ge=0.0, description="L1 between the discriminators' feature maps of clean and "
                                    "restored audio (from gan.gan_start_epoch on, like adversarial)")
    stft_resolutions: list[Resolution] = Field(PWG, description="(n_fft, hop, window) of the STFT loss (Parallel WaveGAN's)")


class GANConfig(Section):
    warmup_epochs: int = Field(1, ge=0, description="linear lr warm-up over this many epochs (sets train.warmup_steps)")
    derived_warmup_steps: int = Field(0, ge=0, description="written by the recipe, not a setting: the train.warmup_steps it "
                                      "derived from warmup_epochs, so that a saved config derives it again from its own data")
    gan_start_epoch: int = Field(15, ge=0, description="before this epoch: reconstruction losses only, discriminator frozen")
    d_lr: Optional[float] = Field(None, gt=0.0, description="discriminator lr; null = train.lr")
    spike_factor: float = Field(10.0, gt=1.0, description="warn when a loss term exceeds this x its recent median")
    collapse_eps: float = Field(0.01, ge=0.0, description="warn when |D_real| and |D_fake| stay below this")
    collapse_patience: int = Field(3, ge=1, description="... for this many logs in a row")
    explode_limit: float = Field(50.0, gt=0.0, description="warn when |D_real| or |D_fake| exceeds this")


class DegradeConfig(Section):
    """Each stage runs with its probability (at least one per segment), parameters drawn uniformly from ranges.

    The defaults are the embedded run's problem, chosen to be learnable in a few minutes on a CPU: hiss at 0-15 dB SNR
    on every segment, a mild EQ (+-6 dB) and clipping on some. The whole chain (band limiting, compression, EQ up to
    +-12 dB, pink noise) is in the shipped configs synth_full and wav_folder."""

    eq_prob: float = Field(0.3, ge=0.0, le=1.0, description="probability of the EQ stage (peaking bands and shelves)")
    eq_bands: int = Field(3, ge=1, description="1..N peaking bands, plus a low and a high shelf")
    eq_max_gain_db: float = Field(6.0, ge=0.0, description="EQ band and shelf gains are drawn from +-this (dB)")
    bandlimit_prob: float = Field(0.0, ge=0.0, le=1.0, description="probability of band limiting (resampled to 2 x the "
                                  "cutoff and back)")
    cutoff_hz: tuple[float, float] = Field((2000.0, 6000.0), description="band-limit cutoff range (500 Hz grid)")
    compress_prob: float = Field(0.0, ge=0.0, le=1.0, description="probability of RMS compression (5-50 ms envelope, "
                                 "peak make-up gain)")
    compress_threshold_db: tuple[float, float] = Field((-35.0, -15.0), description="compressor threshold range, dB of the "
                                                       "RMS envelope (0 dB = full scale)")
    compress_ratio: tuple[float, float] = Field((2.0, 8.0), description="compression ratio range (N:1 above the threshold)")
    clip_prob: float = Field(0.3, ge=0.0, le=1.0, description="probability of clipping (hard or tanh-soft, even odds)")
    clip_level: tuple[float, float] = Field((0.2, 0.6), description="clip level as a fraction of the segment's peak")
    noise_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability of added noise (white, or pink with pink_prob)")
    pink_prob: float = Field(0.0, ge=0.0, le=1.0, description="odds that the added noise is pink (1/f, overlapping the music's "
                             "low partials) rather than white (hiss, most of it above them)")
    snr_db: tuple[float, float] = Field((0.0, 15.0), description="white or pink noise at this signal-to-noise ratio")


class SynthConfig(Section):
    num_files: int = Field(24, ge=1, description="synthesised pieces when data.source_dir is null")
    seconds: float = Field(4.0, gt=0.0, description="length of each piece")


class TimbreData(Section):
    root: Optional[str] = Field(None, description="prepared folder (train.txt, val.txt); null = prepared automatically under cache_dir")
    source_dir: Optional[str] = Field(None, description="folder of clean audio (wav/flac/...) to prepare; null = synthesised music")
    cache_dir: Optional[str] = Field(None, description="automatic preparation goes to <cache_dir>/timbre_gan/prepared-<settings "
                                     "hash>; null = $TRAINHUB_CACHE or ~/.cache/trainhub")
    sample_rate: int = Field(16000, ge=1000, description="Hz: sources are resampled (and mixed to mono) to it when "
                             "prepared; trainhub sample restores at it")
    segment_seconds: float = Field(0.5, gt=0.0, description="length of each clean/degraded pair, cut from the sources "
                                   "without overlap; every STFT resolution needs n_fft/2 below it in samples")
    max_segments_per_file: int = Field(8, ge=0, description="0 = all")
    min_rms_db: float = Field(-50.0, description="segments quieter than this are left out")
    val_every: int = Field(8, ge=0, description="every N-th source file (sorted order) goes to validation; 0 = none")
    seed: int = Field(0, description="seeds the degradation chains and the synthesised music")
    val_limit: int = Field(0, ge=0, description="evaluate on at most N validation pairs (0 = all)")
    degrade: DegradeConfig = DegradeConfig()
    synth: SynthConfig = SynthConfig()


class EvalConfig(Section):
    media_examples: int = Field(3, ge=0, description="examples saved per eval: their degraded, restored and clean wavs and a row each in spectrograms.png")
    lsd_n_fft: int = Field(1024, ge=16, description="FFT size (= Hann window length, samples) of the log-spectral "
                           "distance metrics lsd_*")
    lsd_hop: int = Field(256, ge=1, description="hop (samples) of the log-spectral distance's STFT")


class TimbreGANConfig(RunConfig):
    model: TimbreModel = TimbreModel()
    data: TimbreData = TimbreData()
    loss: LossConfig = LossConfig()
    gan: GANConfig = GANConfig()
    eval: EvalConfig = EvalConfig()
    # max_steps, not epochs, so that `train.max_steps=N` is obeyed (the trainer ignores it when epochs is set).
    # The embedded default: 168 training pairs / batch 16 = 10 steps per epoch, so 300 steps = 30 epochs, the
    # reconstruction phase for epochs 0-14 (steps 1-150) and the GAN for the last 150 steps. lr 3e-3 and EMA 0.9
    # (a 10-step memory) because the run is short: at 2e-4 and 0.99, 120 steps left the eval at the identity.
    # For real data set train.epochs (wav_folder: 60, with the paper-style lr 2e-4 and EMA 0.99).
    train: TrainConfig = TrainConfig(
        max_steps=300, batch_size=16, lr=3e-3, betas=(0.8, 0.99), max_grad_norm=10.0, eval_every=100, checkpoint_every=100,
        best_metric="mrstft_restored", best_mode="min", ema=dict(decay=0.9), log_every=10, max_nonfinite=3,
    )

    @model_validator(mode="after")
    def _check(self) -> "TimbreGANConfig":
        seg = int(round(self.data.segment_seconds * self.data.sample_rate))
        for key, res in (("loss.stft_resolutions", self.loss.stft_resolutions), ("model.discriminator.resolutions", self.model.discriminator.resolutions)):
            for n_fft, hop, win in res:
                if win > n_fft or hop < 1 or n_fft // 2 >= seg:
                    raise ValueError(f"{key}: ({n_fft}, {hop}, {win}) needs hop >= 1, window <= n_fft and n_fft/2 < the segment "
                                     f"length ({seg} samples)")
        return self
