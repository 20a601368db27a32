"""PSNR and SSIM of image batches, for recipes' eval metrics.

Both take ``B x C x H x W`` tensors and return one value per image; ``data_range`` is the span of the
pixel values (1.0 for [0, 1], 2.0 for [-1, 1], 255.0 for uint8 levels). They compute in the input's
floating dtype (pass float64 to match reference implementations bit for bit)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (mean squared error floored at 1e-10)."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalised ``size x size`` Gaussian window SSIM uses."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11) -> torch.Tensor:
    """Per-image SSIM (Wang et al.): Gaussian window (sigma 1.5), valid region only, C1 = (0.01 R)^2,
    C2 = (0.03 R)^2, averaged over channels and positions. The window shrinks to the image when smaller."""
    c = a.shape[1]
    size = min(window, a.shape[-2], a.shape[-1])
    w = gaussian_window(size, dtype=a.dtype).to(a.device)[None, None].repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return m.flatten(1).mean(1)
