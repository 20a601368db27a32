"""The tokenimage recipe's config schema (imports no torch: `trainhub config tokenimage` and `--help` read it alone)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from trainhub.config import RunConfig, Section, TrainConfig


class TokenImageModel(Section):
    name: str = Field("tokenimage-dit", description="a registered model name")
    patch_size: int = Field(4, ge=1, description="pixels per patch side; a multiple of the token block keeps tokens whole "
                            "(needed by the tokens head)")
    hidden: int = Field(128, ge=4, description="transformer width; a multiple of heads and of 4")
    depth: int = Field(4, ge=1, description="transformer blocks (adaLN-Zero, conditioned on the diffusion time)")
    heads: int = Field(4, ge=1, description="attention heads per block; must divide hidden")
    mlp_ratio: float = Field(4.0, gt=0.0, description="MLP width = hidden x this")
    schedule: Literal["cosine", "linear", "sqrt"] = Field("cosine", description="noise schedule alpha_bar(t), t in [0, 1]")
    head: Literal["tokens", "pixels"] = Field("tokens", description="tokens: logits per token block, trained with "
                                              "cross-entropy (the clean image is the expected code); pixels: the clean image, "
                                              "trained with the masked MSE")
    context: int = Field(2, ge=0, description="tokens: each token's input also sees this many neighbours on each side in "
                         "reading order (a convolution); 0 = attention alone")
    noise: Literal["per_token", "per_image"] = Field("per_token", description="training noise: per_token = a random "
                                                    "fraction of each image's tokens noised, each at its own t; per_image "
                                                    "= one t for the whole image (pixels needs per_image)")
    skip: bool = Field(True, description="tokens: add each block's own Gaussian log-likelihood to the logits; pixels: "
                       "prediction = c_skip(t) * noisy + c_out(t) * network (EDM preconditioning); false = network")
    sigma_data: float = Field(0.75, gt=0.0, description="data standard deviation assumed by the skip scales")
    eval_levels: list[float] = Field([0.1, 0.3, 0.5, 0.7, 0.9], description="diffusion times t of the one-shot eval")
    sampler: Literal["sequential", "ddim"] = Field("sequential", description="sequential: write the tokens in reading "
                                                   "order, sample_steps groups (tokens head); ddim: denoise all tokens "
                                                   "together from pure noise in sample_steps steps")
    sample_steps: int = Field(256, ge=1, description="steps of the sampler, for eval generations and `trainhub sample` "
                              "(sequential: 256 = one token per step in a full image)")
    temperature: float = Field(0.7, ge=0.0, description="sequential: softmax temperature of each drawn token (0 = argmax)")
    snap: bool = Field(True, description="ddim: project each clean prediction onto valid token codes while sampling")


class TokenImageData(Section):
    source: Optional[str] = Field(None, description="text file, .jsonl (text or messages) or folder; null = stdlib docstrings")
    val_source: Optional[str] = Field(None, description="validation source; null = val_percent of the documents by hash")
    tokenizer: str = Field("bytes", description="bytes (UTF-8, no files) or a HuggingFace tokenizers JSON file")
    img_size: int = Field(64, ge=4, description="side of the square token image in pixels; capacity = (img_size / "
                          "block height) x (img_size / block width) tokens")
    channels: int = Field(3, ge=1, description="channels of a token image (a token's block holds height x width x "
                          "channels cells)")
    block: tuple[int, int] = Field((4, 4), description="pixels (height, width) per token")
    base: int = Field(4, ge=2, description="levels per cell (token ids are written in this base)")
    use_chat_template: bool = Field(False, description="prompt -> condition image, answer -> target image")
    max_tokens: Optional[int] = Field(None, ge=1, description="tokens per image; null = the capacity")
    packing: Literal["pack", "none"] = Field("pack", description="pack short documents together, or one per image")
    val_percent: float = Field(2.0, ge=0.0, le=100.0, description="percent of the documents held out for validation "
                               "(by a hash of each document's key) when val_source is null")
    max_documents: Optional[int] = Field(None, ge=1, description="read at most N documents (quick runs)")
    val_images: int = Field(64, ge=1, description="evaluate on at most N validation images")
    eval_samples: int = Field(4, ge=0, le=4, description="images generated from noise at each eval (0 to 4)")


class TokenImageConfig(RunConfig):
    model: TokenImageModel = TokenImageModel()
    data: TokenImageData = TokenImageData()
    train: TrainConfig = TrainConfig(
        lr=3e-3, batch_size=8, max_steps=650, schedule="cosine", warmup_steps=50, min_lr_ratio=0.1,
        max_grad_norm=1.0, precision="auto", eval_every=325, checkpoint_every=325, best_metric="val_loss",
        best_mode="min", log_every=25, ema=dict(decay=0.99, start_step=200),
    )
