"""A trainer's checkpoints: writing them atomically (never from non-finite state, pruned, the best one remembered),
resuming exactly from one, continuing from another implementation's, and saving before a failure ends the run."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from trainhub.errors import TrainingStopped, UserError
from trainhub.recipe import ForeignResume
from trainhub.training import checkpoint as ckpt
from trainhub.training import distributed as dist
from trainhub.training.storage import DiskError

if TYPE_CHECKING:
    from trainhub.training.trainer import Trainer


def training_state(t: Trainer) -> dict[str, Any]:
    return {
        "step": t.step, "epoch": t.epoch, "batch_in_epoch": t.batch_in_epoch, "world_size": t.world,
        "batch_size": t.batch_size, "gradient_accumulation_steps": t.accum,
        **t.nonfinite.state(), "best": t.best, "best_name": t.best_name,
        "best_metric": t.tc.best_metric, "last_eval": t.last_eval, "recipe": t.recipe.name,
        "run_id": getattr(t.run, "run_id", None), "flops_per_sample": t.flops_per_sample, "time": time.time(),
    }


def _saved_models(t: Trainer) -> dict[str, Any]:
    """The models a checkpoint holds: every model but the frozen ones (a distillation teacher is never saved)."""
    return {n: m for n, m in t.raw_models.items() if n not in t.frozen}


def load(t: Trainer, directory: Path) -> None:
    """Resume exactly from a checkpoint of this run (or one like it: same world size, batch and accumulation)."""
    state = ckpt.read_state(directory)
    ckpt.check_recipe(directory, t.recipe.name, f"resume it with trainhub run {{recipe}} --resume {directory}")
    t._apply_phase(state["epoch"])  # a resumed run knows which data phase it is in
    for key, now in (("world_size", t.world), ("batch_size", t.batch_size),
                     ("gradient_accumulation_steps", t.accum)):
        if key in state and state[key] != now:
            raise UserError(
                f"cannot resume {directory} exactly: it was saved with {key}={state[key]}, this run has {now}; "
                f"resume with the same {key} (start a new run with the checkpoint as init weights otherwise)"
            )
    ckpt.load_models(directory, t.strategy.whole(_saved_models(t)))
    for name, ema in t.strategy.whole(t.emas).items():
        saved = ckpt.load_ema(directory, name)
        if saved is not None:
            ema.load_state_dict({k: v.to(t.device) for k, v in saved.items()})
        else:  # saved with EMA off: start it from the loaded weights, not from the fresh ones
            ema.copy_from(t.raw_models[name])
            if t.is_main:
                print(f"trainhub: {directory} has no EMA of {name!r}; its EMA starts from the loaded weights", flush=True)
    opt = ckpt.load_optim_state(directory)
    t.strategy.load_parts(directory, t.raw_models, t.emas, t.optimizers, opt["optimizers"])
    for n, s in t.schedulers.items():
        s.load_state_dict(opt["schedulers"][n])
    if t.scaler is not None and opt.get("scaler"):
        t.scaler.load_state_dict(opt["scaler"])
    t.step, t.epoch, t.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    t.nonfinite.load(state)
    t.best, t.best_name = state.get("best"), state.get("best_name")
    t.last_eval = state.get("last_eval") or {}
    t.flops_per_sample = state.get("flops_per_sample")
    if not ckpt.load_rng(directory, t.rank):
        raise ckpt.damaged(directory / f"rng_state_rank{t.rank}.safetensors",
                           "missing (the random streams of an exact resume are in it)")


def load_foreign(t: Trainer, path: str) -> None:
    """Continue from another implementation's checkpoint (weights, optimizer, step; RNG and data
    position are not restored, so this resume is not bit-exact)."""
    got = t.recipe.load_foreign(path, t.raw_models, t.optimizers)
    if got is None:
        raise UserError(f"--resume {path}: neither a trainhub checkpoint/run directory nor a checkpoint recipe "
                        f"{t.recipe.name!r} can read")
    foreign = got if isinstance(got, ForeignResume) else ForeignResume(int(got))
    t.step = int(foreign.step)
    t.epoch, rest = divmod(t.step, t.steps_per_epoch)
    t.batch_in_epoch = rest * t.accum
    for s in t.schedulers.values():
        s.last_epoch = t.step - 1
        with warnings.catch_warnings():  # fast-forwarding before any optimizer.step() is intended here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            s.step()
    for name, ema in t.emas.items():
        if name in foreign.ema:
            ema.load_state_dict({k: v.to(t.device) for k, v in foreign.ema[name].items()})
        else:
            ema.copy_from(t.raw_models[name])
    if t.is_main:
        what = f" ({', '.join(foreign.restored)})" if foreign.restored else ""
        restarted = [n for n in t.emas if n not in foreign.ema]
        ema_note = f"; EMA of {', '.join(restarted)} restarted from the loaded weights" if restarted else ""
        print(f"trainhub: continuing from {path} at step {t.step}{what}{ema_note}", flush=True)


def save(t: Trainer, name: Optional[str] = None, is_best: bool = False) -> Optional[Path]:
    """Write checkpoint ``name`` (default ``checkpoint-<step>``) atomically; a second signal waits for it."""
    if t.dry_run or t.run_dir is None:
        return None
    t.signals.saving = True
    try:
        return _save(t, name or f"checkpoint-{t.step}", is_best)
    finally:
        t.signals.saving = False


def _save(t: Trainer, name: str, is_best: bool) -> Optional[Path]:
    t.saved_step = t.step
    root = t.run_dir / "checkpoints"
    models = _saved_models(t)
    bad = ckpt.nonfinite(ckpt.state_groups(models, t.emas, t.optimizers))
    if t.strategy.anywhere(bool(bad)) and not bad:
        bad = {"a shard on another rank": "?"}
    t.nonfinite.check_state(bad, name, t.step, t.run_dir)  # never write non-finite state
    with ckpt.writing(root, name):  # a full or read-only disk: one line, and no .tmp left behind
        if t.is_main:
            ckpt.begin(root, name)
        dist.barrier()
        tmp = ckpt.tmp_dir(root, name)
        ckpt.save_rng(tmp, t.rank)
        t.strategy.save_parts(tmp, t.raw_models, t.emas, t.optimizers)
        dist.barrier()
        path = None
        if t.is_main:
            optim_state = {"optimizers": t.strategy.optimizer_states(t.optimizers),
                           "schedulers": {n: s.state_dict() for n, s in t.schedulers.items()},
                           "scaler": t.scaler.state_dict() if t.scaler is not None else {}}
            ckpt.save_main(tmp, t.strategy.whole(models), t.strategy.whole(t.emas), optim_state, training_state(t))
            path = ckpt.commit(root, name)
    if t.is_main:
        if is_best:
            t.best_name = name
            ckpt.write_json_atomic(t.run_dir / "best.json", {"checkpoint": name, "step": t.step,
                                                                "metric": t.tc.best_metric, "value": t.best})
        # never prune the newest checkpoint known good: the one just written is not known good yet
        protect = {p.name for p in (ckpt.newest_before(root, t.nonfinite.good_bound(t.step)),) if p is not None}
        ckpt.prune(root, t.tc.keep_last, protect | ({t.best_name} if t.best_name else set()))
        t.last_checkpoint = path
        t.call_hook("trainhub_checkpoint_saved", run=t.run, step=t.step, path=str(path), is_best=is_best)
    dist.barrier()
    return path


def save_before_failing(t: Trainer, exc: BaseException) -> Optional[str]:
    """A plugin that failed, or data that could not be read, ends the run between two steps, where the
    training state is whole: save it first so no step is lost, and say where it is (one process only: in a
    job of several, the failing rank stops alone and the others cannot join a save)."""
    if not (isinstance(exc, UserError) and not isinstance(exc, (TrainingStopped, DiskError)) and t.between_steps
            and t.world == 1 and not t.dry_run and t.run_dir is not None):
        return None
    if t.step == t.first_step:
        return None  # nothing trained yet in this run
    if t.saved_step == t.step:
        return f"{t.last_checkpoint} holds step {t.step}; resume with --resume auto" if t.last_checkpoint else None
    try:
        path = save(t)
    except Exception as save_exc:  # non-finite state, a full disk: say so, and report the first failure
        return f"no checkpoint could be saved ({' '.join(str(save_exc).split())[:200]})"
    return f"saved {path} first; resume with --resume auto"
