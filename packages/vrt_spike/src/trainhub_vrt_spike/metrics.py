"""PSNR and SSIM of RGB frames in [0, 1] (per frame; SSIM: 11x11 Gaussian window, sigma 1.5, mean over channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) in [0, 1] -> (M,) dB (peak 1)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M, C, H, W) in [0, 1] -> (M,) structural similarity (C1 = 0.01^2, C2 = 0.03^2; valid windows only,
    or the whole frame when it is smaller than the window)."""
    x, y = pred.float(), target.float()
    c = x.shape[1]
    size = min(11, x.shape[-2], x.shape[-1])
    g = _gaussian(size).to(x.device)
    w = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)
