"""Reconstruction losses every recipe can reuse (registered as "l1", "mse", "charbonnier")."""

from __future__ import annotations

import torch
from torch import nn


class CharbonnierLoss(nn.Module):
    """``mean(sqrt((x - y)^2 + eps^2))``: a smooth L1 used by video restoration (VRT, BasicSR)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((pred - target).pow(2) + self.eps**2).mean()
