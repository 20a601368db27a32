"""The sr3 recipe's config schema (imports no torch: `trainhub config sr3` and `--help` read it alone)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from trainhub.config import RunConfig, Section, TrainConfig


class UNetConfig(Section):
    """Defaults: a small UNet for the embedded CPU run; configs/sr3_16_128.yaml has the paper's."""

    in_channel: int = Field(6, description="input channels: 2 x out_channel when conditional (upsampled LR image + noisy "
                            "HR image), else out_channel")
    out_channel: int = Field(3, description="channels of the image the UNet predicts (3: RGB)")
    inner_channel: int = Field(32, ge=1, description="channels of the first level (also the noise embedding's width); "
                               "the paper's 16->128 model: 64")
    norm_groups: int = Field(8, ge=1, description="GroupNorm groups; must divide inner_channel x every channel_multiplier "
                             "(the reference: 32 when its JSON has none)")
    channel_multiplier: list[int] = Field([1, 2, 2], description="one entry per level: its channels = inner_channel x this; "
                                          "every level but the last halves the resolution")
    attn_res: list[int] = Field([8], description="feature-map sizes (image_size, halved per level) whose residual blocks "
                                "add self-attention; the middle block always has it")
    res_blocks: int = Field(1, ge=1, description="residual blocks per encoder level (the decoder has one more per level)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each residual block's second convolution "
                           "(the paper's 16->128 model: 0.2)")
    image_size: int = Field(32, ge=8, description="resolution the attention levels (attn_res) refer to")
    noise_encoding: Literal["sqrt_gamma", "log_snr"] = Field(
        "log_snr", description="what the sinusoidal noise embedding encodes: log_snr (tells the low noise levels apart) or "
        "sqrt_gamma (the reference's; its weights need it)")


class BetaSchedule(Section):
    schedule: Literal["linear", "cosine", "quad", "warmup10", "warmup50", "const", "jsd"] = Field(
        "linear", description="the reference's beta schedules: linear, quad (linear in sqrt(beta)), warmup10/warmup50 "
        "(linear over the first 10%/50% of the steps, then linear_end), const (linear_end), jsd (1/T, 1/(T-1), ..., 1), "
        "cosine (Nichol & Dhariwal)")
    n_timestep: int = Field(1000, ge=1, description="diffusion steps T")
    linear_start: float = Field(1e-6, gt=0.0, description="first beta (linear, quad, warmup10, warmup50)")
    linear_end: float = Field(1e-2, gt=0.0, description="last beta (linear, quad, warmup10, warmup50); const: every beta")


class BetaSchedules(Section):
    train: BetaSchedule = BetaSchedule()
    val: Optional[BetaSchedule] = Field(None, description="explicit eval schedule; default: the train schedule respaced to eval_steps")


