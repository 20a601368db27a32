"""Exponential moving average of model weights, kept in fp32, updated with foreach kernels."""

from __future__ import annotations

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` for floating parameters; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        # local tensors: under FSDP each rank keeps the EMA of its own shard
        self.params = {n: _local(p).detach().float().clone() for n, p in model.named_parameters()}
        keep = set(model.state_dict())  # non-persistent buffers are not saved with the model: not in the EMA either
        self.buffers = {n: _local(b).detach().clone() for n, b in model.named_buffers() if n in keep}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        names = list(self.params)
        named = dict(model.named_parameters())
        ema = [self.params[n] for n in names]
        cur = [_local(named[n]).detach() for n in names]
        if cur and cur[0].dtype != torch.float32:
            cur = [c.float() for c in cur]
        torch._foreach_lerp_(ema, cur, 1.0 - d)
        for n, b in model.named_buffers():
            if n in self.buffers:
                self.buffers[n].copy_(_local(b))

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        self.update(model, decay=0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.buffers}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for table in (self.params, self.buffers):
            for n in table:
                table[n].copy_(state[n])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        sd = self.state_dict()
        for n, t in model.state_dict().items():
            if n in sd:
                _local(t).copy_(sd[n])

    def to(self, device: torch.device) -> "EMA":
        self.params = {n: t.to(device) for n, t in self.params.items()}
        self.buffers = {n: t.to(device) for n, t in self.buffers.items()}
        return self
