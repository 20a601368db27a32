"""Schedules, respacing and the training objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainhub_sr3.diffusion import PREDICTIONS, SCHEDULES, Schedule, make_betas, respace, sample, split_prediction, training_loss


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


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_perfect_prediction_recovers_the_target(prediction):
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    sr = torch.zeros_like(hr)
    sched = Schedule(respace(make_betas("linear", 200, 1e-4, 0.05), 20))

    def oracle(x, level):  # knows hr: returns the exact eps / x0 / v of x_t
        g = level.view(-1, 1, 1, 1).double()
        s = (1 - g**2).sqrt()
        noisy = x[:, 3:].double()
        eps = (noisy - g * hr.double()) / s
        return {"eps": eps, "x0": hr.double(), "v": g * eps - s * hr.double()}[prediction].float()

    for sampler in ("ancestral", "ddim"):
        out = sample(oracle, sr, sched, sampler, prediction=prediction)
        torch.testing.assert_close(out, hr, atol=1e-3, rtol=0)
    assert training_loss(oracle, hr, sr, sched, "l2", prediction=prediction).item() < 1e-10


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_split_prediction_inverts_the_forward_process(prediction):
    x0, eps, g = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0.05, 0.5, 0.99])
    gb, s = g.view(-1, 1, 1, 1), (1 - g.view(-1, 1, 1, 1) ** 2).sqrt()
    x = gb * x0 + s * eps
    out = {"eps": eps, "x0": x0, "v": gb * eps - s * x0}[prediction]
    eps_hat, x0_hat = split_prediction(out, x, g, prediction)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-4)  # eps at gamma 0.05 amplifies rounding 20x


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_scaled_residual_round_trip(temperature):
    """The residual is diffused as (hr - sr) * residual_scale and scaled back when sampling."""
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 8, 8) * 2 - 1
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(-1, 1)
    sched = Schedule(respace(make_betas("linear", 200, 1e-4, 0.05), 20))
    k = 5.0

    def oracle(x, level):  # predicts the exact scaled residual
        return (hr - sr) * k

    for sampler in ("ancestral", "ddim"):
        out = sample(oracle, sr, sched, sampler, residual=True, prediction="x0", residual_scale=k, temperature=temperature)
        torch.testing.assert_close(out, hr, atol=1e-4, rtol=0)
    assert training_loss(oracle, hr, sr, sched, "l2", residual=True, prediction="x0", residual_scale=k).item() < 1e-10


def test_temperature_scales_the_starting_noise():
    sched = Schedule(respace(make_betas("linear", 100, 1e-4, 0.05), 5))
    starts = []

    def spy(x, level):
        if not starts:
            starts.append(x[:, 3:].clone())
        return torch.zeros_like(x[:, 3:])

    sample(spy, torch.zeros(1, 3, 16, 16), sched, "ddim", generator=torch.Generator().manual_seed(0), temperature=0.5)
    ref = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(starts[0], 0.5 * ref)


def test_discrete_training_gives_the_network_one_timestep_per_sample():
    """The reference's ddpm diffusion: t ~ U{0..T-1} per sample, x_t = sqrt(ac[t]) x0 + sqrt(1 - ac[t]) eps, and the
    network sees t; an oracle that inverts that formula from t alone has zero loss."""
    sched = Schedule(make_betas("linear", 50, 1e-4, 0.05))
    ac = np.cumprod(1 - make_betas("linear", 50, 1e-4, 0.05))
    hr = torch.rand(64, 3, 4, 4) * 2 - 1
    seen = []

    def oracle(x, t):
        seen.append(t.clone())
        a = torch.from_numpy(ac)[t.long()].view(-1, 1, 1, 1)
        return ((x[:, 3:].double() - a.sqrt() * hr.double()) / (1 - a).sqrt()).float()

    torch.manual_seed(0)
    assert training_loss(oracle, hr, torch.zeros_like(hr), sched, "l2", discrete=True).item() < 1e-8
    t = seen[0]
    assert torch.equal(t, t.round()) and 0 <= t.min() and t.max() <= 49 and len(t.unique()) > 10


def test_discrete_sampling_feeds_the_timesteps_the_network_was_trained_on():
    """Respaced to 5 of 100 steps, a ddpm network is called with the kept steps' original indices."""
    from trainhub_sr3.diffusion import respaced_steps

    seen = []

    def spy(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x[:, 3:])

    sched = Schedule.respaced(make_betas("linear", 100, 1e-4, 0.05), 5)
    sample(spy, torch.zeros(1, 3, 4, 4), sched, "ancestral", discrete=True)
    assert seen == [99, 74, 50, 25, 0] == list(np.round(np.linspace(0, 99, 5)).astype(int))[::-1]
    assert list(respaced_steps(100, 5)) == seen[::-1]
    kept = [int(s) for s in seen[::-1]]
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - make_betas("linear", 100, 1e-4, 0.05))[kept], rtol=1e-12)


def test_unconditional_training_and_sampling_show_the_network_the_noisy_image_alone():
    shapes = []

    def spy(x, level):
        shapes.append(tuple(x.shape))
        return torch.zeros_like(x)

    sched = Schedule(make_betas("linear", 10, 1e-4, 0.05))
    training_loss(spy, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), sched, conditional=False)
    out = sample(spy, None, sched, "ancestral", shape=(4, 3, 8, 8), device=torch.device("cpu"))
    assert out.shape == (4, 3, 8, 8) and set(shapes) == {(2, 3, 8, 8), (4, 3, 8, 8)}
