"""PSNR and SSIM of RGB frames in [0, 1] (per frame; core's :mod:`trainhub.kit.image_quality`, peak 1)."""

from __future__ import annotations

import torch

from trainhub.kit import image_quality


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) in [0, 1] -> (M,) dB (peak 1)."""
    return image_quality.psnr(pred.float(), target.float())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) in [0, 1] -> (M,) structural similarity (11x11 Gaussian window, smaller frames use
    the whole frame)."""
    return image_quality.ssim(pred.float(), target.float())
