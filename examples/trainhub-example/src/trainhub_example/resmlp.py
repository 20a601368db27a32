"""A pre-norm residual MLP with the constructor of core's ``tiny-mlp``, so the ``tiny`` recipe can use it."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(nn.functional.gelu(self.fc1(self.norm(x)))))


class ResidualMLP(nn.Module):
    """``dim -> hidden``, ``depth`` residual blocks (LayerNorm, 2x-wide MLP), ``hidden -> 1``."""

    def __init__(self, dim: int = 8, hidden: int = 64, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h))
