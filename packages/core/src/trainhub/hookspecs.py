"""The trainhub hook specifications.

A plugin is any module or object with functions decorated by ``trainhub.hookimpl``; installed
distributions expose them through the ``trainhub`` entry-point group::

    [project.entry-points.trainhub]
    myplugin = "my_package.plugin"

Registration hooks are called once at start-up on every rank and receive a ``register`` callable.
Lifecycle hooks are called by the trainer on the main process (rank 0) only, in this order:
``trainhub_run_start`` -> (``trainhub_step_start``, ``trainhub_step_end`` per optimizer step, ``trainhub_eval_end`` per eval,
``trainhub_checkpoint_saved`` per checkpoint)* -> ``trainhub_run_end``.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("trainhub")

#: Bumped when a hook's signature changes incompatibly; see docs/writing-plugins.md.
HOOKSPEC_VERSION = 1


@hookspec
def trainhub_register_recipes(register: Callable[[Any], None]) -> None:
    """Register recipes: ``register(MyRecipe())``, a :class:`trainhub.Recipe` instance.

    The recipe's ``name`` is what ``trainhub run NAME`` selects.
    """


@hookspec
def trainhub_register_models(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register named model factories: ``register("DiT-S/2", factory)``.

    A recipe looks its model up by name in this registry, so a third party can add a variant
    (e.g. a new DiT size) and reuse an existing recipe unchanged.
    """


@hookspec
def trainhub_register_datasets(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register named dataset factories: ``register("image_folder", factory)``."""


@hookspec
def trainhub_register_losses(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register named loss factories returning ``nn.Module`` s: ``register("charbonnier", Charbonnier)``."""


@hookspec
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    """Register logging backends: ``register("jsonl", factory, config_class)``.

    ``config_class`` is a pydantic model with an ``enabled`` field; it becomes ``loggers.<name>`` in
    every recipe's config. When enabled, the trainer calls ``factory(config, run)`` on rank 0 and
    registers the returned object as a plugin for the run, so it receives the lifecycle hooks below.
    """


@hookspec
def trainhub_run_start(run: Any) -> None:
    """The run starts (or resumes). ``run`` is the :class:`trainhub.training.run.RunInfo`: config, run_dir, models, step."""


@hookspec
def trainhub_step_start(run: Any, step: int) -> None:
    """An optimizer step is about to run (``step`` optimizer steps are done).

    The place to attach forward hooks for this step only (the parameter monitor does).
    """


@hookspec
def trainhub_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """An optimizer step finished. ``metrics`` holds loss terms, lr, grad norm and throughput.

    Gradients of this step are still on the parameters (they are cleared before the next step).

    Called every step; ``metrics`` is empty except on logging steps (``train.log_every``), so a
    hook that only reacts to metrics stays cheap.
    """


@hookspec
def trainhub_eval_end(run: Any, step: int, metrics: dict[str, float], media: list[Any]) -> None:
    """An evaluation finished. ``media`` lists :class:`trainhub.kit.media.Media` (images, audio) it wrote."""


@hookspec
def trainhub_checkpoint_saved(run: Any, step: int, path: str, is_best: bool) -> None:
    """A complete checkpoint directory was written (after the atomic rename)."""


@hookspec
def trainhub_warning(run: Any, step: int, kind: str, message: str, data: dict[str, Any]) -> None:
    """The trainer noticed something worth a person's attention (``kind``: e.g. ``loss_range``,
    ``memory``, ``shm``, ``nonfinite``); ``data`` holds the numbers. Logged to metrics.jsonl by default."""


@hookspec
def trainhub_run_end(run: Any, status: str) -> None:
    """The run ends. ``status`` is ``"completed"``, ``"interrupted"`` or ``"failed"``."""
