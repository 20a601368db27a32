"""FID through torchmetrics (Inception-v3 features of torch-fidelity), only from local Inception weights.

Nothing is ever downloaded: without ``eval.fid_inception_weights`` pointing at an existing weights file (torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``), or without torchmetrics installed (``pip install 'trainhub-dit[fid]'``),
FID is skipped and :func:`fid_unavailable` says why in one line.

torch-fidelity unpickles the weights file with ``weights_only=False``; the file is first read here with
``weights_only=True``, so a file holding anything but tensors is refused before that happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch


def fid_unavailable(weights: Optional[str]) -> Optional[str]:
    """None when FID can be computed, else the one-line reason it is skipped."""
    if not weights:
        return "FID skipped: set eval.fid_inception_weights to a local Inception-v3 weights file to compute it"
    if not Path(weights).is_file():
        return f"FID skipped: eval.fid_inception_weights={weights} does not exist"
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        return "FID skipped: torchmetrics is not installed (pip install 'trainhub-dit[fid]')"
    return None


def check_weights(weights: str) -> None:
    """Refuse a weights file that is not a plain state dict of tensors (before torch-fidelity unpickles it)."""
    from trainhub import UserError

    try:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any refusal is reported the same way)
        raise UserError(f"eval.fid_inception_weights={weights}: not a plain state dict ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"eval.fid_inception_weights={weights}: not a state dict of tensors")


@torch.no_grad()
def fid(real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], weights: str, device: torch.device) -> float:
    """FID between two streams of image batches in [-1, 1] (N, 3, H, W). Under torch.distributed every rank calls it
    with its part of both sets: the feature sums and sums of outer products are added over the ranks before the FID
    is computed, so each rank returns the FID of all the ranks' images together."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    check_weights(weights)
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights,
                                      sync_on_compute=True).to(device)
    for batch in real:
        metric.update(((batch.float() + 1) / 2).clamp(0, 1).to(device), real=True)
    for batch in fake:
        metric.update(((batch.float() + 1) / 2).clamp(0, 1).to(device), real=False)
    return float(metric.compute())


# ---- class probe: are generated images of their class? ------------------------------------------------------

class ProbeNet(torch.nn.Module):
    """A small CNN classifier (three 3x3 conv layers, global max pooling): position-invariant, and trained on images
    whose colours vary independently of the class it learns to ignore colour."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        n = torch.nn
        self.features = n.Sequential(
            n.Conv2d(3, width // 2, 3, padding=1), n.ReLU(), n.MaxPool2d(2),
            n.Conv2d(width // 2, width, 3, padding=1), n.ReLU(), n.MaxPool2d(2),
            n.Conv2d(width, width, 3, padding=1), n.ReLU(),
        )
        self.head = n.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax((2, 3)))


def shapeless(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images with the colours of ``images`` and no shape: half with their pixels shuffled, half a flat fill of their
    mean colour plus noise. The probe learns them as an extra "no class" output, so a blank or scrambled sample
    counts as wrong instead of falling into whichever class the probe leans to."""
    n, c, h, w = images.shape
    flat = images.flatten(2)
    perm = torch.argsort(torch.rand(n, h * w, generator=generator), dim=1)
    shuffled = torch.gather(flat, 2, perm[:, None].expand(n, c, h * w)).view_as(images)
    noisy = flat.mean(2)[..., None, None] + torch.rand(n, 1, 1, 1, generator=generator) * 0.3 * torch.randn(
        images.shape, generator=generator)
    return torch.where(torch.arange(n)[:, None, None, None] % 2 == 0, shuffled, noisy.clamp(-1, 1))


def train_probe(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, batch_size: int = 64,
                seed: int = 0) -> ProbeNet:
    """Fit :class:`ProbeNet` to real images in [-1, 1] (N, 3, H, W) with their labels, plus :func:`shapeless` images
    as class ``num_classes`` (one in ``num_classes + 1`` of each batch): Adam, cosine lr, random flips, a little noise
    (generated images are not as clean as the real ones). Leaves the global RNG untouched."""
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # evals run under no_grad
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        net = ProbeNet(num_classes + 1)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        n_null = max(batch_size // (num_classes + 1), 1)
        for _ in range(steps):
            i = torch.randint(0, len(images), (batch_size,))
            x, y = images[i], labels[i].clone()
            x[:n_null], y[:n_null] = shapeless(x[:n_null], g), num_classes
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            x = x + 0.05 * torch.randn_like(x)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def probe_predictions(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The probe's class for each of ``images`` (``num_classes`` = "no class"), 256 images at a time."""
    return torch.cat([net(x.float()).argmax(1) for x in images.split(256)])


def probe_accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` that the probe assigns to their ``labels`` (a "no class" verdict counts as wrong)."""
    return float((probe_predictions(net, images) == labels).float().mean())
