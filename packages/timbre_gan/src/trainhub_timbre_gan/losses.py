"""Losses: multi-resolution STFT (Parallel WaveGAN), LSGAN adversarial terms, feature matching."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Parallel WaveGAN's resolutions: (n_fft, hop, window length), Hann window.
PWG_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))

DOutputs = list[tuple[torch.Tensor, list[torch.Tensor]]]


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int, window: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` or ``(B, 1, T)`` -> ``(B, frames, freq)`` magnitude ``sqrt(max(re^2 + im^2, 1e-7))``, float32."""
    x = x.reshape(-1, x.shape[-1]).float()
    spec = torch.stft(x, n_fft, hop, win, window.to(x.device), center=True, pad_mode="reflect", return_complex=True)
    return torch.sqrt(torch.clamp(spec.real**2 + spec.imag**2, min=1e-7)).transpose(1, 2)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence ``||Y - X||_F / ||Y||_F`` plus L1 of log magnitudes, each averaged over resolutions.

    ``forward(pred, target)`` returns their sum; :meth:`terms` returns ``(sc, log_mag)``.
    """

    def __init__(self, resolutions: Sequence[Sequence[int]] = PWG_RESOLUTIONS) -> None:
        super().__init__()
        self.resolutions = [tuple(int(v) for v in r) for r in resolutions]
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window{i}", torch.hann_window(win), persistent=False)

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sc = pred.new_zeros((), dtype=torch.float32)
        mag = pred.new_zeros((), dtype=torch.float32)
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window{i}")
            p = stft_magnitude(pred, n_fft, hop, win, window)
            t = stft_magnitude(target, n_fft, hop, win, window)
            sc = sc + torch.linalg.norm(t - p) / torch.linalg.norm(t)
            mag = mag + F.l1_loss(torch.log(p), torch.log(t))
        n = len(self.resolutions)
        return sc / n, mag / n

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sc, mag = self.terms(pred, target)
        return sc + mag


def discriminator_loss(real: DOutputs, fake: DOutputs) -> torch.Tensor:
    """LSGAN: real scores toward 1, fake toward 0; mean over the discriminators."""
    total = sum(torch.mean((1.0 - r.float()) ** 2) + torch.mean(f.float() ** 2) for (r, _), (f, _) in zip(real, fake))
    return total / len(real)  # type: ignore[return-value]


def generator_adversarial_loss(fake: DOutputs) -> torch.Tensor:
    """LSGAN: the generator pushes its scores toward 1; mean over the discriminators."""
    return sum(torch.mean((1.0 - f.float()) ** 2) for f, _ in fake) / len(fake)  # type: ignore[return-value]


def feature_matching_loss(real: DOutputs, fake: DOutputs) -> torch.Tensor:
    """L1 between the discriminator's feature maps of real (treated as constants) and restored audio;
    mean over every (discriminator, layer)."""
    terms = [torch.mean(torch.abs(r.detach().float() - f.float())) for (_, rf), (_, ff) in zip(real, fake) for r, f in zip(rf, ff)]
    return torch.stack(terms).mean()


def mean_score(outputs: DOutputs) -> torch.Tensor:
    """Mean discriminator score over every resolution (logged as D_real / D_fake)."""
    return torch.stack([s.detach().float().mean() for s, _ in outputs]).mean()
