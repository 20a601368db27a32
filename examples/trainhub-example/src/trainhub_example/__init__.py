"""An example third-party trainhub plugin (entry point ``example``)."""

__version__ = "0.1.0"
