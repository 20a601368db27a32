"""Gaussian diffusion as DiT trains and samples it (the ADM formulation, written compactly).

- linear beta schedule over 1000 steps (scaled for other step counts), epsilon prediction;
- learned variance: the model's second half of channels interpolates the log-variance between the posterior's
  and ``beta_t`` ("learned range"); trained with the hybrid loss MSE(eps) + VLB, the VLB seeing a detached mean;
- sampling: ancestral (DDPM) or DDIM on a respaced subset of the timesteps (e.g. 250 of 1000), with
  classifier-free guidance.

Schedules are computed in float64 and read out as float32 per step, as the reference does.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from tqdm.auto import tqdm

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, model timesteps) -> model output


def linear_betas(steps: int = 1000) -> torch.Tensor:
    """The DDPM linear schedule 1e-4 .. 0.02, rescaled so that other step counts cover the same noise range."""
    scale = 1000 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """Which of the original timesteps a respaced sampler keeps.

    ``spec``: an int or ``"250"`` (evenly spread, first and last step included), ``"ddim50"`` (a constant stride
    starting at 0), or ``"10,15,20"`` (that many steps in each of equal-length sections of the schedule).
    """
    spec = str(spec)
    if spec.startswith("ddim"):
        want = int(spec[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == want:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {want} steps with a constant stride from {num_timesteps}")
    counts = [int(c) for c in spec.split(",")]
    size, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        length = size + (1 if i < extra else 0)
        if not 1 <= count <= length:
            raise ValueError(f"cannot take {count} steps from a section of {length} timesteps")
        stride = (length - 1) / (count - 1) if count > 1 else 1
        pos = 0.0
        for _ in range(count):  # accumulated like the reference, so the kept steps match it exactly
            kept.append(start + round(pos))
            pos += stride
        start += length
    return sorted(set(kept))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """A fast tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 levels under N(mean, e^(2 log_scale)), elementwise."""
    inv_std = torch.exp(-log_scale)
    centered = x - mean
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


class GaussianDiffusion:
    """A diffusion process over ``betas``; ``timestep_map[i]`` is the original timestep that step ``i`` stands for
    (the identity for the full schedule, a subset for a respaced sampler) and is what the model is called with."""

    def __init__(self, betas: torch.Tensor, learn_sigma: bool = True, timestep_map: Optional[list[int]] = None) -> None:
        b = betas.to(torch.float64)
        self.num_timesteps = len(b)
        self.learn_sigma = learn_sigma
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(len(b)), dtype=torch.long)
        ac = torch.cumprod(1.0 - b, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # the t=0 variance is 0: use t=1's
        self.tables64 = {
            "betas": b,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
            "posterior_log_variance_clipped": post_logvar,
            "posterior_mean_coef1": b * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * (1.0 - b).sqrt() / (1.0 - ac),
            "log_betas": torch.log(b),
            # the fixed "large" variance used when the model does not learn sigma
            "fixed_large_log_variance": torch.log(torch.cat([post_var[1:2], b[1:]])),
        }
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    def respaced(self, spec: str | int) -> "GaussianDiffusion":
        """The same process on a subset of timesteps (``space_timesteps``), betas recomputed from alphas_cumprod."""
        keep = space_timesteps(self.num_timesteps, spec)
        ac = self.tables64["alphas_cumprod"]
        betas, last = [], 1.0
        for i in keep:
            betas.append(1.0 - float(ac[i]) / last)
            last = float(ac[i])
        base = self.timestep_map.tolist()
        return GaussianDiffusion(torch.tensor(betas, dtype=torch.float64), self.learn_sigma, [base[i] for i in keep])

    def _at(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Table ``name`` read at timesteps ``t`` as float32, shaped to broadcast over a ``ndim`` tensor."""
        key = (name, t.device)
        if key not in self._cache:
            self._cache[key] = self.tables64[name].float().to(t.device)
        return self._cache[key][t].reshape(-1, *([1] * (ndim - 1)))

    # ---- forward process ----
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_alphas_cumprod", t, x0.dim()) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0.dim()) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        n = xt.dim()
        mean = self._at("posterior_mean_coef1", t, n) * x0 + self._at("posterior_mean_coef2", t, n) * xt
        return mean, self._at("posterior_log_variance_clipped", t, n).expand_as(xt)

    # ---- reverse process ----
    def p_mean_variance(self, out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip: bool) -> dict[str, torch.Tensor]:
        """Mean, log-variance and predicted x_0 of p(x_{t-1} | x_t) from the model output ``out``."""
        c, n = xt.shape[1], xt.dim()
        if self.learn_sigma:
            eps, v = out[:, :c], out[:, c:]
            lo, hi = self._at("posterior_log_variance_clipped", t, n), self._at("log_betas", t, n)
            frac = (v + 1) / 2
            logvar = frac * hi + (1 - frac) * lo
        else:
            eps = out
            logvar = self._at("fixed_large_log_variance", t, n).expand_as(xt)
        x0 = self._at("sqrt_recip_alphas_cumprod", t, n) * xt - self._at("sqrt_recipm1_alphas_cumprod", t, n) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "log_variance": logvar, "pred_x0": x0, "eps": eps}

    def training_losses(self, model: Callable[..., torch.Tensor], x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                        noise: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Per-sample losses: ``mse`` on the noise, ``vb`` (bits/dim) for the variance, ``loss`` = their sum."""
        noise = torch.randn_like(x0) if noise is None else noise
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.timestep_map.to(t.device)[t], y).float()
        c = x0.shape[1]
        terms = {"mse": _mean_flat((noise - out[:, :c]) ** 2)}
        if self.learn_sigma:
            # the VLB trains only the variance: the mean (eps) is detached so MSE alone drives it
            frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
            p = self.p_mean_variance(frozen, xt, t, clip=False)
            true_mean, true_logvar = self.q_posterior(x0, xt, t)
            kl = _mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
            nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
            terms["vb"] = torch.where(t == 0, nll, kl)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    def sample(self, model_fn: ModelFn, noise: torch.Tensor, sampler: str = "ddpm", clip: bool = False, eta: float = 0.0,
               generator: Optional[torch.Generator] = None,
               progress: bool | Callable[..., Iterable[int]] = False) -> torch.Tensor:
        """Run the reverse process from ``noise`` (x_T) to x_0 with ancestral ("ddpm") or DDIM steps. ``progress``:
        True for a tqdm bar, or a wrapper ``progress(steps, desc, total)`` (an eval's ``ctx.progress``)."""
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; allowed: ddpm, ddim")
        x = noise
        n, steps = x.shape[0], range(self.num_timesteps - 1, -1, -1)
        tmap = self.timestep_map.to(x.device)
        desc = f"sampling ({sampler})"
        bar = progress(steps, desc, len(steps)) if callable(progress) else tqdm(steps, desc=desc, disable=not progress, leave=False)
        for i in bar:
            t = torch.full((n,), i, device=x.device, dtype=torch.long)
            p = self.p_mean_variance(model_fn(x, tmap[t]).float(), x, t, clip)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if i > 0 else None
            if sampler == "ddpm":
                x = p["mean"] if z is None else p["mean"] + torch.exp(0.5 * p["log_variance"]) * z
                continue
            nd = x.dim()
            # the noise consistent with the (possibly clipped) x_0 prediction
            eps = (self._at("sqrt_recip_alphas_cumprod", t, nd) * x - p["pred_x0"]) / self._at("sqrt_recipm1_alphas_cumprod", t, nd)
            a, a_prev = self._at("alphas_cumprod", t, nd), self._at("alphas_cumprod_prev", t, nd)
            sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
            x = p["pred_x0"] * a_prev.sqrt() + torch.sqrt(1 - a_prev - sigma**2) * eps
            if z is not None and eta > 0:
                x = x + sigma * z
        return x


def guided(model: Callable[..., torch.Tensor], y: torch.Tensor, cfg_scale: float, null_class: int, channels: int) -> ModelFn:
    """Classifier-free guidance around ``model(x, t, y)``: ``out_uncond + s * (out_cond - out_uncond)`` on the first
    ``channels`` output channels (the noise: ``in_channels``; 3 reproduces the official sampler's quirk), the
    conditional prediction for the other channels. ``cfg_scale`` 1 runs the conditional model only."""
    if cfg_scale == 1.0:
        return lambda x, t: model(x, t, y)
    y_null = torch.full_like(y, null_class)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null])).float()
        cond, uncond = out.chunk(2)
        eps = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([eps, cond[:, channels:]], dim=1)

    return fn
