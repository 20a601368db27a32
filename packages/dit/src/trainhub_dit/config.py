"""The dit recipe's config schema (imports no torch: `trainhub config dit` and `--help` read it alone)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from trainhub.config import RunConfig, Section, TrainConfig


class DiTModelConfig(Section):
    name: str = Field("DiT-Ti/4", description="a registered model: DiT-{S,B,L,XL}/{2,4,8} (the paper's), DiT-Ti/{2,4,8} "
                      "(tiny, for CPU), or a third party's variant")
    num_classes: int = Field(6, ge=1, description="class labels 0..N-1 (1 for unconditional data)")
    class_dropout_prob: float = Field(0.1, ge=0.0, lt=1.0, description="label drop rate in training (enables guidance)")
    learn_sigma: bool = Field(True, description="predict the variance too (hybrid MSE + VLB loss)")
    input_size: Optional[int] = Field(None, ge=1, description="spatial size the model sees; null: data.image_size, "
                                      "or the latent size in latent mode")
    in_channels: Optional[int] = Field(None, ge=1, description="null: 3 for pixels, the VAE's latent channels in latent mode")
    diffusion_steps: int = Field(1000, ge=2, description="training timesteps of the linear schedule")


class DiTDataConfig(Section):
    source: Literal["embedded", "custom", "imagefolder", "coco", "latents"] = Field(
        "embedded", description="embedded procedural classes; custom: a folder of images (unconditional); imagefolder: "
        "one class per subfolder; coco: annotation JSON + images; latents: precomputed by precompute-latents")
    root: Optional[str] = Field(None, description="image folder (custom, imagefolder, coco images) or latents folder")
    annotations: Optional[str] = Field(None, description="coco: the annotation JSON")
    coco_labels: Literal["category", "none"] = Field("category", description="coco: label = category of the largest "
                                                     "annotation, or none (unconditional)")
    val_root: Optional[str] = Field(None, description="validation data of the same source (val loss, FID reference; "
                                    "not for embedded, which has its own)")
    val_annotations: Optional[str] = Field(None, description="coco: the annotation JSON of data.val_root")
    image_size: int = Field(16, ge=8, description="images are centre-cropped (or resized) to this square size")
    center_crop: bool = Field(True, description="ADM centre crop; false: resize the whole image to a square")
    hflip: bool = Field(True, description="random horizontal flips")
    num_samples: Optional[int] = Field(None, ge=1, description="use a fixed random subset of this many samples; "
                                       "embedded: how many to draw (default 8192)")
    on_error: Literal["skip", "stop"] = Field("skip", description="an unreadable image is replaced by the next readable "
                                              "one with a warning, or stops the run")
    vae: Optional[str] = Field(None, description="local diffusers AutoencoderKL directory: train in its latent space "
                               "(encoding on the fly unless source=latents)")
    space: Literal["auto", "pixel", "latent"] = Field("auto", description="auto: latent when data.vae is set or "
                                                      "source=latents, else pixel")
    latent_scale: float = Field(0.18215, gt=0.0, description="latents are multiplied by this (Stable Diffusion VAE)")
    vae_slicing: bool = Field(True, description="run the VAE one image at a time (less memory)")


class DiTEvalConfig(Section):
    sampler: Literal["ddpm", "ddim"] = Field("ddpm", description="ddpm: ancestral steps (the official sample.py's); ddim: "
                                              "deterministic (eta 0); for the sample grid, FID and trainhub sample")
    steps: int = Field(250, ge=1, description="respaced sampling steps, at most model.diffusion_steps")
    cfg_scale: float = Field(4.0, ge=1.0, description="classifier-free guidance scale (1 = off)")
    cfg_channels: Optional[int] = Field(None, ge=1, description="output channels guided; null: all noise channels; 3: as "
                                        "the official sample.py (it guides only the first three of the four latent channels)")
    classes: Optional[list[int]] = Field(None, description="classes shown in the sample grid, labels 0..model.num_classes-1 "
                                          "(default: the first 8)")
    samples_per_class: int = Field(4, ge=1, description="images per class in the sample grid (one row per class)")
    probe_per_class: int = Field(8, ge=0, description="generated images per class scored by the class probe "
                                 "(class_probe_acc; 0 = off); pixel space, 2..100 classes")
    probe_train_images: int = Field(2048, ge=16, description="real training images the class probe (a small CNN "
                                    "trained at the first eval) learns from; it is checked on a quarter as many held-out ones")
    val_batches: int = Field(8, ge=0, description="validation batches for val_loss (0 = all)")
    fid_inception_weights: Optional[str] = Field(None, description="local Inception-v3 weights file (torch-fidelity's); "
                                                 "FID is skipped without it")
    fid_num_samples: int = Field(1000, ge=2, description="generated images for FID (random classes), compared with as "
                                 "many validation images")


class DiTConfig(RunConfig):
    """The defaults are the embedded CPU run: 16x16 procedural images of six shapes in random colours (the class is
    the shape), DiT-Ti/4 (16 tokens, 4M parameters), batch 32, AdamW 2e-3 after 100 warm-up steps with a cosine decay,
    clipping 1.0, EMA 0.99, 1800 steps, an eval (val loss, sample grid, class probe) every 600 steps: about four
    minutes on a laptop CPU, after which the class probe recognises most generated samples as the shape they were
    asked for. configs/dit_xl2_256.yaml has the DiT training guide's values in full (DiT-XL/2 on 256 px latents,
    batch 4 x accumulation 4, lr 1e-4, warmup 500, EMA 0.9999)."""

    model: DiTModelConfig = DiTModelConfig()
    data: DiTDataConfig = DiTDataConfig()
    eval: DiTEvalConfig = DiTEvalConfig(steps=50, cfg_scale=3.0, samples_per_class=8)
    train: TrainConfig = TrainConfig(
        batch_size=32, gradient_accumulation_steps=1, lr=2e-3, optimizer="adamw", weight_decay=0.0, schedule="cosine",
        warmup_steps=100, max_grad_norm=1.0, precision="auto", ema=dict(decay=0.99), checkpoint_every_epoch=True,
        max_steps=1800, eval_every=600, checkpoint_every=0, log_every=50,
    )

    @model_validator(mode="after")
    def _check(self) -> "DiTConfig":
        d, m, e = self.data, self.model, self.eval
        for key, readers in (("root", ("custom", "imagefolder", "coco", "latents")),
                             ("val_root", ("custom", "imagefolder", "coco", "latents")),
                             ("annotations", ("coco",)), ("val_annotations", ("coco",))):
            if getattr(d, key) is not None and d.source not in readers:
                raise ValueError(f"data.{key}={getattr(d, key)} is not read by data.source={d.source}; it is read by "
                                 f"data.source={', '.join(readers)}")
        if e.steps > m.diffusion_steps:
            raise ValueError(f"eval.steps={e.steps} exceeds model.diffusion_steps={m.diffusion_steps}: respaced sampling "
                             f"takes 1..{m.diffusion_steps} of the training timesteps")
        if e.classes is not None and (not e.classes or not all(0 <= c < m.num_classes for c in e.classes)):
            raise ValueError(f"eval.classes={e.classes}: give labels in 0..{m.num_classes - 1} (model.num_classes="
                             f"{m.num_classes})")
        return self
