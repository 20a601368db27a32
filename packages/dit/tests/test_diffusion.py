"""The diffusion process: schedule, respacing, the hybrid loss, samplers and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch

from trainhub_dit.diffusion import GaussianDiffusion, guided, linear_betas, space_timesteps
from trainhub_dit.model import DiT


def test_linear_schedule_and_respacing() -> None:
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert linear_betas(100)[-1].item() == pytest.approx(0.2)  # rescaled for fewer steps
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(space_timesteps(1000, "250")) == 250 and space_timesteps(1000, "250")[-1] == 999
    assert space_timesteps(100, "3,2") == [0, 24, 49, 50, 99]
    base = GaussianDiffusion(linear_betas(1000))
    r = base.respaced(250)
    keep = space_timesteps(1000, 250)
    # respaced betas reproduce alphas_cumprod at the kept steps; the model is called with the original timesteps
    assert torch.allclose(r.tables64["alphas_cumprod"], base.tables64["alphas_cumprod"][keep])
    assert r.timestep_map.tolist() == keep and r.num_timesteps == 250
    assert r.respaced(10).timestep_map.tolist() == [keep[i] for i in space_timesteps(250, 10)]


def test_hybrid_loss_terms() -> None:
    d = GaussianDiffusion(linear_betas(100))
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 1, 50, 99])
    noise = torch.randn_like(x0)
    perfect = lambda x, tt, y: torch.cat([noise, torch.zeros_like(noise)], 1)  # noqa: E731  exact eps, mid variance
    terms = d.training_losses(perfect, x0, t, None, noise=noise)
    assert torch.allclose(terms["mse"], torch.zeros(4), atol=1e-10)
    assert torch.allclose(terms["loss"], terms["vb"]) and (terms["vb"] >= -1e-6).all()
    # at t > 0 the VLB is a KL that vanishes when the predicted variance is the true posterior's (v = -1 -> lower bound)
    post = lambda x, tt, y: torch.cat([noise, -torch.ones_like(noise)], 1)  # noqa: E731
    kl = d.training_losses(post, x0, t, None, noise=noise)["vb"]
    assert kl[1:].abs().max() < 1e-5 and kl[0] > 0  # t = 0 is the decoder NLL in bits
    # the VLB only trains the variance: no gradient reaches the noise prediction through it
    out = torch.zeros(4, 6, 8, 8, requires_grad=True)
    d.training_losses(lambda x, tt, y: out, x0, t, None, noise=noise)["vb"].sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    fixed = GaussianDiffusion(linear_betas(100), learn_sigma=False)
    terms = fixed.training_losses(lambda x, tt, y: torch.zeros_like(x), x0, t, None, noise=noise)
    assert set(terms) == {"mse", "loss"} and torch.allclose(terms["mse"], (noise**2).mean((1, 2, 3)))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_reach_the_data_under_an_ideal_denoiser(sampler: str) -> None:
    """Data = one point x*: the ideal eps is (x_t - sqrt(a) x*) / sqrt(1 - a); every sampler must land on x*."""
    base = GaussianDiffusion(linear_betas(1000))
    target = torch.linspace(-0.8, 0.8, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    ac = base.tables64["alphas_cumprod"].float()

    def ideal(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t].reshape(-1, 1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    d = base.respaced(50)
    g = torch.Generator().manual_seed(0)
    x = d.sample(ideal, torch.randn(2, 3, 4, 4, generator=g), sampler, clip=True, generator=g)
    assert torch.allclose(x, target, atol=1e-3)


def test_cfg_sampling_smoke() -> None:
    torch.manual_seed(0)
    net = DiT(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=3).eval()
    for p in net.parameters():  # adaLN-Zero starts as the identity: perturb so that labels matter
        p.data.add_(0.05 * torch.randn_like(p))
    d = GaussianDiffusion(linear_betas(1000)).respaced(5)
    y = torch.tensor([0, 1, 2])
    noise = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        fn = guided(net, y, 4.0, null_class=3, channels=3)
        x, t = noise, torch.full((3,), 999)
        out, cond, uncond = fn(x, t), net(x, t, y), net(x, t, torch.full_like(y, 3))
        assert torch.allclose(out[:, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]), atol=1e-5)
        assert torch.allclose(out[:, 3:], cond[:, 3:], atol=1e-6)
        guided_x = d.sample(fn, noise, "ddim")
        plain_x = d.sample(guided(net, y, 1.0, 3, 3), noise, "ddim")
        again = d.sample(fn, noise, "ddim")
        ancestral = d.sample(fn, noise, "ddpm", generator=torch.Generator().manual_seed(1))
    assert guided_x.shape == (3, 3, 8, 8) and torch.isfinite(guided_x).all()
    assert torch.equal(guided_x, again)  # DDIM (eta 0) is deterministic
    assert not torch.allclose(guided_x, plain_x)
    assert math.isfinite(float(ancestral.abs().max()))
