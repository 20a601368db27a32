"""The SR3 UNet, top to bottom.

A UNet conditioned on the bicubic-upsampled low-resolution image (concatenated with the noisy
high-resolution image: 6 input channels; 3 for unconditional generation) and on a continuous noise
level sqrt(gamma), embedded with a WaveGrad-style sinusoidal encoding and an MLP and added to every
residual block's features.

Module names and shapes follow the widely used public SR3 implementation
(Janspiry/Image-Super-Resolution-via-Iterative-Refinement, ``sr3_modules/unet.py``), so its
``*_gen.pth`` weights load without renaming (see :mod:`trainhub_sr3.compat`). ``network="ddpm"`` is that
repository's other UNet (``ddpm_modules/unet.py``): it embeds the integer timestep instead of the noise
level and applies a Swish to the embedding before each block's projection, which is the same as one more
Swish at the end of the embedding MLP (the embedding is shared by every block); compat renames its keys.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NOISE_ENCODINGS = ("sqrt_gamma", "log_snr")
NETWORKS = ("sr3", "ddpm")


def log_snr(level: torch.Tensor) -> torch.Tensor:
    """log(gamma / (1 - gamma)) of the noise level sqrt(gamma), computed in float64 (1 - gamma cancels
    in float32 near level 1), clamped to [-30, 30]."""
    g2 = level.detach().to("cpu" if level.device.type == "mps" else level.device, torch.float64) ** 2  # MPS has no float64
    snr = torch.log(g2.clamp_min(1e-20)) - torch.log((1 - g2).clamp_min(1e-20))
    return snr.clamp(-30, 30).to(level.device, torch.float32)


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal encoding of the continuous noise level (``dim/2`` sines then ``dim/2`` cosines).

    ``sqrt_gamma`` (the reference's): the encoded value is sqrt(gamma) itself. With frequencies of at most
    1 rad per unit, every level above 0.99 -- where a low-amplitude target (a residual, or fine detail) is
    decided -- encodes to within 1% of every other, and a small network learns to ignore it.
    ``log_snr``: the encoded value is ``log_snr_scale * log(gamma / (1 - gamma))``, which spreads those
    levels apart (log-SNR 4.6 at level 0.995, 13.8 at 0.9999995).
    ``timestep`` (the ddpm network's): the encoded value is the integer timestep, with the frequencies
    computed as that network computes them in float32 (at t ~ 2000 an ulp of a frequency moves the angle by 1e-4)."""

    def __init__(self, dim: int, kind: str = "sqrt_gamma", log_snr_scale: float = 4.0) -> None:
        super().__init__()
        if kind not in (*NOISE_ENCODINGS, "timestep"):
            raise ValueError(f"unknown noise level encoding {kind!r}; allowed: {', '.join(NOISE_ENCODINGS)}")
        self.dim, self.kind, self.log_snr_scale = dim, kind, log_snr_scale

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        level = level.reshape(-1)
        if self.kind == "timestep":
            freqs = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float32, device=level.device) * (-math.log(10000) / self.dim))
            angles = level.float()[:, None] * freqs[None]
            return torch.cat([angles.sin(), angles.cos()], dim=-1)
        value = level if self.kind == "sqrt_gamma" else self.log_snr_scale * log_snr(level)
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=value.dtype, device=value.device) / half)
        angles = value.reshape(-1, 1) * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class FeatureWiseAffine(nn.Module):
    """Adds a per-channel projection of the noise embedding (or scales and shifts with ``affine``)."""

    def __init__(self, emb_dim: int, channels: int, affine: bool = False) -> None:
        super().__init__()
        self.affine = affine
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels * (2 if affine else 1)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.noise_func(emb).view(x.shape[0], -1, 1, 1)
        if self.affine:
            gamma, beta = h.chunk(2, dim=1)
            return (1 + gamma) * x + beta
        return x + h


