"""Built-in logging backends, registered by core through ``trainhub_register_loggers``."""

from __future__ import annotations

from typing import Callable


def register_builtin(register: Callable[..., None]) -> None:
    from trainhub.loggers import console, jsonl

    register("console", console.ConsoleLogger, console.ConsoleConfig)
    register("jsonl", jsonl.JsonlLogger, jsonl.JsonlConfig)
