"""Audio timbre restoration GAN for trainhub (recipe ``timbre_gan``)."""

from __future__ import annotations

__version__ = "0.1.0"
