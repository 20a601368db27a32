"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input the user controls (config, paths, plugin names). Printed as one line."""


class ConfigError(UserError):
    """The config is invalid: the message names the key path and what is allowed."""


class PluginError(UserError):
    """A plugin could not be loaded or registered something twice."""


class TrainingStopped(UserError):
    """Training stopped for a reason the user must act on (e.g. too many non-finite losses in a row)."""
