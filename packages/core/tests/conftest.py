from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def quiet() -> list[str]:
    """Overrides for fast, quiet runs of the built-in tiny recipe."""
    return ["loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=5"]
