"""Gaussian diffusion for SR3: beta schedules, respacing, the continuous-noise-level training loss
and the samplers (ancestral, as the reference, and deterministic DDIM).

The network predicts the noise (``eps``, the reference's parameterisation), the clean target (``x0``) or
``v = sqrt(gamma) * eps - sqrt(1 - gamma) * x0``; :func:`split_prediction` turns any of them into both.

``discrete``: the reference's ddpm network is conditioned on the integer timestep (one per sample, drawn
from 0..T-1) instead of the continuous noise level; sampling then feeds each step's index in the schedule it
was trained on (:attr:`Schedule.timesteps`). ``conditional=False``: unconditional generation, the network
sees the noisy image alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch

SCHEDULES = ("linear", "cosine", "quad", "warmup10", "warmup50", "const", "jsd")
PREDICTIONS = ("eps", "x0", "v")


def make_betas(schedule: str, n: int, linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3) -> np.ndarray:
    """The seven beta schedules of the reference SR3 code, in float64."""
    if schedule == "linear":
        return np.linspace(linear_start, linear_end, n, dtype=np.float64)
    if schedule == "quad":
        return np.linspace(linear_start**0.5, linear_end**0.5, n, dtype=np.float64) ** 2
    if schedule in ("warmup10", "warmup50"):
        betas = linear_end * np.ones(n, dtype=np.float64)
        warm = int(n * (0.1 if schedule == "warmup10" else 0.5))
        betas[:warm] = np.linspace(linear_start, linear_end, warm, dtype=np.float64)
        return betas
    if schedule == "const":
        return linear_end * np.ones(n, dtype=np.float64)
    if schedule == "jsd":  # 1/T, 1/(T-1), ..., 1
        return 1.0 / np.linspace(n, 1, n, dtype=np.float64)
    if schedule == "cosine":
        t = np.arange(n + 1, dtype=np.float64) / n + cosine_s
        alphas = np.cos(t / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.clip(1 - alphas[1:] / alphas[:-1], None, 0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def respaced_steps(n: int, steps: int) -> np.ndarray:
    """The timesteps of an ``n``-step schedule that a ``steps``-step respacing keeps (evenly spaced, ends included)."""
    if steps >= n:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, steps)).astype(np.int64))


def respace(betas: np.ndarray, steps: int) -> np.ndarray:
    """Betas of a ``steps``-step chain visiting evenly spaced timesteps of ``betas`` with the same
    cumulative alphas there (so x_t has the same marginal distribution at every kept step)."""
    ac = np.cumprod(1.0 - betas)
    if steps >= len(betas):
        return betas.copy()
    kept = ac[respaced_steps(len(betas), steps)]
    prev = np.concatenate([[1.0], kept[:-1]])
    return 1.0 - kept / prev


@dataclass
class Schedule:
    """Precomputed quantities of one beta schedule (float64 numpy, small). ``timesteps``: the index each step
    had in the schedule the network was trained on (default 0..T-1; a respaced schedule keeps the originals)."""

    betas: np.ndarray
    timesteps: Optional[np.ndarray] = None

    @classmethod
    def respaced(cls, betas: np.ndarray, steps: int) -> "Schedule":
        return cls(respace(betas, steps), respaced_steps(len(betas), steps))

    def __post_init__(self) -> None:
        if self.timesteps is None:
            self.timesteps = np.arange(len(self.betas), dtype=np.int64)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod_prev = np.sqrt(np.append(1.0, self.alphas_cumprod))  # gamma levels 0..T
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.maximum(self.posterior_variance, 1e-20))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

    @property
    def steps(self) -> int:
        return len(self.betas)

    def buffers(self) -> dict[str, torch.Tensor]:
        """The schedule tensors under the reference's buffer names (for its checkpoint format and the param monitor)."""
        ac = self.alphas_cumprod
        out = {
            "betas": self.betas, "alphas_cumprod": ac, "alphas_cumprod_prev": self.alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
            "log_one_minus_alphas_cumprod": np.log(1 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1), "posterior_variance": self.posterior_variance,
            "posterior_log_variance_clipped": self.posterior_log_variance_clipped,
            "posterior_mean_coef1": self.posterior_mean_coef1, "posterior_mean_coef2": self.posterior_mean_coef2,
        }
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def split_prediction(out: torch.Tensor, x: torch.Tensor, level: torch.Tensor, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) from the network output for ``x = level * x0 + sqrt(1 - level^2) * eps``.

    The coefficients are computed in float64 (``1 - level^2`` cancels badly in float32 near level 1)."""
    g64 = level.detach().reshape(-1, 1, 1, 1).to("cpu", torch.float64)  # on CPU: MPS has no float64
    g, s = g64.float().to(out.device), (1 - g64**2).clamp_min(1e-20).sqrt().float().to(out.device)
    out, x = out.float(), x.float()
    if prediction == "eps":
        return out, (x - s * out) / g
    if prediction == "x0":
        return (x - g * out) / s, out
    if prediction == "v":
        return s * x + g * out, g * x - s * out
    raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")


def training_loss(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hr: torch.Tensor,
    sr: torch.Tensor,
    schedule: Schedule,
    loss_type: str = "l1",
    residual: bool = False,
    prediction: str = "eps",
    residual_scale: float = 1.0,
    discrete: bool = False,
    conditional: bool = True,
) -> torch.Tensor:
    """SR3's objective: one timestep t per batch, then sqrt(gamma) per sample uniformly between the
    schedule's levels at t-1 and t; noise the target, predict the noise (or ``x0`` / ``v``), L1 (or L2)
    mean over pixels (the reference's sum / (b*c*h*w)). ``discrete`` (the ddpm network): one timestep per
    sample from 0..T-1, sqrt(gamma) = sqrt(alphas_cumprod[t]), and the network is given t.

    ``residual``: diffuse ``(hr - sr) * residual_scale`` (the detail bicubic misses, scaled towards unit
    variance so that the schedule's informative noise levels are not squeezed next to level 1) instead of ``hr``.
    """
    b = hr.shape[0]
    x0 = (hr - sr) * residual_scale if residual else hr
    if discrete:
        t_b = torch.randint(0, schedule.steps, (b,))
        level = torch.from_numpy(np.sqrt(schedule.alphas_cumprod))[t_b].float().to(hr.device)
        cond = t_b.float().to(hr.device)
    else:
        t = int(torch.randint(1, schedule.steps + 1, ()).item())
        lo, hi = schedule.sqrt_alphas_cumprod_prev[t - 1], schedule.sqrt_alphas_cumprod_prev[t]
        level = cond = (lo + (hi - lo) * torch.rand(b, device=hr.device, dtype=torch.float64)).float()
    noise = torch.randn_like(x0)
    g = level.view(b, 1, 1, 1)
    s = (1 - g**2).sqrt()
    noisy = g * x0 + s * noise
    pred = net(torch.cat([sr, noisy], dim=1) if conditional else noisy, cond)
    target = {"eps": noise, "x0": x0, "v": g * noise - s * x0}[prediction]
    err = pred.float() - target.float()
    return err.abs().mean() if loss_type == "l1" else err.pow(2).mean()


@torch.no_grad()
def sample(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sr: Optional[torch.Tensor],
    schedule: Schedule,
    sampler: str = "ancestral",
    residual: bool = False,
    generator: Optional[torch.Generator] = None,
    progress: Union[bool, Callable[..., Iterable[int]]] = False,
    prediction: str = "eps",
    residual_scale: float = 1.0,
    temperature: float = 1.0,
    discrete: bool = False,
    shape: Optional[tuple[int, ...]] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Super-resolve: start from noise, denoise through every step of ``schedule`` (clipping x0 to [-1, 1]).
    ``sr=None`` with ``shape`` (B x C x H x W) and ``device``: unconditional generation.

    ``temperature`` scales the starting noise (and the ancestral sampler's fresh noise): 1 draws a sample
    of the learnt posterior; lower values start closer to the mean (which did not raise PSNR on the embedded photos)."""
    from tqdm.auto import tqdm

    if sr is None:
        if shape is None or residual:
            raise ValueError("unconditional sampling needs a shape and no residual")
        sr = torch.zeros(shape, device=device)  # only its shape, device and dtype are used
        conditional = False
    else:
        conditional = True
    x = (temperature * torch.randn(sr.shape, generator=generator, device="cpu")).to(sr.device, sr.dtype)
    k = residual_scale
    steps = range(schedule.steps - 1, -1, -1)
    # progress: a tqdm bar when true; a callable such as EvalContext.progress wraps the steps itself
    loop = progress(steps, "sampling", len(steps)) if callable(progress) else tqdm(steps, desc="sampling", disable=not progress, leave=False)
    for t in loop:
        level = torch.full((sr.shape[0],), schedule.sqrt_alphas_cumprod_prev[t + 1], dtype=torch.float64)
        cond = torch.full((sr.shape[0],), float(schedule.timesteps[t])) if discrete else level.float()
        out = net(torch.cat([sr, x], dim=1) if conditional else x, cond.to(sr.device))
        _, x0 = split_prediction(out, x, level, prediction)
        ac = schedule.alphas_cumprod[t]
        x0 = ((x0 / k + sr).clamp(-1, 1) - sr) * k if residual else x0.clamp(-1, 1)
        if sampler == "ddim":
            ac_prev = schedule.alphas_cumprod_prev[t]
            eps = (x.float() - math.sqrt(ac) * x0) / math.sqrt(1 - ac)
            x = math.sqrt(ac_prev) * x0 + math.sqrt(1 - ac_prev) * eps
        else:
            mean = schedule.posterior_mean_coef1[t] * x0 + schedule.posterior_mean_coef2[t] * x.float()
            if t > 0:
                noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
                x = mean + temperature * math.exp(0.5 * schedule.posterior_log_variance_clipped[t]) * noise
            else:
                x = mean
        x = x.to(sr.dtype)
    out = x.float() / k + sr.float() if residual else x.float()
    return out.clamp(-1, 1)
