"""trainhub-tokenimage: text tokens written into images and denoised by a masked DiT-style diffusion model.

The names below are imported on first use, so loading the plugin (``trainhub_tokenimage.plugin``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TokenCodec": "codec", "TokenImageDataset": "data", "add_noise_to_timestep": "diffusion", "masked_mse": "diffusion",
    "TokenDiT": "model", "Tokenizer": "tokenizer", "ByteTokenizer": "tokenizer", "HFTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainhub_tokenimage.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainhub_tokenimage' has no attribute {name!r}")
