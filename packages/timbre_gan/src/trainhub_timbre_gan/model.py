"""The networks, top to bottom: a residual-gated waveform U-Net generator and multi-resolution
spectrogram discriminators.

Generator: ``restored = degraded + gate * correction``, both per sample from the last features ``h``:
``gate = sigmoid(conv(h) + gate_bias)`` starts at ``sigmoid(gate_bias)`` everywhere (0.5 for the default 0) and the
correction head starts at zero (as adaLN-Zero does), so an untrained generator is exactly the identity and
training only has to learn the damage, not the music; the gate learns where to correct and where to leave the
input alone. The body is a
1-D U-Net: dilated residual blocks per level, strided convolutions down, transposed convolutions up with skip
additions, a dilated bottleneck for the long context that compression and EQ need.

Discriminator: one 2-D conv net per STFT resolution on the log-magnitude spectrogram (UnivNet's
multi-resolution discriminator layout: kernels (3, 9) with time stride 2, then (3, 3); weight norm; leaky ReLU
0.2). The damage here is spectral (EQ, missing bands, noise floor, clipping harmonics), which is what these
judge directly, at three time/frequency trade-offs. The strides are configurable: frequency strides make it
several times cheaper, which the CPU-sized embedded default uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LRELU = 0.1
#: UnivNet's (freq, time) strides of the (3, 9) convolutions.
UNIVNET_STRIDES = ((1, 1), (1, 2), (1, 2), (1, 2))


class ResBlock(nn.Module):
    """``x + conv(act(conv(act(x))))`` with a dilated first convolution."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, LRELU)), LRELU))


class Generator(nn.Module):
    """Waveform restorer ``(B, 1, T) -> (B, 1, T)``; any ``T`` (padded inside to a multiple of the strides)."""

    def __init__(self, channels: int = 16, strides: Sequence[int] = (4, 4), res_blocks: int = 1,
                 bottleneck_dilations: Sequence[int] = (1, 3, 9, 27), kernel_size: int = 7, gate_bias: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.hop = math.prod(strides)
        k = kernel_size
        self.inp = nn.Conv1d(1, channels, k, padding=k // 2)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        c = channels
        for s in strides:
            self.enc.append(nn.Sequential(*[ResBlock(c, k) for _ in range(res_blocks)]))
            self.down.append(nn.Conv1d(c, 2 * c, 2 * s, stride=s, padding=(s + 1) // 2))
            c *= 2
        self.mid = nn.Sequential(*[ResBlock(c, 3, d) for d in bottleneck_dilations])
        for s in reversed(strides):
            self.up.append(nn.ConvTranspose1d(c, c // 2, 2 * s, stride=s, padding=(s + 1) // 2, output_padding=s % 2))
            c //= 2
            self.dec.append(nn.Sequential(*[ResBlock(c, k) for _ in range(res_blocks)]))
        self.correction = nn.Conv1d(c, 1, k, padding=k // 2)
        self.gate = nn.Conv1d(c, 1, k, padding=k // 2)
        with torch.no_grad():
            self.correction.weight.zero_()
            self.correction.bias.zero_()
            self.gate.weight.zero_()
            self.gate.bias.fill_(gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        pad = (-t) % self.hop
        h = self.inp(F.pad(x, (0, pad)))
        skips = []
        for enc, down in zip(self.enc, self.down):
            h = enc(h)
            skips.append(h)
            h = down(F.leaky_relu(h, LRELU))
        h = self.mid(h)
        for up, dec in zip(self.up, self.dec):
            h = dec(up(F.leaky_relu(h, LRELU)) + skips.pop())
        h = F.leaky_relu(h, LRELU)
        correction = self.correction(h)[..., :t]
        gate = torch.sigmoid(self.gate(h))[..., :t]
        return x + gate * correction


def log_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int, window: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T)`` -> ``(B, 1, freq, frames)`` log10 STFT magnitude, floored at 1e-5 (computed in float32)."""
    spec = torch.stft(x.squeeze(1).float(), n_fft, hop, win, window, center=True, return_complex=True)
    return torch.log10(spec.abs().clamp_min(1e-5)).unsqueeze(1)


class SpectrogramDiscriminator(nn.Module):
    """One resolution: a (3, 9) convolution per entry of ``strides`` ((freq, time) strides), then two (3, 3)
    convolutions down to one score map. Returns ``(scores, feature maps)``."""

    def __init__(self, n_fft: int, hop: int, win: int, channels: int = 32,
                 strides: Sequence[Sequence[int]] = UNIVNET_STRIDES) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop, win
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        c = channels
        self.convs = nn.ModuleList(
            [weight_norm(nn.Conv2d(1 if i == 0 else c, c, (3, 9), stride=tuple(st), padding=(1, 4))) for i, st in enumerate(strides)]
        )
        self.convs.append(weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))))
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = log_magnitude(x, self.n_fft, self.hop, self.win, self.window)
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        h = self.post(h)
        feats.append(h)
        return h.flatten(1), feats


class MultiResolutionDiscriminator(nn.Module):
    """Spectrogram discriminators at several ``(n_fft, hop, win)``; returns one ``(scores, feats)`` per resolution."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)),
                 channels: int = 32, strides: Sequence[Sequence[int]] = UNIVNET_STRIDES) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([SpectrogramDiscriminator(n, h, w, channels, strides) for n, h, w in resolutions])

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(x) for d in self.discriminators]


@torch.no_grad()
def restore_long(generator: nn.Module, wave: torch.Tensor, chunk: int, context: int) -> torch.Tensor:
    """Restore ``(channels, T)`` audio of any length in chunks of ``chunk`` samples, each run with ``context``
    samples of real audio on both sides that are then dropped (the generator is fully convolutional, so with
    context beyond its receptive field the result equals one pass over the whole file). ``chunk`` and ``context``
    are rounded up to multiples of the generator's total stride (``generator.hop``), so every chunk starts on the
    same stride phase as the one pass."""
    hop = getattr(generator, "hop", 1)
    chunk, context = -(-chunk // hop) * hop, -(-context // hop) * hop
    total = wave.shape[-1]
    x = wave.unsqueeze(1)  # channels as the batch
    out = torch.empty_like(x)
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        lo, hi = max(0, start - context), min(total, end + context)
        y = generator(x[..., lo:hi])
        out[..., start:end] = y[..., start - lo : start - lo + (end - start)]
    return out.squeeze(1)
