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
