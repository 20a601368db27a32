"""Per-example quality metrics against the clean recording (lower is better except SI-SDR)."""

from __future__ import annotations

from typing import Sequence

import torch

from trainhub_timbre_gan.losses import PWG_RESOLUTIONS, stft_magnitude


def mrstft_distance(pred: torch.Tensor, target: torch.Tensor, resolutions: Sequence[Sequence[int]] = PWG_RESOLUTIONS) -> torch.Tensor:
    """Per example: spectral convergence + mean |log magnitude difference|, averaged over resolutions. ``(B,)``."""
    total = torch.zeros(pred.shape[0], device=pred.device)
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, device=pred.device)
        p = stft_magnitude(pred, n_fft, hop, win, window)
        t = stft_magnitude(target, n_fft, hop, win, window)
        sc = torch.linalg.norm((t - p).flatten(1), dim=1) / torch.linalg.norm(t.flatten(1), dim=1)
        mag = (torch.log(p) - torch.log(t)).abs().flatten(1).mean(1)
        total = total + sc + mag
    return total / len(resolutions)


def log_spectral_distance(pred: torch.Tensor, target: torch.Tensor, n_fft: int = 1024, hop: int = 256) -> torch.Tensor:
    """LSD per example: mean over frames of the RMS over frequency of ``log10 P_target - log10 P_pred`` (power
    spectra floored at 1e-8). ``(B,)``."""
    window = torch.hann_window(n_fft, device=pred.device)
    p = stft_magnitude(pred, n_fft, hop, n_fft, window) ** 2
    t = stft_magnitude(target, n_fft, hop, n_fft, window) ** 2
    diff = torch.log10(t.clamp_min(1e-8)) - torch.log10(p.clamp_min(1e-8))
    return diff.pow(2).mean(-1).sqrt().mean(-1)


def si_sdr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per example (zero-mean signals). ``(B,)``."""
    pred = pred.reshape(pred.shape[0], -1).double()
    target = target.reshape(target.shape[0], -1).double()
    pred = pred - pred.mean(1, keepdim=True)
    target = target - target.mean(1, keepdim=True)
    alpha = (pred * target).sum(1, keepdim=True) / (target.pow(2).sum(1, keepdim=True) + eps)
    proj = alpha * target
    noise = pred - proj
    return (10.0 * torch.log10((proj.pow(2).sum(1) + eps) / (noise.pow(2).sum(1) + eps))).float()
