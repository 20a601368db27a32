"""The class probe that scores generated samples: it must recognise real held-out shapes before its verdict on
generated ones means anything, and it must not disturb the run's random state."""

from __future__ import annotations

import torch

from trainhub_dit.data import EmbeddedShapes
from trainhub_dit.metrics import probe_accuracy, train_probe


def stack(ds: EmbeddedShapes, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(n)]
    return torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])


def test_probe_recognises_held_out_shapes_whatever_their_colour() -> None:
    x, y = stack(EmbeddedShapes(768, 16, hflip=False), 768)
    xv, yv = stack(EmbeddedShapes(240, 16, "val", hflip=False), 240)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    net = train_probe(x, y, 6, steps=120)
    assert torch.equal(torch.rand(3), before)  # the global RNG is where it was
    acc = probe_accuracy(net, xv, yv)
    assert acc > 0.85, acc  # chance is 1/6
    # colour alone carries no class: the same probe on per-image colour-permuted copies scores about as well
    permuted = torch.stack([img[torch.randperm(3)] for img in xv])
    assert probe_accuracy(net, permuted, yv) > 0.7
