"""PSNR and SSIM as the reference SR3 evaluates them: on uint8 RGB levels (peak 255), in float64; SSIM
with an 11x11 Gaussian window (sigma 1.5), valid region only, averaged over channels (core's
:mod:`trainhub.kit.image_quality`)."""

from __future__ import annotations

import torch

from trainhub.kit import image_quality


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> rounded 0..255 values (kept as float64 for the metrics)."""
    return ((x.detach().double().clamp(-1, 1) + 1) * 127.5).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of B x C x H x W tensors in [-1, 1]."""
    return image_quality.psnr(to_uint8(a), to_uint8(b), data_range=255.0)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of B x C x H x W tensors in [-1, 1]."""
    return image_quality.ssim(to_uint8(a), to_uint8(b), data_range=255.0)


def downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased: matches the PIL bicubic resize that made the LR images (57 dB between the two on the
    embedded HR tiles), so a sample's downsampling is compared with its LR input on the input's own terms."""
    return torch.nn.functional.interpolate(x.float(), size=tuple(size), mode="bicubic", antialias=True,
                                           align_corners=False).clamp(-1, 1)


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared finite difference (horizontal + vertical) on the uint8 scale: high-frequency energy,
    lower for a blurry image."""
    u = to_uint8(x)
    dx, dy = u[..., :, 1:] - u[..., :, :-1], u[..., 1:, :] - u[..., :-1, :]
    return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))
