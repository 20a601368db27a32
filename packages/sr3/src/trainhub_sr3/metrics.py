"""PSNR and SSIM as the reference SR3 evaluates them: on uint8 RGB (peak 255); SSIM with an 11x11
Gaussian window (sigma 1.5), valid region only, C1=(0.01*255)^2, C2=(0.03*255)^2, averaged over channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> rounded 0..255 values (kept as float64 for the metrics)."""
    return ((x.detach().double().clamp(-1, 1) + 1) * 127.5).round()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of B x C x H x W tensors in [-1, 1]."""
    mse = (to_uint8(a) - to_uint8(b)).pow(2).flatten(1).mean(1)
    return 20 * torch.log10(255.0 / mse.clamp_min(1e-10).sqrt())


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of B x C x H x W tensors in [-1, 1]."""
    x, y = to_uint8(a), to_uint8(b)
    c = x.shape[1]
    w = _gaussian().to(x.device)[None, None].repeat(c, 1, 1, 1)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731 (valid region, as cv2 + [5:-5] crop)
    mu_x, mu_y = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(1)
