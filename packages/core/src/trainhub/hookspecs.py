"""The trainhub hook specifications.

A plugin is any module or object with functions decorated by ``trainhub.hookimpl``; installed
distributions expose them through the ``trainhub`` entry-point group::

    [project.entry-points.trainhub]
    myplugin = "my_package.plugin"

Registration hooks are called once at start-up on every rank and receive a ``register`` callable. Anything
registered may be given as a ``"module:attr"`` reference instead of the object: it is imported when first used,
so commands that only list or describe (``trainhub list``, ``config``, ``--help``) stay fast.
Lifecycle hooks are called by the trainer on the main process (rank 0) only, in this order:
``trainhub_run_start`` -> (``trainhub_step_start``, ``trainhub_step_end`` per optimizer step, ``trainhub_eval_end`` per eval,
``trainhub_checkpoint_saved`` per checkpoint)* -> ``trainhub_run_end``.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("trainhub")

#: Bumped when a hook's signature changes incompatibly, or a module plugins import moves; see
#: docs/writing-plugins.md.
HOOKSPEC_VERSION = 2


@hookspec
def trainhub_register_recipes(register: Callable[..., None]) -> None:
    """Register recipes: ``register(MyRecipe)``, a :class:`trainhub.Recipe` subclass whose ``name`` is what
    ``trainhub run NAME`` selects.

    Every run builds its own instance, so what a recipe keeps on ``self`` belongs to one run. To keep ``trainhub
    list``, ``config`` and ``--help`` from importing the recipe's module (and torch), register it by reference::

        register("sr3", "trainhub_sr3.recipe:SR3Recipe", config="trainhub_sr3.config:SR3Config",
                 description="SR3 diffusion super-resolution")

    where the config module imports no torch. An instance (``register(MyRecipe())``) is accepted too; each run then
    gets a copy of it.
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
def trainhub_register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register optimizers: ``register("lion", factory)``, chosen by ``train.optimizer`` or an
    :class:`trainhub.OptimizerSpec`'s ``optimizer``.

    The trainer calls ``factory(params, settings, **train.optimizer_args)`` with the parameters to train and an
    :class:`trainhub.components.OptimizerSettings` (lr, betas, eps, weight_decay, fused, device); it returns a
    ``torch.optim.Optimizer`` whose ``state_dict`` round-trips, which exact resume needs. Built-ins: adamw, adam,
    sgd.
    """


@hookspec
def trainhub_register_schedules(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register learning-rate schedules: ``register("wsd", factory)``, chosen by ``train.schedule``.

    ``factory(settings, **train.schedule_args)`` gets a :class:`trainhub.components.ScheduleSettings` (total_steps,
    warmup_steps, min_lr_ratio) and returns ``multiplier(step) -> float``, the factor on the base lr after ``step``
    optimizer steps: a pure function of the step, so a resume restores it exactly
    (:func:`trainhub.components.warmup_then` adds the usual linear warm-up). Built-ins: constant, cosine, linear.
    """


@hookspec
def trainhub_register_samplers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register training samplers: ``register("balanced", factory)``, chosen by ``loader.sampler``.

    ``factory(dataset, settings, **loader.sampler_args)`` gets the training set and a
    :class:`trainhub.components.SamplerSettings` (seed, rank, world, shuffle, drop_last, group_window) and returns a
    :class:`trainhub.ResumableSampler`; a subclass overrides ``epoch_order()`` (and ``share()`` to split it across
    ranks otherwise). The order must depend only on ``(seed, epoch)``: that is what resumes mid-epoch exactly.
    Built-ins: random, grouped (and auto, which picks one of them).
    """


@hookspec
def trainhub_register_loggers(register: Callable[..., None]) -> None:
    """Register logging backends: ``register("jsonl", factory, config_class)``.

    ``config_class`` is a pydantic model with an ``enabled`` field; it becomes ``loggers.<name>`` in
    every recipe's config. ``factory`` may be a ``"module:attr"`` reference, imported when a run enables it. When enabled, the trainer calls ``factory(config, run)`` on rank 0 and
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
