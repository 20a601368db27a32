"""trainhub-sr3: SR3 diffusion super-resolution for trainhub."""

__version__ = "0.1.0"
