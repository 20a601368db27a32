"""The one shared trainer: devices, precision, DDP, accumulation, clipping, optimizers, schedules,
EMA, eval, checkpoints, non-finite handling and signals. Recipes stay plain PyTorch."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from trainhub.training import checkpoint as ckpt
from trainhub.training import distributed as dist
from trainhub.training import signals
from trainhub.config import RunConfig
from trainhub.training.data import build_loader, sample_seed
from trainhub.training.ema import EMA
from trainhub.errors import TrainingStopped, UserError
from trainhub.kit.media import MediaWriter
from trainhub.observe.system import MemoryWatchdog, system_metrics
from trainhub.recipe import EvalContext, ForeignResume, OptimizerSpec, Recipe, StepContext
from trainhub.training.schedules import lr_lambda


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is available; use auto or cpu")
        return torch.device("cuda", dist.local_rank())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device=mps but MPS is not available; use auto or cpu")
    return torch.device(name)


def select_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def to_device(batch: Any, device: torch.device, non_blocking: bool, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=non_blocking)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        out = [to_device(v, device, non_blocking, channels_last) for v in batch]
        return type(batch)(out) if not hasattr(batch, "_fields") else type(batch)(*out)
    return batch


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in backward instead of storing them (less memory, ~20% slower)."""
    import functools

    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward  # type: ignore[method-assign]