class Block(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> 3x3 conv."""

    def __init__(self, dim: int, dim_out: int, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim), Swish(), nn.Dropout(dropout) if dropout else nn.Identity(), nn.Conv2d(dim, dim_out, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, emb_dim: int, dropout: float, groups: int, affine: bool = False) -> None:
        super().__init__()
        self.noise_func = FeatureWiseAffine(emb_dim, dim_out, affine)
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.noise_func(self.block1(x), emb))
        return h + self.res_conv(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with a residual; SDPA (flash/memory-efficient kernels).

    The reference scales scores by 1/sqrt(channels) for any head count; so do we.
    """

    def __init__(self, channels: int, heads: int = 1, groups: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, self.heads, 3 * c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.chunk(3, dim=2))  # b, heads, hw, c/heads
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        return self.out(out.transpose(-1, -2).reshape(b, c, h, w)) + x


class ResnetBlocWithAttn(nn.Module):
    def __init__(self, dim: int, dim_out: int, emb_dim: int, dropout: float, groups: int, with_attn: bool) -> None:
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResnetBlock(dim, dim_out, emb_dim, dropout, groups)
        if with_attn:
            self.attn = SelfAttention(dim_out, groups=groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.with_attn else x


class Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SR3UNet(nn.Module):
    """``forward(x, noise_level)``: x is ``cat([upsampled LR, noisy HR])`` (B x in_channel x H x W; the noisy image
    alone when unconditional), noise_level is sqrt(gamma) per sample (B or B x 1; the timestep for ``network="ddpm"``);
    returns the prediction (B x out_channel x H x W)."""

    def __init__(
        self,
        in_channel: int = 6,
        out_channel: int = 3,
        inner_channel: int = 64,
        norm_groups: int = 32,
        channel_multiplier: Sequence[int] = (1, 2, 4, 8, 8),
        attn_res: Sequence[int] = (16,),
        res_blocks: int = 2,
        dropout: float = 0.0,
        image_size: int = 128,
        noise_encoding: str = "sqrt_gamma",
        network: str = "sr3",
    ) -> None:
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; allowed: {', '.join(NETWORKS)}")
        emb = inner_channel
        ddpm = network == "ddpm"
        self.noise_level_mlp = nn.Sequential(
            NoiseLevelEncoding(inner_channel, "timestep" if ddpm else noise_encoding), nn.Linear(inner_channel, inner_channel * 4),
            Swish(), nn.Linear(inner_channel * 4, inner_channel), *([Swish()] if ddpm else []),
        )
        ch, res = inner_channel, image_size
        skips = [ch]
        downs: list[nn.Module] = [nn.Conv2d(in_channel, inner_channel, 3, padding=1)]
        for i, mult in enumerate(channel_multiplier):
            out = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(ResnetBlocWithAttn(ch, out, emb, dropout, norm_groups, res in attn_res))
                skips.append(out)
                ch = out
            if i != len(channel_multiplier) - 1:
                downs.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([
            ResnetBlocWithAttn(ch, ch, emb, dropout, norm_groups, True),
            ResnetBlocWithAttn(ch, ch, emb, dropout, norm_groups, False),
        ])
        ups: list[nn.Module] = []
        for i, mult in reversed(list(enumerate(channel_multiplier))):
            out = inner_channel * mult
            for _ in range(res_blocks + 1):
                ups.append(ResnetBlocWithAttn(ch + skips.pop(), out, emb, dropout, norm_groups, res in attn_res))
                ch = out
            if i != 0:
                ups.append(Upsample(ch))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(ch, out_channel, norm_groups)
        self.init_orthogonal()

    @torch.no_grad()
    def init_orthogonal(self) -> None:
        """Orthogonal weights and zero biases for convs and linears, as the reference initialises SR3."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight, gain=1.0)
                if m.bias is not None:
                    m.bias.zero_()

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        emb = self.noise_level_mlp(noise_level.float())  # the encoding in fp32, even under autocast
        feats = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            x = layer(torch.cat([x, feats.pop()], dim=1), emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
        return self.final_conv(x)
