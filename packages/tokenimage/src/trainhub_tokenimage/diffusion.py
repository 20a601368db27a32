"""Continuous-time Gaussian diffusion on token images: schedules, noising, the masked loss, sampling.

Time ``t`` runs from 0 (clean) to 1 (pure noise); ``alpha_bar(t)`` is the signal fraction:
``noisy = sqrt(alpha_bar) * clean + sqrt(1 - alpha_bar) * noise``. The denoiser predicts the clean image.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import torch

from trainhub_tokenimage.codec import TokenCodec

ScheduleName = Literal["cosine", "linear", "sqrt"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "sqrt")


def alpha_bar(t: torch.Tensor, schedule: ScheduleName = "cosine") -> torch.Tensor:
    """Signal fraction at time ``t`` in [0, 1].

    cosine: Nichol & Dhariwal (offset 0.008); linear: the continuous limit of DDPM's betas 1e-4..0.02 over
    1000 steps; sqrt: Diffusion-LM's ``1 - sqrt(t + 1e-4)`` (noisy early, suited to discrete data).
    """
    t = t.float().clamp(0.0, 1.0)
    if schedule == "cosine":
        s = 0.008
        a = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    elif schedule == "linear":
        b0, b1 = 0.1, 20.0  # 1000 * 1e-4, 1000 * 0.02
        a = torch.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))
    elif schedule == "sqrt":
        a = 1.0 - torch.sqrt(t + 1e-4)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return a.clamp(1e-6, 1.0)


def add_noise_to_timestep(clean: torch.Tensor, t: torch.Tensor | float, schedule: ScheduleName = "cosine",
                          noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noise ``clean`` (B x C x H x W) to time ``t``: a float, one value per sample, or a ``B x 1 x H x W`` map
    (one time per token block: :meth:`TokenCodec.block_map`)."""
    t = torch.as_tensor(t, device=clean.device, dtype=torch.float32)
    if t.dim() == 0:
        t = t.expand(clean.shape[0])
    a = alpha_bar(t, schedule)
    if a.dim() == 1:
        a = a.view(-1, *([1] * (clean.dim() - 1)))
    if noise is None:
        noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=torch.float32)
    return (a.sqrt() * clean.float() + (1.0 - a).sqrt() * noise).to(clean.dtype)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Squared error summed over valid pixels (all channels) / (valid pixels x channels); padding adds nothing.

    ``mask`` is ``B x 1 x H x W`` (1 = valid). ``per_sample`` returns one value per image.
    """
    m = mask.float().expand_as(pred)
    se = (pred.float() - target.float()).square() * m
    if per_sample:
        return se.flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return se.sum() / m.sum().clamp_min(1.0)


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the valid blocks' tokens: ``logits`` ``B x capacity x vocab``, ``ids`` and ``keep``
    ``B x capacity``; padding adds nothing."""
    per = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none")
    k = keep.flatten().float()
    return (per * k).sum() / k.sum().clamp_min(1.0)


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(denoise: Denoiser, shape: tuple[int, ...], steps: int, schedule: ScheduleName = "cosine",
           snap: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, generator: Optional[torch.Generator] = None,
           device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM from pure noise in ``steps`` steps; ``denoise(x, t)`` predicts the clean image.

    ``snap`` (e.g. :meth:`TokenCodec.snap`) projects each clean prediction onto valid token codes before the
    next step (the clamping trick of Diffusion-LM); the result is the last clean prediction.
    """
    x = torch.randn(shape, generator=generator, device="cpu").to(device)
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="denoising", leave=False)
    x0 = x
    for i in it:
        t, s = times[i], times[i + 1]
        x0 = denoise(x, t.expand(shape[0])).float().clamp(-1.0, 1.0)
        if snap is not None:
            x0 = snap(x0)
        a_t, a_s = alpha_bar(t, schedule), alpha_bar(s, schedule)
        eps = (x - a_t.sqrt() * x0) / (1.0 - a_t).sqrt().clamp_min(1e-6)
        x = a_s.sqrt() * x0 + (1.0 - a_s).sqrt() * eps
    return x0


def token_times(mask_blocks: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Training times, one per token block (``B x capacity``): each image draws a fraction ``p ~ U(0, 1)`` of its
    blocks to noise, each at its own ``t ~ U(0, 1)``; the others stay clean (``t = 0``). Every noised token is
    seen beside clean and noised neighbours, as the sequential sampler shows it (the masking of MDLM, with
    Gaussian noise of any level in place of the mask)."""
    b, n = mask_blocks.shape
    dev = mask_blocks.device
    p = torch.rand(b, 1, generator=generator).to(dev)
    noised = torch.rand(b, n, generator=generator).to(dev) < p
    return torch.where(noised, torch.rand(b, n, generator=generator).to(dev), torch.zeros((), device=dev))


LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_sequential(logits: LogitsFn, codec: TokenCodec, mask: torch.Tensor, steps: int, temperature: float = 1.0,
                      generator: Optional[torch.Generator] = None, progress: bool = False) -> torch.Tensor:
    """Write token images in reading order: all blocks start as pure noise (``t = 1``); each of ``steps`` steps
    draws the next ``length / steps`` tokens of every image from ``softmax(logits / temperature)`` (argmax at
    ``temperature = 0``) given the
    tokens written so far, and writes them clean (``t = 0``). ``steps = length`` is one token per step.
    ``logits(x, t)`` maps an image and per-block times to ``B x capacity x vocab`` logits; returns the clean
    token images (padding 0)."""
    n = mask.shape[0]
    keep = codec.block_mask(mask)  # B x capacity, the valid blocks first (raster order)
    length = int(keep.sum(1).max())
    noise = torch.randn((n, codec.channels, codec.img_size, codec.img_size), generator=generator).to(mask.device)
    ids = torch.zeros(n, codec.capacity, dtype=torch.long, device=mask.device)
    t = torch.ones(n, codec.capacity, device=mask.device)
    patterns = codec.patterns.to(mask.device)
    bounds = [round(length * k / steps) for k in range(steps + 1)]
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="writing", leave=False)
    for k in it:
        lo, hi = bounds[k], bounds[k + 1]
        if lo == hi:
            continue
        x = torch.where(codec.block_map((t == 0).float()) > 0.5, codec.to_image(patterns[ids]), noise) * mask
        lg = logits(x, t)[:, lo:hi].float().cpu()
        if temperature > 0:
            probs = (lg / temperature).softmax(-1).reshape(-1, lg.shape[-1])
            draw = torch.multinomial(probs, 1, generator=generator).reshape(n, hi - lo)
        else:
            draw = lg.argmax(-1)
        ids[:, lo:hi] = draw.to(ids.device)
        t[:, lo:hi] = 0.0
    return codec.to_image(patterns[ids]) * mask