class Trainer:
    """Runs a recipe. Construct through :func:`trainhub.training.run.train`."""

    def __init__(self, recipe: Recipe, config: RunConfig, run_dir: Optional[Path], device: torch.device,
                 call_hook: Callable[..., None], run_info: Any, dry_run: bool = False) -> None:
        self.recipe, self.config, self.run_dir, self.device = recipe, config, run_dir, device
        self.call_hook, self.run, self.dry_run = call_hook, run_info, dry_run
        if run_info is not None:
            run_info.warn = self.warn
        tc = config.train
        self.tc = tc
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.precision = select_precision(tc.precision, device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.signals = signals.active() or signals.StopSignals()  # SIGINT/SIGTERM: save after this step, exit 0
        self.signals.announce = self.is_main
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch (this rank)
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.nonfinite_since = 0  # first step of the current run of non-finite steps: checkpoints before it are good
        self.best: Optional[float] = None
        self.best_name: Optional[str] = None
        self.last_eval: dict[str, float] = {}
        self.last_checkpoint: Optional[Path] = None
        self.saved_step = -1
        self.between_steps = True  # False while an optimizer step is under way: its state is not whole
        self.auto_batch_record: Optional[dict[str, int]] = None  # auto_batch_size.json, written once the run starts
        self.flops_per_sample: Optional[float] = None
        self._peak: Optional[tuple[float, str]] = None
        self.watchdog = MemoryWatchdog()
        from trainhub.observe.watch import LossWatch

        self.loss_watch = LossWatch(list(recipe.loss_ranges(config)))
        self._build()

    # ---- construction ----------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, tc = self.config, self.tc
        self.batch_size = tc.batch_size if tc.batch_size != "auto" else 0
        self.accum = tc.gradient_accumulation_steps
        self._build_models()
        self._prepare_phases()
        self.phase = self._phase_index(0)
        train_ds, val_ds = self.recipe.build_data(self._phase_config(self.phase))
        self.collate = self.recipe.collate_fn(cfg)
        if tc.batch_size == "auto":
            self._auto_batch(train_ds)
            self._build_models()  # fresh weights and optimizer state after the trial steps
        self.base_batch_size = self.batch_size
        self.batch_size = self._phase_batch_size(self.phase, self.base_batch_size)
        self._seed_training()
        pin = self.config.loader.pin_memory
        self.pin = (self.device.type == "cuda") if pin is None else pin
        self.shm_warnings: list[tuple[str, dict[str, Any]]] = []  # reported through the hook once the run starts
        self.loader, self.sampler = build_loader(train_ds, self.batch_size, cfg.loader, tc.seed, self.rank, self.world, self.pin,
                                                 self.collate, warn=lambda m, d: self.shm_warnings.append((m, d)))
        self.loader.generator = torch.Generator().manual_seed(tc.seed)  # keep the global RNG out of loader start-up
        self.val_loader = None
        if val_ds is not None and len(val_ds) > 0:  # type: ignore[arg-type]
            vcfg = cfg.loader.model_copy(update={"persistent_workers": False})
            self.val_loader, _ = build_loader(val_ds, self.batch_size, vcfg, tc.seed, self.rank, self.world, self.pin, self.collate, shuffle=False, drop_last=False)
            self.val_loader.generator = torch.Generator().manual_seed(tc.seed)
        self.steps_per_epoch = self._steps_per_epoch(self.batch_size, len(train_ds))  # type: ignore[arg-type]
        if tc.epochs:  # phases may change the batch size: add up each epoch's steps
            n = len(train_ds)  # type: ignore[arg-type]
            self.max_steps = sum(self._steps_per_epoch(self._phase_batch_size(self._phase_index(e), self.base_batch_size), n)
                                 for e in range(tc.epochs))
        else:
            self.max_steps = tc.max_steps
        self.schedulers = {
            n: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(tc.schedule, self.max_steps, tc.warmup_steps, tc.min_lr_ratio))
            for n, o in self.optimizers.items()
        }

    def _steps_per_epoch(self, batch_size: int, n: int) -> int:
        per_rank = n // self.world if self.config.loader.drop_last else math.ceil(n / self.world)
        micro = per_rank // batch_size if self.config.loader.drop_last else math.ceil(per_rank / batch_size)
        steps = micro // self.accum
        if steps < 1:
            raise UserError(
                f"the training set has {n} samples: too few for one optimizer step of train.batch_size={batch_size} x "
                f"gradient_accumulation_steps={self.accum} x {self.world} processes"
            )
        return steps

    # ---- progressive data schedule -------------------------------------------------------------------
    def _prepare_phases(self) -> None:
        from pydantic import ValidationError

        from trainhub.config import ConfigError, format_validation_error

        self.phases = sorted(self.tc.data_schedule, key=lambda p: p.from_epoch)
        self._phase_cfgs: dict[int, RunConfig] = {-1: self.config}
        data_cls = type(self.config.data)
        for i, ph in enumerate(self.phases):
            try:
                data = data_cls.model_validate({**self.config.data.model_dump(), **ph.data})
            except ValidationError as e:
                raise ConfigError(f"train.data_schedule[{i}]: " + format_validation_error(e, data_cls).replace("invalid config: ", "")) from None
            self._phase_cfgs[i] = self.config.model_copy(update={"data": data})

    def _phase_index(self, epoch: int) -> int:
        idx = -1
        for i, ph in enumerate(self.phases):
            if epoch >= ph.from_epoch:
                idx = i
        return idx

    def _phase_config(self, idx: int) -> RunConfig:
        return self._phase_cfgs[idx]

    def _phase_batch_size(self, idx: int, base: int) -> int:
        return (self.phases[idx].batch_size or base) if idx >= 0 else base

    def _apply_phase(self, epoch: int) -> None:
        """Switch data settings at an epoch boundary (or on resume) without rebuilding the trainer."""
        idx = self._phase_index(epoch)
        if idx == self.phase:
            return
        self.phase = idx
        self.batch_size = self._phase_batch_size(idx, self.base_batch_size)
        train_ds, _ = self.recipe.build_data(self._phase_config(idx))
        self.loader, self.sampler = build_loader(train_ds, self.batch_size, self.config.loader, self.tc.seed, self.rank, self.world,
                                                 self.pin, self.collate, warn=lambda m, d: self.warn("shm", m, d))
        self.loader.generator = torch.Generator().manual_seed(self.tc.seed)
        self.steps_per_epoch = self._steps_per_epoch(self.batch_size, len(train_ds))  # type: ignore[arg-type]
        if self.is_main:
            print(f"trainhub: epoch {epoch}: data phase {idx} ({self.phases[idx].data if idx >= 0 else 'base'}), "
                  f"batch size {self.batch_size}", flush=True)

    def _build_models(self) -> None:
        cfg, tc = self.config, self.tc
        torch.manual_seed(tc.seed)  # identical model init on every rank
        random.seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        models = self.recipe.build_models(cfg)
        if not isinstance(models, dict) or not models:
            raise TypeError(f"recipe {self.recipe.name!r}: build_models must return a non-empty dict of modules")
        self.raw_models: dict[str, nn.Module] = {n: m.to(self.device) for n, m in models.items()}
        if tc.channels_last:
            for m in self.raw_models.values():
                m.to(memory_format=torch.channels_last)
        if tc.activation_checkpointing:
            for name, m in self.raw_models.items():
                checkpoint_blocks(self.recipe.blocks(m))
        self.frozen = tuple(self.recipe.frozen_models(cfg))
        for name in self.frozen:  # teachers and other fixed networks: eval mode, no gradients, never saved
            self.raw_models[name].eval().requires_grad_(False)
        self.specs: dict[str, OptimizerSpec] = self.recipe.optimizers(cfg, self.raw_models)
        order = self.recipe.optimizer_order
        if set(order) != set(self.specs):
            raise TypeError(f"recipe {self.recipe.name!r}: optimizer_order {order} does not match optimizers() {sorted(self.specs)}")
        self.trained = sorted({m for s in self.specs.values() for m in s.models})
        for name in self.trained:
            if name not in self.raw_models:
                raise TypeError(f"recipe {self.recipe.name!r}: optimizer uses unknown model {name!r}")
        self.sharded: list[str] = []
        if tc.strategy == "fsdp" and self.world > 1:  # shard before the optimizers see the parameters
            from trainhub.training import fsdp

            for name in self.trained:
                m = self.raw_models[name]
                fsdp.shard(m, self.recipe.blocks(m), self.device, self.world, self.amp_dtype)
                self.sharded.append(name)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for oname in order:
            spec = self.specs[oname]
            params = [p for mn in spec.models for p in self.raw_models[mn].parameters() if p.requires_grad]
            self.optimizers[oname] = self._make_optimizer(params, spec)
        self.ema_names = tuple(n for n in self.recipe.ema_models(cfg) if n in self.raw_models) if tc.ema.enabled else ()
        self.emas = {n: EMA(self.raw_models[n], tc.ema.decay) for n in self.ema_names}
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=tc.fp16_init_scale) if self.precision == "fp16" else None
        self.models = self._wrap(self.raw_models)
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}

    def _seed_training(self) -> None:
        """Each rank gets its own training RNG stream (dropout masks, diffusion noise differ across ranks)."""
        s = self.tc.seed + 1_000_003 * self.rank
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def _seed_host_rngs(self) -> None:
        """Python's ``random`` and NumPy's global RNG restart at every step from (seed, rank, step).

        Loading in the main process reseeds them per batch (:class:`~trainhub.training.data.SeededDataset`); restarting
        them here costs ~10 us a step where saving and restoring them around every batch cost ~0.12 ms, and a
        step's draws depend on the step alone: not on the loader's worker count, nor on a resume."""
        s = sample_seed(self.tc.seed, -1 - self.rank, self.step)  # epoch -1 - rank: never a data key
        random.seed(s)
        np.random.seed(s % 2**32)

    def _auto_batch(self, train_ds: Any) -> None:
        from trainhub.training import autobatch

        tc = self.tc
        if self.sharded:
            raise UserError("train.batch_size=auto is not supported with train.strategy=fsdp (trial steps would need every "
                            "rank in lockstep); set a number")
        remembered = self.run_dir / "auto_batch_size.json" if self.run_dir else None
        if remembered is not None and remembered.is_file():
            import json

            saved = json.loads(remembered.read_text())
            self.batch_size, self.accum = saved["batch_size"], saved["gradient_accumulation_steps"]
            return
        n = len(train_ds)
        upper = min(tc.auto_batch_max, n // self.world)

        def trial(b: int) -> None:
            items = [train_ds[i % n] for i in range(b)]
            batch = (self.collate or torch.utils.data.default_collate)(items)
            self.batch_size = b
            self._optimizer_step_inner([to_device(batch, self.device, False, tc.channels_last)])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        self.models = self.raw_models  # trial steps without DDP: no collectives, so one rank's OOM cannot hang the others
        found = autobatch.largest_fitting(trial, upper)
        found = dist.all_min_int(autobatch.with_margin(found, tc.auto_batch_margin), self.device)
        if found < 1:
            raise UserError("batch_size auto: not even one sample fits in memory; reduce the model or use precision bf16")
        self.batch_size, self.accum = found, tc.gradient_accumulation_steps
        if tc.global_batch_size:
            self.batch_size, self.accum = autobatch.accumulation_for(tc.global_batch_size, found, self.world)
        if self.is_main:
            print(f"trainhub: batch_size auto -> {self.batch_size} per device (largest fitting {found} before margin "
                  f"and global batch), gradient_accumulation_steps {self.accum}", flush=True)
            self.auto_batch_record = {"batch_size": self.batch_size, "gradient_accumulation_steps": self.accum, "largest_fitting": found}
        self.nonfinite_in_row = self.nonfinite_total = 0
        self.flops_per_sample = None

    def _make_optimizer(self, params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
        tc = self.tc
        kwargs: dict[str, Any] = dict(
            lr=spec.lr if spec.lr is not None else tc.lr,
            betas=spec.betas if spec.betas is not None else tc.betas,
            weight_decay=spec.weight_decay if spec.weight_decay is not None else tc.weight_decay,
            eps=tc.eps,
        )
        fused = tc.fused if tc.fused is not None else self.device.type == "cuda"
        if fused and self.device.type in ("cuda", "cpu", "mps"):
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = True
        cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        return cls(params, **kwargs)

    def _wrap(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        out = {}
        for name, m in models.items():
            w: nn.Module = m
            if self.world > 1 and name in self.trained and name not in self.sharded and any(p.requires_grad for p in m.parameters()):
                ids = [self.device.index] if self.device.type == "cuda" else None
                w = nn.parallel.DistributedDataParallel(m, device_ids=ids, gradient_as_bucket_view=True)
            if self.tc.compile:
                w = torch.compile(w)
            out[name] = w
        return out

    # ---- state -----------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.world,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.accum,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
            "nonfinite_since": self.nonfinite_since,
            "best": self.best,
            "best_name": self.best_name,
            "best_metric": self.tc.best_metric,
            "last_eval": self.last_eval,
            "recipe": self.recipe.name,
            "run_id": getattr(self.run, "run_id", None),
            "time": time.time(),
        }

    def load(self, directory: Path) -> None:
        state = ckpt.read_state(directory)
        ckpt.check_recipe(directory, self.recipe.name, f"resume it with trainhub run {{recipe}} --resume {directory}")
        self._apply_phase(state["epoch"])  # a resumed run knows which data phase it is in
        for key, now in (("world_size", self.world), ("batch_size", self.batch_size),
                         ("gradient_accumulation_steps", self.accum)):
            if key in state and state[key] != now:
                raise UserError(
                    f"cannot resume {directory} exactly: it was saved with {key}={state[key]}, this run has {now}; "
                    f"resume with the same {key} (start a new run with the checkpoint as init weights otherwise)"
                )
        plain = {n: m for n, m in self.raw_models.items() if n not in self.sharded and n not in self.frozen}
        ckpt.load_models(directory, plain)
        for name, ema in self.emas.items():
            if name in self.sharded:
                continue
            saved = ckpt.load_ema(directory, name)
            if saved is not None:
                ema.load_state_dict({k: v.to(self.device) for k, v in saved.items()})
            else:  # saved with EMA off: start it from the loaded weights, not from the fresh ones
                ema.copy_from(self.raw_models[name])
                if self.is_main:
                    print(f"trainhub: {directory} has no EMA of {name!r}; its EMA starts from the loaded weights", flush=True)
        opt = ckpt.load_optim_state(directory)
        if self.sharded:
            from trainhub.training import fsdp

            fsdp.load_shards(directory, self.rank, {n: self.raw_models[n] for n in self.sharded},
                             {n: e for n, e in self.emas.items() if n in self.sharded}, self.optimizers)
        else:
            for n, o in self.optimizers.items():
                o.load_state_dict(opt["optimizers"][n])
        for n, s in self.schedulers.items():
            s.load_state_dict(opt["schedulers"][n])
        if self.scaler is not None and opt.get("scaler"):
            self.scaler.load_state_dict(opt["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.nonfinite_total, self.nonfinite_in_row = state.get("nonfinite_total", 0), state.get("nonfinite_in_row", 0)
        self.nonfinite_since = state.get("nonfinite_since", 0)
        self.best, self.best_name = state.get("best"), state.get("best_name")
        self.last_eval = state.get("last_eval") or {}
        if not ckpt.load_rng(directory, self.rank):
            raise ckpt.damaged(directory / f"rng_state_rank{self.rank}.safetensors",
                               "missing (the random streams of an exact resume are in it)")

    def load_foreign(self, path: str) -> None:
        """Continue from another implementation's checkpoint (weights, optimizer, step; RNG and data
        position are not restored, so this resume is not bit-exact)."""
        got = self.recipe.load_foreign(path, self.raw_models, self.optimizers)
        if got is None:
            raise UserError(f"--resume {path}: neither a trainhub checkpoint/run directory nor a checkpoint recipe "
                            f"{self.recipe.name!r} can read")
        foreign = got if isinstance(got, ForeignResume) else ForeignResume(int(got))
        self.step = int(foreign.step)
        self.epoch, rest = divmod(self.step, self.steps_per_epoch)
        self.batch_in_epoch = rest * self.accum
        for s in self.schedulers.values():
            s.last_epoch = self.step - 1
            with warnings.catch_warnings():  # fast-forwarding before any optimizer.step() is intended here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                s.step()
        for name, ema in self.emas.items():
            if name in foreign.ema:
                ema.load_state_dict({k: v.to(self.device) for k, v in foreign.ema[name].items()})
            else:
                ema.copy_from(self.raw_models[name])
        if self.is_main:
            what = f" ({', '.join(foreign.restored)})" if foreign.restored else ""
            restarted = [n for n in self.emas if n not in foreign.ema]
            ema_note = f"; EMA of {', '.join(restarted)} restarted from the loaded weights" if restarted else ""
            print(f"trainhub: continuing from {path} at step {self.step}{what}{ema_note}", flush=True)

    def save(self, name: Optional[str] = None, is_best: bool = False) -> Optional[Path]:
        if self.dry_run or self.run_dir is None:
            return None
        self.signals.saving = True  # a second SIGINT/SIGTERM during a save is ignored: the save completes
        try:
            return self._save(name, is_best)
        finally:
            self.signals.saving = False

    def _save(self, name: Optional[str], is_best: bool) -> Optional[Path]:
        name = name or f"checkpoint-{self.step}"
        self.saved_step = self.step
        root = self.run_dir / "checkpoints"
        self._check_finite(name)
        with ckpt.writing(root, name):  # a full or read-only disk: one line, and no .tmp left behind
            if self.is_main:
                ckpt.begin(root, name)
            dist.barrier()
            path = self._write(root, name)
        if self.is_main:
            if is_best:
                self.best_name = name
                ckpt.write_json_atomic(self.run_dir / "best.json", {"checkpoint": name, "step": self.step, "metric": self.tc.best_metric, "value": self.best})
            # never prune the newest checkpoint known good (_good_bound): the one just written is not known good yet
            protect = {p.name for p in (ckpt.newest_before(root, self._good_bound()),) if p is not None}
            ckpt.prune(root, self.tc.keep_last, protect | ({self.best_name} if self.best_name else set()))
            self.last_checkpoint = path
            self.call_hook("trainhub_checkpoint_saved", run=self.run, step=self.step, path=str(path), is_best=is_best)
        dist.barrier()
        return path

    def _write(self, root: Path, name: str) -> Optional[Path]:
        """Every rank's part of checkpoint ``name`` into its temporary directory, then rank 0 renames it."""
        tmp = ckpt.tmp_dir(root, name)
        ckpt.save_rng(tmp, self.rank)
        if self.sharded:
            from trainhub.training import fsdp

            fsdp.save_shards(tmp, self.rank, {n: self.raw_models[n] for n in self.sharded},
                             {n: e for n, e in self.emas.items() if n in self.sharded}, self.optimizers)
        dist.barrier()
        if not self.is_main:
            return None
        optim_state = {
            "optimizers": {} if self.sharded else {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }
        plain = {n: m for n, m in self.raw_models.items() if n not in self.sharded and n not in self.frozen}
        if self.sharded:
            fsdp.write_layout(tmp, {n: self.raw_models[n] for n in self.sharded}, self.world)
        ckpt.save_main(tmp, plain, {n: e for n, e in self.emas.items() if n not in self.sharded}, optim_state, self.training_state())
        return ckpt.commit(root, name)

    # ---- non-finite state ---------------------------------------------------------------------------
    def _good_bound(self) -> int:
        """Checkpoints of steps below this are known good: finite (checked at save) and their weights went on to
        a finite optimizer step. Inside a stretch of non-finite steps that is the stretch's first step; else the
        current one.

        Finite is not enough: with ``train.lr=1e30`` one step leaves weights near 1e30, finite but garbage, and
        every later step is non-finite; those checkpoints are finite, and bad. A finite step after them is
        the evidence the run itself gives that weights still work, at no cost. Bad data cannot be told from bad
        weights this way, so a checkpoint whose next steps were non-finite is not called good (the stop message
        lists it). Weights that grow large but keep giving finite losses are the loss-range watch's to catch."""
        return self.nonfinite_since if self.nonfinite_in_row else self.step

    def _check_finite(self, name: str) -> None:
        """Never write a checkpoint from non-finite weights, EMA or optimizer state (one reduction per group)."""
        models = {n: m for n, m in self.raw_models.items() if n not in self.frozen}
        bad = ckpt.nonfinite(ckpt.state_groups(models, self.emas, self.optimizers))
        if self.sharded and dist.any_true(bool(bad), self.device):  # each rank checked its own shards
            bad = bad or {"a shard on another rank": "?"}
        if bad:
            what = "; ".join(f"{g} (e.g. {t})" for g, t in bad.items())
            raise TrainingStopped(f"non-finite values at step {self.step} in {what}: {name} not written; lower train.lr, "
                                  f"check the data, or use precision bf16/fp32; {self._good_checkpoint_note()}")

    def _good_checkpoint_note(self) -> str:
        """Where to continue from: the newest checkpoint known good (:meth:`_good_bound`), its files read back."""
        if self.run_dir is None:
            return "no checkpoint was written"
        root = self.run_dir / "checkpoints"
        bound = self._good_bound()
        after = [p.name for s, p in ckpt.list_checkpoints(root) if s >= bound]
        shown = (f" ({', '.join(after[-3:])}{', ...' if len(after) > 3 else ''} {'holds' if len(after) == 1 else 'hold'} "
                 f"the weights that gave the non-finite steps)") if after else ""
        good = ckpt.newest_before(root, bound, verify=True)
        if good is None:
            return f"no checkpoint of this run is known good{shown}; start again"
        if not after:
            return f"newest good checkpoint: {good}"
        return f"newest good checkpoint: {good}{shown}; continue from it with --resume {good}"

    # ---- the loop ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self) -> Iterator[Any]:
        """Micro-batches from the resume position on, advancing epochs; tracks position for checkpoints."""
        while True:
            self._apply_phase(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch_size)
            for batch in self.loader:
                yield batch
            yield None  # epoch boundary marker

    def fit(self) -> str:
        tc = self.tc
        accum = self.accum
        self.signals.arm()
        self.first_step = self.step
        status = "completed"
        batches = self._batches()
        window: dict[str, torch.Tensor] = {}
        win_steps, win_time, win_data = 0, 0.0, 0.0
        t_last = time.perf_counter()
        self.call_hook("trainhub_run_start", run=self.run)
        for message, data in self.shm_warnings:
            self.warn("shm", message, data)
        try:
            while self.step < self.max_steps:
                if self._stop_agreed():
                    status = "interrupted"
                    break
                self.call_hook("trainhub_step_start", run=self.run, step=self.step)
                t0 = time.perf_counter()
                micro = []
                while len(micro) < accum:
                    b = next(batches)
                    if b is None:  # epoch ended: drop an incomplete accumulation group
                        micro = []
                        self._end_epoch()
                        continue
                    micro.append(to_device(b, self.device, self.pin, tc.channels_last))
                data_time = time.perf_counter() - t0
                self.between_steps = False
                self.batch_in_epoch += accum
                self._seed_host_rngs()
                logs = self._optimizer_step(micro)
                self.run.step_losses = logs
                self.step += 1
                self.between_steps = True
                self.run.step, self.run.epoch = self.step, self.epoch
                for k, v in logs.items():
                    window[k] = window[k] + v if k in window else v
                now = time.perf_counter()
                win_steps += 1
                win_time += now - t_last
                win_data += data_time
                t_last = now
                log_now = self.step % tc.log_every == 0 or self.step == self.max_steps
                metrics: dict[str, float] = {}
                if log_now:
                    metrics = self._metrics(window, win_steps, win_time, win_data)
                    window, win_steps, win_time, win_data = {}, 0, 0.0, 0.0
                    for message, data in self.loss_watch.check(self.step, self.epoch, metrics):
                        self.warn("loss_range", message, data)
                self.call_hook("trainhub_step_end", run=self.run, step=self.step, metrics=metrics)
                if self.dry_run:
                    break
                if tc.eval_every and self.step % tc.eval_every == 0:
                    self._eval_and_maybe_best()
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.saved_step != self.step:
                    self.save()
            if status == "completed" and not self.dry_run:
                if tc.eval_at_end and not (tc.eval_every and self.step % tc.eval_every == 0):
                    self._eval_and_maybe_best()
                if self.saved_step != self.step:
                    self.save()
            elif status == "interrupted":
                path = self.save() if self.saved_step != self.step else self.last_checkpoint
                if self.is_main and path is not None:
                    print(f"trainhub: interrupted; checkpoint saved to {path}", flush=True)
        except BaseException as exc:
            saved = self._save_before_failing(exc)
            try:
                self.call_hook("trainhub_run_end", run=self.run, status="failed")
            except Exception as end_exc:  # the failure that ended the run is the one to report
                warnings.warn(f"while ending the failed run: {end_exc}", stacklevel=2)
            if saved:
                try:
                    told = type(exc)(f"{exc}; {saved}")
                except Exception:  # an exception class that takes other arguments
                    told = UserError(f"{exc}; {saved}")
                raise told from exc
            raise
        self.call_hook("trainhub_run_end", run=self.run, status=status)
        return status

    def _save_before_failing(self, exc: BaseException) -> Optional[str]:
        """A plugin that failed, or data that could not be read, ends the run between two steps, where the
        training state is whole: save it first so no step is lost, and say where it is (one process only: in a
        job of several, the failing rank stops alone and the others cannot join a save)."""
        from trainhub.training.storage import DiskError

        if not (isinstance(exc, UserError) and not isinstance(exc, (TrainingStopped, DiskError)) and self.between_steps
                and self.world == 1 and not self.dry_run and self.run_dir is not None):
            return None
        if self.step == self.first_step:
            return None  # nothing trained yet in this run
        if self.saved_step == self.step:
            return f"{self.last_checkpoint} holds step {self.step}; resume with --resume auto" if self.last_checkpoint else None
        try:
            path = self.save()
        except Exception as save_exc:  # non-finite state, a full disk: say so, and report the first failure
            return f"no checkpoint could be saved ({' '.join(str(save_exc).split())[:200]})"
        return f"saved {path} first; resume with --resume auto"

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.run.epoch = self.epoch
        if self.tc.checkpoint_every_epoch:
            self.save(f"checkpoint-epoch-{self.epoch}")

    def _optimizer_step(self, micro: list[Any]) -> dict[str, torch.Tensor]:
        if self.flops_per_sample is None and self.tc.measure_flops and not self.tc.compile and not self.sharded:
            self.flops_per_sample = self._count_flops(micro[0])
        return self._optimizer_step_inner(micro)

    def _count_flops(self, batch: Any) -> float:
        """FLOPs per sample of one forward+backward of every phase, on throwaway copies of the models.

        Counting inside the real step would run it under a dispatch mode that can pick other kernels
        (SDPA) and break bit-exact resume; the copies also keep gradients and all RNG streams untouched.
        """
        from trainhub.training.flops import count_flops

        models = {n: copy.deepcopy(m) for n, m in self.raw_models.items()}
        cache: dict[str, Any] = {}

        def step() -> None:
            for oname in self.recipe.optimizer_order:
                ctx = StepContext(models, oname, self.step, self.epoch, 0, self.device, self.config, cache)
                with self.autocast():
                    out = self.recipe.train_step(batch, ctx)
                if isinstance(out, dict) and out.get("loss") is not None:
                    out["loss"].float().backward()

        devices = [self.device] if self.device.type == "cuda" else []
        py, npy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=devices):
                flops = count_flops(step)
        finally:
            random.setstate(py)
            np.random.set_state(npy)
        del models, cache
        first = next((v for v in (batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch])
                      if isinstance(v, torch.Tensor)), None)
        n = first.shape[0] if first is not None and first.dim() > 0 else self.batch_size
        return flops / max(1, n)

    def _optimizer_step_inner(self, micro: list[Any]) -> dict[str, torch.Tensor]:
        tc = self.tc
        accum = len(micro)
        caches: list[dict[str, Any]] = [{} for _ in micro]
        logs: dict[str, torch.Tensor] = {}
        multi = len(self.optimizers) > 1
        stepped_any = False
        for oname in self.recipe.optimizer_order:
            opt = self.optimizers[oname]
            opt.zero_grad(set_to_none=True)
            total: Optional[torch.Tensor] = None
            skipped = False
            for k, batch in enumerate(micro):
                ctx = StepContext(self.models, oname, self.step, self.epoch, k, self.device, self.config, caches[k])
                sync = self._no_sync() if k < accum - 1 else contextlib.nullcontext()
                with sync:
                    with self.autocast():
                        out = self.recipe.train_step(batch, ctx)
                    loss = out.get("loss") if isinstance(out, dict) else None
                    if loss is None:
                        skipped = True
                        break
                    scaled = loss.float() / accum if accum > 1 else loss.float()
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                total = scaled.detach() if total is None else total + scaled.detach()
                for key, v in out.items():
                    if key == "loss":
                        key = f"loss_{oname}" if multi else "loss"
                        v = loss.detach().float()
                    elif isinstance(v, torch.Tensor):
                        v = v.detach().float()
                    else:
                        v = torch.tensor(float(v))
                    if accum > 1:
                        v = v / accum
                    logs[key] = logs[key] + v if key in logs else v
            if skipped:
                opt.zero_grad(set_to_none=True)
                continue
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            max_norm = self.specs[oname].max_grad_norm or tc.max_grad_norm
            gn = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"), foreach=True)
            # one host sync per optimizer step; the scaler handles inf gradients itself under fp16
            ok = bool(torch.isfinite(total if self.scaler is not None else total + gn).item())
            if not ok:
                self._nonfinite(oname, total)
                opt.zero_grad(set_to_none=True)
                continue
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
            if oname in self.schedulers:  # absent only during batch-size trial steps
                self.schedulers[oname].step()
            stepped_any = True
            logs[f"grad_norm_{oname}" if multi else "grad_norm"] = gn.detach().float()
        if self.scaler is not None:
            self.scaler.update()
        if stepped_any:
            self.nonfinite_in_row = 0
            self._ema_update()
        return logs

    def warn(self, kind: str, message: str, data: Optional[dict[str, Any]] = None) -> None:
        """Report a warning through the ``trainhub_warning`` hook (console and metrics.jsonl by default)."""
        self.call_hook("trainhub_warning", run=self.run, step=self.step, kind=kind, message=message, data=data or {})

    def _nonfinite(self, oname: str, total: torch.Tensor) -> None:
        if self.nonfinite_in_row == 0:
            self.nonfinite_since = self.step
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        if self.is_main:
            print(f"trainhub: non-finite loss/gradients at step {self.step} ({oname}); step skipped "
                  f"({self.nonfinite_in_row} in a row, {self.nonfinite_total} total)", flush=True)
        if self.nonfinite_in_row >= self.tc.max_nonfinite:
            raise TrainingStopped(
                f"{self.nonfinite_in_row} non-finite steps in a row at step {self.step} (train.max_nonfinite="
                f"{self.tc.max_nonfinite}): lower train.lr, check the data, or use precision bf16/fp32; "
                f"{self._good_checkpoint_note()}"
            )

    def _no_sync(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        for m in self.models.values():
            inner = getattr(m, "_orig_mod", m)
            if isinstance(inner, nn.parallel.DistributedDataParallel):
                stack.enter_context(inner.no_sync())
        return stack

    def _ema_update(self) -> None:
        e = self.tc.ema
        for name, ema in self.emas.items():
            if self.step + 1 <= e.start_step:
                ema.copy_from(self.raw_models[name])
            elif (self.step + 1) % e.every == 0:
                ema.update(self.raw_models[name])

    def _metrics(self, window: dict[str, torch.Tensor], n: int, wall: float, data: float) -> dict[str, float]:
        out = {k: float(v.item()) / n for k, v in window.items()}
        if self.world > 1:
            out = dist.all_reduce_mean(out, self.device)
        self.run.last_losses = {k: v for k, v in out.items() if k.startswith("loss") or not k.startswith(("grad_norm", "lr"))}
        for name, o in self.optimizers.items():
            out["lr" if len(self.optimizers) == 1 else f"lr_{name}"] = o.param_groups[0]["lr"]
        step_time = wall / max(n, 1)
        out["step_time"] = step_time
        out["data_time"] = data / max(n, 1)
        out["samples_per_sec"] = self.batch_size * self.accum * self.world / max(step_time, 1e-9)
        if self.flops_per_sample:
            out["flops_per_sample"] = self.flops_per_sample
            out["tflops"] = self.flops_per_sample * out["samples_per_sec"] / 1e12
            if self._peak is None and self.device.type == "cuda":
                from trainhub.training.flops import device_peak

                self._peak = device_peak(self.device, self.precision)
            if self._peak:
                from trainhub.training.flops import mfu

                out["mfu"] = mfu(self.flops_per_sample, out["samples_per_sec"], self._peak[0] * self.world)
        out["nonfinite_skipped"] = float(self.nonfinite_total)
        out["epoch"] = float(self.epoch)
        sysm = system_metrics(self.device)
        out.update(sysm)
        if self.is_main and self.watchdog.check(sysm["sys_mem_percent"]):
            self.warn("memory", f"system memory at {sysm['sys_mem_percent']:.1f}%: lower loader.num_workers, the batch "
                      "size or dataset caches", {"sys_mem_percent": sysm["sys_mem_percent"]})
        return out

    # ---- evaluation --------------------------------------------------------------------------------
    def eval_models(self) -> dict[str, nn.Module]:
        """EMA weights for eval: copies for plain models, swapped in place for FSDP-sharded ones."""
        if not hasattr(self, "_eval_copies"):
            self._eval_copies = {n: copy.deepcopy(self.raw_models[n]) for n in self.ema_names if n not in self.sharded}
        out = {}
        self._swapped: dict[str, dict[str, torch.Tensor]] = {}
        for n, m in self.raw_models.items():
            if n in self._eval_copies:
                self.emas[n].copy_to(self._eval_copies[n])
                out[n] = self._eval_copies[n]
            else:
                if n in self.sharded and n in self.emas:
                    from trainhub.training.fsdp import local

                    self._swapped[n] = {k: local(v).detach().clone() for k, v in m.state_dict().items()}
                    self.emas[n].copy_to(m)
                out[n] = m
        return out

    @torch.no_grad()
    def _unswap(self) -> None:
        from trainhub.training.fsdp import local

        for n, saved in self._swapped.items():
            for k, v in self.raw_models[n].state_dict().items():
                local(v).copy_(saved[k])
        self._swapped = {}

    def evaluate(self) -> dict[str, float]:
        models = self.eval_models()
        was_training = {n: m.training for n, m in models.items()}
        for m in models.values():
            m.eval()
        media = MediaWriter(self.run_dir / "samples" if self.run_dir else None, self.step, enabled=self.is_main and not self.dry_run)
        ctx = EvalContext(models, self.val_loader, self.device, self.config, self.step, self.run_dir, self.is_main, self.autocast, media)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():  # eval never disturbs the training RNG
            torch.manual_seed(self.tc.seed + 7919 * self.rank)  # (random and numpy restart at every step anyway)
            metrics = self.recipe.evaluate(ctx) or {}
        for n, m in models.items():
            m.train(was_training[n])
        self._unswap()
        metrics = dist.all_reduce_mean({k: float(v) for k, v in metrics.items()}, self.device)
        self.last_eval = metrics
        if self.is_main:
            self.call_hook("trainhub_eval_end", run=self.run, step=self.step, metrics=metrics, media=media.items)
        return metrics

    def _eval_and_maybe_best(self) -> None:
        metrics = self.evaluate()
        name = self.tc.best_metric
        if not name:
            return
        if name not in metrics:
            raise UserError(f"train.best_metric={name!r} is not among the eval metrics: {', '.join(sorted(metrics)) or 'none'}")
        v = metrics[name]
        better = self.best is None or (v < self.best if self.tc.best_mode == "min" else v > self.best)
        if better and math.isfinite(v):
            self.best = v
            self.save(is_best=True)

    # ---- signals -----------------------------------------------------------------------------------
    def _stop_agreed(self) -> bool:
        requested = self.signals.requested is not None
        return dist.any_true(requested, self.device) if self.world > 1 else requested
