from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainhub_timbre_gan.metrics import log_spectral_distance, mrstft_distance, si_sdr
from trainhub_timbre_gan.spectrogram import colorize, spectrogram_grid, spectrogram_tiles


def test_si_sdr_is_scale_invariant_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 8000, generator=g)
    s = s - s.mean()
    n = torch.randn(1, 8000, generator=g)
    n = n - n.mean()
    n = n - (n * s).sum() / (s * s).sum() * s  # orthogonal to s: the projection is exactly s
    n = n * (s.norm() / n.norm()) * 0.1  # 20 dB below
    assert float(si_sdr(s + n, s)) == pytest.approx(20.0, abs=1e-3)
    assert float(si_sdr(3.0 * (s + n), s)) == pytest.approx(20.0, abs=1e-3)
    assert float(si_sdr(s, s)) > 60


def test_lsd_of_a_doubled_signal_is_log10_of_four():
    x = torch.randn(2, 1, 8000) * 5.0
    assert torch.allclose(log_spectral_distance(2 * x, x), torch.full((2,), math.log10(4.0)), atol=1e-5)
    assert torch.allclose(log_spectral_distance(x, x), torch.zeros(2))


def test_mrstft_distance_is_per_example():
    x = torch.randn(3, 1, 8000)
    y = x.clone()
    y[1] *= 2.0
    d = mrstft_distance(y, x)
    assert float(d[0]) == 0.0 and float(d[2]) == 0.0
    assert float(d[1]) == pytest.approx(1.0 + math.log(2.0), abs=1e-4)


def test_spectrogram_picture():
    waves = [torch.randn(8000) * 0.1, torch.zeros(8000), torch.sin(torch.arange(8000) * 0.3)]
    tiles = spectrogram_tiles(waves)
    assert all(t.shape == (257, 321, 3) and t.dtype == np.uint8 for t in tiles)  # hop 8000 // 320 = 25 -> 321 frames
    assert (tiles[1] == [0, 0, 4]).all()  # silence is 80 dB below the loudest bin of the row: black
    assert tiles[2].max() == 255 and tiles[2][::-1][int(0.3 / (2 * math.pi) * 512)].mean() > 200  # the sine's bin is bright
    img = spectrogram_grid([waves, [w * 0.5 for w in waves]], ["degraded", "restored", "clean"], ["one", "two"])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] > 3 * 321 and img.shape[0] > 2 * 257  # tiles plus the titles
    assert colorize(np.array([0.0, 1.0])).tolist() == [[0, 0, 4], [255, 255, 255]]
