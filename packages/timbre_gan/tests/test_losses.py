"""Losses against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainhub_timbre_gan.losses import (
    PWG_RESOLUTIONS,
    MultiResolutionSTFTLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mean_score,
)


def numpy_stft_magnitude(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Frames x bins magnitude, written out: reflect padding by n_fft/2, periodic Hann window centred in n_fft."""
    w = np.zeros(n_fft)
    left = (n_fft - win) // 2
    w[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    xp = np.pad(x, n_fft // 2, mode="reflect")
    frames = 1 + (len(xp) - n_fft) // hop
    spec = np.stack([np.fft.rfft(xp[t * hop : t * hop + n_fft] * w) for t in range(frames)])
    return np.sqrt(np.maximum(spec.real**2 + spec.imag**2, 1e-7))


@pytest.mark.parametrize("resolution", [(512, 50, 240), (256, 64, 256)])
def test_stft_loss_matches_a_numpy_computation(resolution):
    g = np.random.default_rng(0)
    target, pred = g.standard_normal((2, 3000)) * 0.3, g.standard_normal((2, 3000)) * 0.3
    t = np.stack([numpy_stft_magnitude(v, *resolution) for v in target])
    p = np.stack([numpy_stft_magnitude(v, *resolution) for v in pred])
    sc_ref = np.linalg.norm(t - p) / np.linalg.norm(t)
    mag_ref = np.mean(np.abs(np.log(t) - np.log(p)))
    sc, mag = MultiResolutionSTFTLoss([resolution]).terms(torch.from_numpy(pred).float()[:, None], torch.from_numpy(target).float()[:, None])
    assert float(sc) == pytest.approx(sc_ref, rel=1e-4)
    assert float(mag) == pytest.approx(mag_ref, rel=1e-4)


def test_twice_the_signal_gives_sc_one_and_log_two():
    """|STFT(2y)| = 2|STFT(y)|: spectral convergence ||2Y - Y|| / ||Y|| = 1, log-magnitude L1 = log 2, at every
    resolution (a loud signal, so the 1e-7 floor never binds)."""
    y = torch.randn(2, 1, 4800) * 10.0
    loss = MultiResolutionSTFTLoss(PWG_RESOLUTIONS)
    sc, mag = loss.terms(2 * y, y)
    assert float(sc) == pytest.approx(1.0, abs=1e-5)
    assert float(mag) == pytest.approx(math.log(2.0), abs=1e-4)
    assert float(loss(y, y)) == 0.0


def test_lsgan_and_feature_matching_values():
    real = [(torch.full((2, 5), 0.5), [torch.ones(2, 3)]), (torch.full((2, 7), 1.0), [torch.zeros(2, 3)])]
    fake = [(torch.full((2, 5), 0.25), [torch.full((2, 3), 0.5)]), (torch.full((2, 7), 0.0), [torch.full((2, 3), 2.0)])]
    # D: mean over discriminators of (1 - r)^2 + f^2 -> ((0.25 + 0.0625) + (0 + 0)) / 2
    assert float(discriminator_loss(real, fake)) == pytest.approx(0.15625)
    # G: mean of (1 - f)^2 -> (0.5625 + 1) / 2
    assert float(generator_adversarial_loss(fake)) == pytest.approx(0.78125)
    # FM: mean over (discriminator, layer) of |r - f| -> (0.5 + 2) / 2
    assert float(feature_matching_loss(real, fake)) == pytest.approx(1.25)
    assert float(mean_score(real)) == pytest.approx(0.75)


def test_feature_matching_treats_real_features_as_constants():
    r = torch.ones(3, requires_grad=True)
    f = torch.zeros(3, requires_grad=True)
    feature_matching_loss([(torch.zeros(1), [r])], [(torch.zeros(1), [f])]).backward()
    assert r.grad is None and f.grad is not None
