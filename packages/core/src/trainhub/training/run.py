"""Orchestrates one run: plugins -> recipe -> config -> run directory -> loggers -> Trainer."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from trainhub import config as C
from trainhub.errors import PluginError, UserError
from trainhub.plugins import Plugins, get_plugins
from trainhub.recipe import Recipe
from trainhub.resolve import resolve_config
from trainhub.training import checkpoint as ckpt
from trainhub.training import distributed as dist
from trainhub.training import signals, storage
from trainhub.training.rundir import RunDir
from trainhub.training.summary import dry_run_summary


@dataclass
class RunInfo:
    """What lifecycle hooks receive as ``run``."""

    config: C.RunConfig
    run_dir: Path
    recipe: Recipe
    models: dict[str, nn.Module]
    device: torch.device
    run_id: str
    resumed: bool
    max_steps: int = 0
    step: int = 0
    epoch: int = 0
    is_main: bool = True
    last_losses: dict[str, float] = field(default_factory=dict)  # logged loss terms of the last logging step
    step_losses: dict[str, Any] = field(default_factory=dict)  # this step's loss terms (0-dim tensors, no sync)
    warn: Callable[..., None] = field(default=lambda kind, message, data=None: None, repr=False)
    """``run.warn(kind, message, data=None)``: report a warning as the trainer does (``trainhub_warning`` hook:
    console, metrics.jsonl, ``trainhub analyze``), at the current step. Set by the trainer."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    step: int
    last_checkpoint: Optional[Path]
    eval_metrics: dict[str, float]


class HookCaller:
    """Calls a lifecycle hook on each plugin separately so one failing plugin is named and handled:
    ``plugin_errors: stop`` ends the run with a one-line :class:`PluginError` naming it, ``disable`` warns once
    and calls that plugin no more in this run. A plugin that fails either way gets no further calls in the run
    (so a checkpoint can still be saved before it ends); a full or read-only disk is reported as such."""

    def __init__(self, plugins: Plugins, on_error: str, is_main: bool = True) -> None:
        self.plugins, self.on_error, self.is_main = plugins, on_error, is_main
        self.failed: set[int] = set()  # id() of the plugins that failed in this run

    def __call__(self, name: str, **kwargs: Any) -> None:
        if not self.is_main:  # lifecycle hooks run on rank 0 only
            return
        hook = getattr(self.plugins.pm.hook, name)
        for impl in reversed(hook.get_hookimpls()):
            if id(impl.plugin) in self.failed:
                continue
            try:
                self.plugins.call_impl(name, impl, kwargs)
            except Exception as exc:
                self.failed.add(id(impl.plugin))
                pname = self.plugins.pm.get_name(impl.plugin) or repr(impl.plugin)
                if isinstance(exc, storage.DiskError):
                    raise
                reason = storage.explain(exc, Path(getattr(exc, "filename", None) or "."))
                if reason is not None:
                    raise storage.DiskError(f"cannot write {getattr(exc, 'filename', None) or 'a file'} (plugin {pname!r} "
                                            f"in {name}): {reason}") from None
                what = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                if self.on_error == "stop":
                    raise PluginError(f"plugin {pname!r} failed in {name}: {what}; fix or uninstall it, or set "
                                      f"plugin_errors=disable to train on without it") from exc
                warnings.warn(f"plugin {pname!r} failed in {name} and is disabled for this run: {what}", stacklevel=2)


def _new_run_dir(config: C.RunConfig, recipe: Recipe) -> Path:
    name = config.run_name or time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / recipe.name
    d = base / name
    if not config.run_name:
        i = 1
        while d.exists():
            d = base / f"{name}-{i}"
            i += 1
    return d


def _find_resume(resume: Optional[str], run_dir: Optional[Path], config: C.RunConfig, recipe: Recipe) -> tuple[Optional[Path], Optional[Path]]:
    """Returns (checkpoint to load, run dir to use)."""
    if resume is None:
        return None, run_dir
    if resume == "auto":
        if run_dir is None:
            if config.run_name:
                run_dir = Path(config.output_dir) / recipe.name / config.run_name
            else:
                base = Path(config.output_dir) / recipe.name
                runs = [d for d in base.iterdir() if d.is_dir() and ckpt.latest(d / "checkpoints")] if base.is_dir() else []
                run_dir = max(runs, key=lambda d: d.stat().st_mtime) if runs else None
        found = ckpt.newest(run_dir / "checkpoints") if run_dir is not None else None
        return found, run_dir
    try:
        path = ckpt.resolve_checkpoint(resume)
    except ckpt.NoCheckpoint:
        return None, run_dir  # maybe a foreign checkpoint: the recipe decides (Recipe.load_foreign)
    if run_dir is None:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, run_dir


def _check_recipe(checkpoint: Path, recipe: Recipe) -> None:
    ckpt.check_recipe(checkpoint, recipe.name, f"resume it with trainhub run {{recipe}} --resume {checkpoint}")


def train(
    recipe: str | Recipe,
    config_file: Optional[str | Path] = None,
    overrides: Optional[list[str] | dict[str, Any]] = None,
    run_dir: Optional[str | Path] = None,
    resume: Optional[str | Path] = None,
    dry_run: bool = False,
    plugins: Optional[Plugins] = None,
) -> RunResult:
    """Train ``recipe`` (a registered name or a Recipe instance); works under torchrun too.

    ``resume``: ``"auto"`` (latest checkpoint of the run dir, or of the newest run; a fresh start if
    none) or a checkpoint / run directory. Without ``config_file``, a resumed run reuses its saved
    ``config.yaml``.

    The run directory is locked for the run's life (one writer; :mod:`trainhub.training.rundir`), a new run is refused
    where another run's checkpoints are, and nothing is written there before the run is accepted: config
    valid, models and data built, the checkpoint to resume from loaded. SIGINT/SIGTERM before the first step
    raise :class:`trainhub.training.signals.Interrupted` (a KeyboardInterrupt); after it, the run saves and returns
    status ``"interrupted"``.
    """
    with signals.installed():
        return _train(recipe, config_file, overrides, run_dir, resume, dry_run, plugins)


