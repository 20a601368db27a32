"""The built-in optimizers (registered as "adamw", "adam" and "sgd")."""

from __future__ import annotations

from typing import Any

import torch

from trainhub.components import OptimizerSettings


def _kernel(s: OptimizerSettings) -> dict[str, bool]:
    """The fused kernel where asked for and the device has one, else the multi-tensor (foreach) one."""
    return {"fused": True} if s.fused and s.device.type in ("cuda", "cpu", "mps") else {"foreach": True}


def adamw(params: list[Any], s: OptimizerSettings, amsgrad: bool = False) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay, amsgrad=amsgrad, **_kernel(s))


def adam(params: list[Any], s: OptimizerSettings, amsgrad: bool = False) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, as the SR3 and VRT references train)."""
    return torch.optim.Adam(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay, amsgrad=amsgrad, **_kernel(s))


def sgd(params: list[Any], s: OptimizerSettings, momentum: float = 0.9, nesterov: bool = False,
        dampening: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov's with ``nesterov: true``); ``betas`` and ``eps`` do not apply."""
    return torch.optim.SGD(params, lr=s.lr, momentum=momentum, nesterov=nesterov, dampening=dampening,
                           weight_decay=s.weight_decay, **_kernel(s))
