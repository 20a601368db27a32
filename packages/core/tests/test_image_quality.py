"""PSNR and SSIM shared by the image recipes."""

from __future__ import annotations

import math

import torch

from trainhub.kit.image_quality import gaussian_window, psnr, ssim


def test_psnr_of_a_known_error_and_of_identical_images():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[1] += 0.1  # mse 0.01 -> 20 dB at peak 1, 20 + 20 log10(2) at peak 2
    out = psnr(a, b)
    assert out[0].item() == 100.0 and math.isclose(out[1].item(), 20.0, rel_tol=1e-5)
    assert math.isclose(psnr(a, b, data_range=2.0)[1].item(), 20.0 + 20 * math.log10(2), rel_tol=1e-5)


def test_ssim_is_one_for_equal_images_scale_free_and_lower_for_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(255 * a, 255 * noisy, data_range=255.0), ssim(a, noisy))
    assert (ssim(a, noisy) < 0.9).all()
    small = ssim(a[..., :6, :6], noisy[..., :6, :6])  # smaller than the 11x11 window: one window per image
    assert small.shape == (2,) and (small < 1).all()


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and math.isclose(w.sum().item(), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(w, w.flip(0))
    assert w.argmax().item() == 5 * 11 + 5
