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
    """FID between two streams of image batches in [-1, 1] (N, 3, H, W)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    check_weights(weights)
    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights).to(device)
    for batch in real:
        metric.update(((batch.float() + 1) / 2).clamp(0, 1).to(device), real=True)
    for batch in fake:
        metric.update(((batch.float() + 1) / 2).clamp(0, 1).to(device), real=False)
    return float(metric.compute())