def _train(recipe: str | Recipe, config_file: Optional[str | Path], overrides: Optional[list[str] | dict[str, Any]],
           run_dir: Optional[str | Path], resume: Optional[str | Path], dry_run: bool, plugins: Optional[Plugins]) -> RunResult:
    plugins = plugins or get_plugins()
    rec = plugins.recipe(recipe) if isinstance(recipe, str) else recipe
    run_dir = Path(run_dir) if run_dir is not None else None
    resume = str(resume) if resume is not None else None
    # a checkpoint of another recipe is named as such before its run's config.yaml meets this recipe's schema
    saved_config: Optional[Path] = None
    if resume is not None and config_file is None:
        found, rd = _find_resume(resume, run_dir, C.RunConfig(), rec) if resume != "auto" or run_dir is not None else (None, None)
        if found is not None:
            _check_recipe(found, rec)
        if rd is not None and (rd / "config.yaml").is_file():
            saved_config = rd / "config.yaml"
    config = resolve_config(rec, plugins, config_file or saved_config, overrides)

    from trainhub.training.devices import select_device, set_cpu_threads
    from trainhub.training.trainer import Trainer

    device = select_device(config.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not config.train.deterministic
    deterministic_before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist.init(device)
    is_main = dist.is_main()
    if device.type == "cpu":
        set_cpu_threads(config.train.cpu_threads, config.loader.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    load_from, run_dir = _find_resume(resume, run_dir, config, rec)
    if load_from is not None:
        _check_recipe(load_from, rec)
    tmp: Optional[tempfile.TemporaryDirectory] = None
    would_write = run_dir if run_dir is not None else _new_run_dir(config, rec)
    if dry_run:
        tmp = tempfile.TemporaryDirectory(prefix="trainhub-dry-run-")
        run_dir = Path(tmp.name)
    else:
        run_dir = would_write
    run_dir = Path(dist.broadcast_object(str(run_dir)))
    owner = RunDir(run_dir) if is_main and not dry_run else None  # only rank 0 locks and writes the run directory

    run_id = uuid.uuid4().hex[:12]
    if load_from is not None:
        run_id = ckpt.read_state(load_from).get("run_id") or run_id
    run_id = dist.broadcast_object(run_id)
    info = RunInfo(config, run_dir, rec, {}, device, run_id, resumed=load_from is not None, is_main=is_main)
    call_hook = HookCaller(plugins, config.plugin_errors, is_main)
    registered: list[str] = []
    trainer: Optional[Trainer] = None
    try:
        refused: Optional[UserError] = None
        if owner is not None:
            try:
                owner.open(load_from)
            except UserError as e:
                refused = e
        elsewhere = dist.broadcast_object(str(refused) if refused is not None else None)  # the other ranks stop too
        if refused is not None:
            raise refused
        if elsewhere is not None:
            raise UserError(elsewhere)
        trainer = Trainer(rec, config, None if dry_run else run_dir, device, call_hook, info, plugins, dry_run=dry_run)
        if load_from is not None:
            trainer.load(load_from)
        elif resume not in (None, "auto"):
            trainer.load_foreign(str(resume))
        if owner is not None:  # accepted: from here on the run writes its directory
            owner.write_text("config.yaml", C.to_yaml(config))
            if trainer.auto_batch_record is not None:
                owner.write_text("auto_batch_size.json", json.dumps(trainer.auto_batch_record, indent=2))
            owner.accept(trainer.step)
        info.models = trainer.raw_models
        info.max_steps, info.step, info.epoch = trainer.max_steps, trainer.step, trainer.epoch
        if is_main and not dry_run:
            loggers_cfg = getattr(config, "loggers", None)
            for name, reg in sorted(plugins.registry["loggers"].items()):
                section = getattr(loggers_cfg, name, None) if loggers_cfg is not None else None
                if section is not None and getattr(section, "enabled", False):
                    try:
                        logger = reg.load()(section, info)
                    except storage.DiskError:
                        raise
                    except Exception as exc:  # a logger that cannot start is named, and stops or is skipped
                        msg = f"logger {name!r} ({reg.distribution}) failed to start: {type(exc).__name__}: {exc}"
                        if config.plugin_errors == "stop":
                            raise UserError(msg + " (plugin_errors=disable skips it)") from exc
                        warnings.warn(msg + "; continuing without it", stacklevel=2)
                        continue
                    pname = f"logger:{name}"
                    plugins.pm.register(logger, name=pname)
                    registered.append(pname)
        status = trainer.fit()
        if dry_run and is_main:
            print(dry_run_summary(trainer, would_write, trainer.dry_batch), flush=True)
    finally:
        if trainer is not None:
            trainer.close()
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])  # the next run's own
        for pname in registered:
            if plugins.pm.has_plugin(pname):
                plugins.pm.unregister(name=pname)
        if tmp is not None:
            tmp.cleanup()
        if owner is not None:
            owner.close()
    return RunResult(run_dir, status, trainer.step, trainer.last_checkpoint, trainer.last_eval)


def main_entry(argv_recipe: str, **kwargs: Any) -> int:
    """CLI helper: train and shut the process group down."""
    try:
        res = train(argv_recipe, **kwargs)
    finally:
        dist.shutdown()
    if res.status == "interrupted" and dist.is_main():
        print(f"trainhub: resume with: trainhub run {argv_recipe} --resume {res.run_dir}", file=sys.stderr)
    return 0
