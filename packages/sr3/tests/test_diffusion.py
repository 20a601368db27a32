"""Schedules, respacing and the training objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainhub_sr3.diffusion import SCHEDULES, Schedule, make_betas, respace, sample, training_loss


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_a_valid_beta_sequence(name):
    b = make_betas(name, 200, 1e-6, 1e-2)
    assert b.shape == (200,) and np.all(b > 0) and np.all(b <= 1.0)


def test_schedule_values():
    np.testing.assert_allclose(make_betas("linear", 5, 0.1, 0.5), [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(make_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
    w = make_betas("warmup10", 100, 1e-4, 2e-2)
    assert w[0] == 1e-4 and np.all(w[10:] == 2e-2)


def test_respacing_keeps_the_marginal_alphas():
    train = make_betas("linear", 1000, 1e-6, 1e-2)
    ac = np.cumprod(1 - train)
    spaced = respace(train, 100)
    keep = np.round(np.linspace(0, 999, 100)).astype(int)
    np.testing.assert_allclose(np.cumprod(1 - spaced), ac[keep], rtol=1e-12)
    assert len(spaced) == 100


def test_training_loss_draws_levels_between_neighbouring_steps():
    sched = Schedule(make_betas("linear", 10, 0.1, 0.5))
    seen = []

    def net(x, level):
        seen.append(level.clone())
        return torch.zeros_like(x[:, 3:])

    torch.manual_seed(0)
    for _ in range(50):
        loss = training_loss(net, torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8), sched, "l1")
        assert loss.item() == pytest.approx(0.7979, abs=0.1)  # E|N(0,1)| when predicting zero noise
    levels = sched.sqrt_alphas_cumprod_prev
    for lv in seen:
        assert lv.shape == (4,)
        lo = max(i for i in range(len(levels) - 1) if levels[i] >= lv.max() - 1e-6)
        assert all(levels[lo + 1] - 1e-6 <= v <= levels[lo] + 1e-6 for v in lv.tolist())  # one step's interval per batch


def test_perfect_noise_prediction_recovers_the_target():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    sr = torch.zeros_like(hr)
    sched = Schedule(respace(make_betas("linear", 200, 1e-4, 0.05), 20))

    def oracle(x, level):  # knows hr: returns the exact noise of x_t
        g = level.view(-1, 1, 1, 1).double()
        noisy = x[:, 3:].double()
        return ((noisy - g * hr.double()) / (1 - g**2).sqrt()).float()

    for sampler in ("ancestral", "ddim"):
        out = sample(oracle, sr, sched, sampler)
        torch.testing.assert_close(out, hr, atol=1e-3, rtol=0)
