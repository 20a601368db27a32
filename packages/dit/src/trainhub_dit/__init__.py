"""trainhub-dit: DiT (diffusion transformers, Peebles & Xie 2023) for trainhub, compatible with the official checkpoints."""

__version__ = "0.1.0"