class SR3Model(Section):
    name: str = Field("sr3-unet", description="a registered model name")
    network: Literal["sr3", "ddpm"] = Field("sr3", description="sr3: the UNet embeds the continuous noise level and training "
                                            "draws it between two steps; ddpm: it embeds the integer timestep (training draws "
                                            "whole steps). The reference's which_model_G; its weights need the one they have")
    conditional: bool = Field(True, description="super-resolution (the UNet also sees the upsampled LR image); false: "
                              "unconditional generation of image_size images (in_channel = out_channel)")
    reference_config: Optional[str] = Field(None, description="the reference JSON this config was read from (set by --config "
                                            "FILE.json); reference weights take their norm_groups from it, else 32")
    unet: UNetConfig = UNetConfig()
    zero_init_output: bool = Field(True, description="start the UNet's last convolution at zero (the first prediction is "
                                   "0: bicubic, with model.residual); false: orthogonal like every other layer, as the "
                                   "reference does (the small default then learnt nothing in 300 steps)")
    beta_schedule: BetaSchedules = BetaSchedules()
    eval_steps: int = Field(20, ge=1, description="sampling steps for eval and inference (the train schedule respaced; "
                            "the paper's: 100 and more)")
    eval_samples: int = Field(4, ge=1, description="eval: samples drawn per validation image (K). psnr/ssim/consistency/"
                              "sharpness average single samples; psnr_mean scores the mean of the K (the posterior-mean "
                              "estimate)")
    loss: Literal["l1", "l2"] = Field("l2", description="l2 or l1 (the reference's) between the UNet's output and its "
                                      "target (see prediction), mean over pixels; l2 learns the sparse residual of the default "
                                      "(l1's optimum there is 0 for most pixels)")
    prediction: Literal["eps", "x0", "v"] = Field("x0", description="what the UNet predicts: x0 (learns fastest on the small "
                                                   "default), eps (the reference's; its weights need it) or v")
    residual: bool = Field(True, description="diffuse HR minus the bicubic upsampling (SRDiff-style); false = the reference's "
                           "objective, needed for its weights")
    sampler: Literal["ancestral", "ddim"] = Field("ddim", description="ddim: deterministic; ancestral: the reference's sampler")
    residual_scale: float = Field(1.0, gt=0.0, description="with residual: the residual is multiplied by this before diffusion "
                                  "(e.g. 5 brings the 8->32 residual towards unit variance; measured worse PSNR there, see README)")
    temperature: float = Field(1.0, ge=0.0, le=1.0, description="eval/sample: scale of the starting noise; 1 = a posterior "
                               "sample; lower starts closer to the mean (0 measured no better PSNR on the default, see README)")


class SR3Data(Section):
    source: Literal["shapes", "embedded", "paired", "lmdb", "folder"] = Field(
        "shapes", description="shapes: procedural flat-coloured shapes (the CPU default); embedded: photographs "
        "scikit-image ships (configs/photos.yaml); prepared pairs (folders or the reference's LMDB), or any image folder")
    root: Optional[str] = Field(None, description="training data, read by paired (folder with hr_<R>/ sr_<r>_<R>/ lr_<r>/), "
                                "lmdb (the LMDB folder: data.mdb) and folder (HR images) only: with shapes or embedded it is "
                                "an error")
    val_root: Optional[str] = Field(None, description="validation data, whatever source trains; default: shapes' and "
                                    "embedded's own validation pictures, none for paired, lmdb and folder")
    val_source: Optional[Literal["paired", "lmdb", "folder"]] = Field(
        None, description="layout of val_root; default: lmdb if it holds data.mdb, paired if it holds hr_<R>/, else folder")
    l_resolution: int = Field(8, ge=2, description="side of the low-resolution input in pixels (the lr_<r>/ and sr_<r>_<R>/ "
                              "folders' r)")
    r_resolution: int = Field(32, ge=4, description="side of the high-resolution target in pixels (hr_<R>/'s R); a multiple "
                              "of l_resolution, the upscaling factor being their ratio")
    flips: bool = Field(True, description="random horizontal flips of the training pairs (never in validation)")
    on_error: Literal["skip", "stop"] = Field("skip", description="an unreadable image is skipped with a warning, or stops the run")
    train_len: int = Field(-1, description="use at most N training images (-1: all)")
    val_len: int = Field(-1, description="evaluate on the first N validation images (-1: all; shapes: 32 fixed pictures, "
                         "embedded: 40 photo tiles)")


class SR3Train(TrainConfig):
    best_metric: Optional[str] = Field("auto", description="an eval metric: its best checkpoint is kept and named in best.json "
                                       "(sample and eval --checkpoint RUN use it); auto: psnr_mean where eval scores "
                                       "super-resolution, none where it scores nothing (model.conditional=false, or "
                                       "paired/lmdb/folder without data.val_root); null: none")


class SR3Config(RunConfig):
    model: SR3Model = SR3Model()
    data: SR3Data = SR3Data()
    train: SR3Train = SR3Train(
        lr=1e-3, weight_decay=1e-2, batch_size=16, max_steps=1000, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1,
        eval_every=250, checkpoint_every=250, best_mode="max", ema=dict(decay=0.995), log_every=25,
    )
