"""The ``tiny`` recipe: a small MLP regression on synthetic data, the smallest complete recipe (a demo, and the
trainer's test bed)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub.builtin.tiny_config import TinyConfig
from trainhub.errors import UserError
from trainhub.recipe import EvalContext, Recipe, StepContext


class SyntheticRegression(Dataset):
    """``y = sin(x @ W) + noise`` with fixed ``W``: a deterministic dataset for trainer tests and demos."""

    def __init__(self, num_samples: int, dim: int = 8, noise: float = 0.05, seed: int = 0, split_offset: int = 0,
                 jitter: float = 0.0) -> None:
        self.jitter = jitter
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, 1, generator=g) / math.sqrt(dim)
        g2 = torch.Generator().manual_seed(seed + 1 + split_offset)
        self.x = torch.randn(num_samples, dim, generator=g2)
        self.y = torch.sin(3.0 * self.x @ w) + noise * torch.randn(num_samples, 1, generator=g2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.jitter:  # input jitter: an augmentation that exercises the data RNG
            x = x + self.jitter * torch.randn_like(x)
        return {"x": x, "y": self.y[i]}


class TinyMLP(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 64, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyRecipe(Recipe):
    """A tiny MLP regression: the smallest complete recipe, used to demo and test the trainer."""

    name = "tiny"
    description = "tiny MLP regression on synthetic data (built-in demo and trainer test recipe)"
    config_class = TinyConfig

    def build_models(self, config: TinyConfig) -> dict[str, nn.Module]:
        from trainhub.plugins import get_plugins

        m = config.model
        self.loss_fn = get_plugins().loss(config.data.loss)()  # per run: each run builds its own recipe
        return {"model": get_plugins().model(m.name)(dim=m.dim, hidden=m.hidden, depth=m.depth, dropout=m.dropout)}

    def build_data(self, config: TinyConfig) -> tuple[Dataset, Optional[Dataset]]:
        d = config.data
        if not d.val_samples and config.train.best_metric:
            raise UserError("data.val_samples=0 leaves nothing to evaluate: also set train.best_metric=null")
        train = SyntheticRegression(d.num_samples, config.model.dim, d.noise, seed=config.train.seed, jitter=d.jitter)
        val = SyntheticRegression(d.val_samples, config.model.dim, d.noise, seed=config.train.seed, split_offset=1) if d.val_samples else None
        return train, val

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        pred = ctx.models["model"](batch["x"])
        return {"loss": self.loss_fn(pred.float(), batch["y"])}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.data is None:
            return {}
        total, n = 0.0, 0
        for batch in ctx.data:
            x, y = batch["x"].to(ctx.device), batch["y"].to(ctx.device)
            with ctx.autocast():
                pred = ctx.models["model"](x)
            total += float(((pred.float() - y) ** 2).sum())
            n += len(x)
        return {"val_mse": total / max(n, 1)}
