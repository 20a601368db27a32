"""The one shared trainer: the loop, and the state an exact resume needs.

It owns devices, precision, accumulation, clipping, optimizers, schedules, EMA, eval, checkpoints, non-finite
handling and signals; recipes stay plain PyTorch. Side features live in their own modules behind small
interfaces: distribution (:mod:`~trainhub.training.strategy`, :mod:`~trainhub.training.fsdp`), the optimizers,
schedules and sampler plugins register (:mod:`~trainhub.training.optim`), ``batch_size: auto``
(:mod:`~trainhub.training.autobatch`), ``data_schedule`` (:mod:`~trainhub.training.phases`), FLOP counting
(:mod:`~trainhub.training.flops`). :meth:`Trainer.fit` is the loop; read it top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from trainhub.config import RunConfig
from trainhub.errors import UserError
from trainhub.kit.media import MediaWriter
from trainhub.kit.progress import console_progress, no_progress
from trainhub.observe.watch import LossWatch
from trainhub.plugins import Plugins
from trainhub.recipe import EvalContext, OptimizerSpec, Recipe, StepContext
from trainhub.training import autobatch, flops, optim, signals, state
from trainhub.training import distributed as dist
from trainhub.training.data import build_loader, close_loader, cpu_count, oversubscribed, sample_seed
from trainhub.training.devices import amp_dtype, autocast, checkpoint_blocks, select_precision, to_device
from trainhub.training.ema import EMA
from trainhub.training.fsdp import FSDPStrategy
from trainhub.training.guard import NonFiniteGuard
from trainhub.training.phases import DataPhases
from trainhub.training.stepmetrics import StepMetrics
from trainhub.training.strategy import Strategy


class Trainer:
    """Runs a recipe. Construct through :func:`trainhub.train`."""

    def __init__(self, recipe: Recipe, config: RunConfig, run_dir: Optional[Path], device: torch.device,
                 call_hook: Callable[..., None], run_info: Any, plugins: Plugins, dry_run: bool = False) -> None:
        self.recipe, self.config, self.tc, self.run_dir, self.device = recipe, config, config.train, run_dir, device
        self.call_hook, self.run, self.plugins, self.dry_run = call_hook, run_info, plugins, dry_run
        run_info.warn = self.warn
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.precision = select_precision(self.tc.precision, device)
        self.amp_dtype = amp_dtype(self.precision)
        self.signals = signals.active() or signals.StopSignals()  # SIGINT/SIGTERM: save after this step, exit 0
        self.signals.announce = self.is_main
        strategy = FSDPStrategy if self.tc.strategy == "fsdp" and dist.is_initialized() else Strategy
        self.strategy = strategy(device, self.rank, self.world, self.tc.compile)
        # the state a checkpoint holds besides weights, optimizers and RNG (training_state.json)
        self.step = self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch (this rank)
        self.nonfinite = NonFiniteGuard(self.tc.max_nonfinite)
        self.best: Optional[float] = None
        self.best_name: Optional[str] = None
        self.last_eval: dict[str, float] = {}
        # bookkeeping of this process
        self.last_checkpoint: Optional[Path] = None
        self.saved_step = -1
        self.between_steps = True  # False while an optimizer step is under way: its state is not whole
        self.flops_per_sample: Optional[float] = None
        self.step_metrics = StepMetrics(device, self.precision, self.world, self.warn)
        self.loss_watch = LossWatch(list(recipe.loss_ranges(config)))
        self._build()

    # ---- construction ----------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, tc = self.config, self.tc
        self.accum = tc.gradient_accumulation_steps
        self._build_models()
        self.phases = DataPhases(cfg)
        self.phase = self.phases.index(0)
        train_ds, val_ds = self.recipe.build_data(self.phases.config(self.phase))
        self.collate = self.recipe.collate_fn(cfg)
        self.auto_batch_record: Optional[dict[str, int]] = None  # auto_batch_size.json, written once the run starts
        if tc.batch_size == "auto":
            self.strategy.check_auto_batch()
            self.models = self.raw_models  # trial steps without DDP: no collectives, so one rank's OOM cannot hang the others
            remembered = self.run_dir / "auto_batch_size.json" if self.run_dir else None
            self.base_batch_size, self.accum, self.auto_batch_record = autobatch.choose(
                train_ds, self.collate, lambda b: self._optimizer_step([b]), tc, self.world, self.device, remembered)
            self._build_models()  # fresh weights and optimizer state after the trial steps
            self.nonfinite.reset()
        else:
            self.base_batch_size = tc.batch_size
        self.batch_size = self.phases.batch_size(self.phase, self.base_batch_size)
        self._seed_training()
        self.pin = (self.device.type == "cuda") if cfg.loader.pin_memory is None else cfg.loader.pin_memory
        self.start_warnings: list[tuple[str, str, dict[str, Any]]] = []  # reported through the hook once the run starts
        self._build_train_loader(train_ds, warn=lambda m, d: self.start_warnings.append(("shm", m, d)))
        if self.device.type == "cpu" and oversubscribed(load := os.getloadavg()[0], cpu_count()):
            self.start_warnings.append(("cpu", f"load average {load:.1f} on {cpu_count()} CPUs: other processes compete for "
                                        f"the cores, so steps run slower and unevenly (trainhub doctor shows it)",
                                        {"load_average": load, "cpus": cpu_count(), "threads": torch.get_num_threads()}))
        self.val_loader = None
        if val_ds is not None and len(val_ds) > 0:  # type: ignore[arg-type]
            vcfg = cfg.loader.model_copy(update={"persistent_workers": False})
            self.val_loader, _ = build_loader(val_ds, self.batch_size, vcfg, tc.seed, self.rank, self.world, self.pin,
                                              self.collate, shuffle=False, drop_last=False, cpu_training=self.device.type == "cpu")
            self.val_loader.generator = torch.Generator().manual_seed(tc.seed)
        if tc.epochs:  # phases may change the batch size: add up each epoch's steps
            n = len(train_ds)  # type: ignore[arg-type]
            self.max_steps = sum(self._steps_per_epoch(self.phases.batch_size(self.phases.index(e), self.base_batch_size), n)
                                 for e in range(tc.epochs))
        else:
            self.max_steps = tc.max_steps
        self.schedulers = optim.build_schedulers(self.plugins, self.optimizers, tc, self.max_steps)

    def _build_models(self) -> None:
        cfg, tc = self.config, self.tc
        torch.manual_seed(tc.seed)  # identical model init on every rank
        random.seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        models = self.recipe.build_models(cfg)
        if not isinstance(models, dict) or not models:
            raise TypeError(f"recipe {self.recipe.name!r}: build_models must return a non-empty dict of modules")
        self.raw_models: dict[str, nn.Module] = {n: m.to(self.device) for n, m in models.items()}
        for m in self.raw_models.values():
            if tc.channels_last:
                m.to(memory_format=torch.channels_last)
            if tc.activation_checkpointing:
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
        self.strategy.setup(self.raw_models, self.trained, self.recipe, self.amp_dtype)  # before the optimizers see parameters
        self.optimizers = {n: optim.build_optimizer(self.plugins, [p for mn in self.specs[n].models for p in self.raw_models[mn].parameters()
                                                                   if p.requires_grad], self.specs[n], tc, self.device)
                           for n in order}
        self.ema_names = tuple(n for n in self.recipe.ema_models(cfg) if n in self.raw_models) if tc.ema.enabled else ()
        self.emas = {n: EMA(self.raw_models[n], tc.ema.decay) for n in self.ema_names}
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=tc.fp16_init_scale) if self.precision == "fp16" else None
        self.models = self.strategy.wrap(self.raw_models, self.trained)
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}  # built once the step count is known

    def _build_train_loader(self, train_ds: Any, warn: Callable[[str, dict[str, Any]], None]) -> None:
        self.sampler = optim.build_sampler(self.plugins, train_ds, self.config.loader, self.tc.seed, self.rank, self.world)
        self.loader, _ = build_loader(train_ds, self.batch_size, self.config.loader, self.tc.seed, self.rank, self.world,
                                      self.pin, self.collate, warn=warn, sampler=self.sampler, cpu_training=self.device.type == "cpu")
        self.loader.generator = torch.Generator().manual_seed(self.tc.seed)  # keep the global RNG out of loader start-up
        self.steps_per_epoch = self._steps_per_epoch(self.batch_size, len(train_ds))

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

    def _apply_phase(self, epoch: int) -> None:
        """Switch data settings at an epoch boundary (or on resume) without rebuilding the trainer."""
        idx = self.phases.index(epoch)
        if idx == self.phase:
            return
        self.phase = idx
        self.batch_size = self.phases.batch_size(idx, self.base_batch_size)
        train_ds, _ = self.recipe.build_data(self.phases.config(idx))
        close_loader(self.loader)
        self._build_train_loader(train_ds, warn=lambda m, d: self.warn("shm", m, d))
        if self.is_main:
            print(f"trainhub: epoch {epoch}: data phase {idx} ({self.phases.describe(idx)}), batch size {self.batch_size}", flush=True)

    def _seed_training(self) -> None:
        """Each rank gets its own training RNG stream (dropout masks, diffusion noise differ across ranks)."""
        s = self.tc.seed + 1_000_003 * self.rank
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def _seed_host_rngs(self) -> None:
        """Python's ``random`` and NumPy's global RNG restart at every step from (seed, rank, step).

        Loading in the main process reseeds them per batch (:class:`~trainhub.training.data.SeededDataset`);
        restarting them here costs ~10 us a step where saving and restoring them around every batch cost ~0.12 ms,
        and a step's draws depend on the step alone: not on the loader's worker count, nor on a resume."""
        s = sample_seed(self.tc.seed, -1 - self.rank, self.step)  # epoch -1 - rank: never a data key
        random.seed(s)
        np.random.seed(s % 2**32)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    # ---- the loop ----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Any]:
        """Micro-batches from the resume position on, advancing epochs; tracks position for checkpoints."""
        while True:
            self._apply_phase(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch_size)
            yield from self.loader
            yield None  # epoch boundary marker

    def fit(self) -> str:
        tc, accum = self.tc, self.accum
        self.signals.arm()
        self.first_step = self.step
        status = "completed"
        batches = self._batches()
        window: dict[str, torch.Tensor] = {}  # loss terms summed since the last logging step (no host sync per step)
        win_steps, win_time, win_data = 0, 0.0, 0.0
        self.call_hook("trainhub_run_start", run=self.run)
        for kind, message, data in self.start_warnings:
            self.warn(kind, message, data)
        t_last = time.perf_counter()
        try:
            while self.step < self.max_steps:
                if self._stop_agreed():
                    status = "interrupted"
                    break
                self.call_hook("trainhub_step_start", run=self.run, step=self.step)
                # gather one optimizer step's micro-batches; an epoch boundary drops an incomplete group
                t0 = time.perf_counter()
                micro = []
                while len(micro) < accum:
                    b = next(batches)
                    if b is None:
                        micro = []
                        self._end_epoch()
                        continue
                    micro.append(to_device(b, self.device, self.pin, tc.channels_last))
                data_time = time.perf_counter() - t0
                if self.dry_run:
                    self.dry_batch = micro[0]  # for the summary
                # the step itself: its state is not whole until it ends (a failure inside it is not saved)
                self.between_steps = False
                self.batch_in_epoch += accum
                self._seed_host_rngs()
                # FLOPs: the run's first step, counted as it runs (a resumed run reads the count from its checkpoint)
                counter = flops.StepFlops() if self.step == 0 and tc.measure_flops and not tc.compile else None
                logs = self._optimizer_step(micro, counter)
                if counter is not None:  # the first step, counted as it ran
                    self.flops_per_sample = counter.total / max(1, sum(_batch_len(b) for b in micro))
                self.step += 1
                self.between_steps = True
                self.run.step, self.run.epoch, self.run.step_losses = self.step, self.epoch, logs
                # log every log_every steps: the only host sync of the loop besides the non-finite check
                for k, v in logs.items():
                    window[k] = window[k] + v if k in window else v
                now = time.perf_counter()
                win_steps, win_time, win_data, t_last = win_steps + 1, win_time + now - t_last, win_data + data_time, now
                metrics: dict[str, float] = {}
                if self.step % tc.log_every == 0 or self.step == self.max_steps:
                    metrics = self.step_metrics(window, win_steps, win_time, win_data, self.optimizers,
                                                self.batch_size * self.accum * self.world, self.flops_per_sample,
                                                {"nonfinite_skipped": float(self.nonfinite.total), "epoch": float(self.epoch)})
                    self.run.last_losses = {k: v for k, v in metrics.items() if k in window}
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
                t_last = time.perf_counter()  # eval and checkpoint time is not step time
            if status == "completed" and not self.dry_run:
                if tc.eval_at_end and not (tc.eval_every and self.step % tc.eval_every == 0):
                    self._eval_and_maybe_best()
                if tc.checkpoint_at_end and self.saved_step != self.step:
                    self.save()
            elif status == "interrupted":
                path = self.save() if self.saved_step != self.step else self.last_checkpoint
                if self.is_main and path is not None:
                    print(f"trainhub: interrupted; checkpoint saved to {path}", flush=True)
        except BaseException as exc:
            saved = state.save_before_failing(self, exc)
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

    def close(self) -> None:
        """Stop the loaders' worker processes (the run is over, however it ended)."""
        close_loader(self.loader)
        close_loader(self.val_loader)

    def _optimizer_step(self, micro: list[Any], counter: Optional[flops.StepFlops] = None) -> dict[str, torch.Tensor]:
        """One optimizer step per optimizer phase (a GAN: discriminator, then generator) over the micro-batches:
        forward under autocast, scaled backward (no DDP sync but on the last), unscale, clip, a finite check (one
        host sync), step, schedule; then EMA. Returns the detached loss terms, averaged over the micro-batches."""
        accum = len(micro)
        caches: list[dict[str, Any]] = [{} for _ in micro]  # shared by the phases of one micro-batch
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
                with self._no_sync() if k < accum - 1 else contextlib.nullcontext(), \
                        counter.measure() if counter is not None else contextlib.nullcontext():
                    with self.autocast():
                        out = self.recipe.train_step(batch, ctx)
                    loss = out.get("loss") if isinstance(out, dict) else None
                    if loss is None:  # the recipe skips this phase for this step (a GAN before its start step)
                        skipped = True
                        break
                    scaled = loss.float() / accum if accum > 1 else loss.float()
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                total = scaled.detach() if total is None else total + scaled.detach()
                for key, v in out.items():
                    if key == "loss":
                        key, v = (f"loss_{oname}" if multi else "loss"), loss.detach().float()
                    else:
                        v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                    v = v / accum if accum > 1 else v
                    logs[key] = logs[key] + v if key in logs else v
            if skipped:
                opt.zero_grad(set_to_none=True)
                continue
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            max_norm = self.specs[oname].max_grad_norm or self.tc.max_grad_norm
            gn = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"), foreach=True)
            # one host sync per optimizer step; the scaler handles inf gradients itself under fp16
            if not bool(torch.isfinite(total if self.scaler is not None else total + gn).item()):
                self.nonfinite.skipped(self.step, oname, self.run_dir, self.is_main)
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
            self.nonfinite.stepped()
            self._ema_update()
        return logs

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation group."""
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

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.run.epoch = self.epoch
        if self.tc.checkpoint_every_epoch:
            self.save(f"checkpoint-epoch-{self.epoch}")

    def _stop_agreed(self) -> bool:
        requested = self.signals.requested is not None
        return dist.any_true(requested, self.device) if self.world > 1 else requested

    def warn(self, kind: str, message: str, data: Optional[dict[str, Any]] = None) -> None:
        """Report a warning through the ``trainhub_warning`` hook (console and metrics.jsonl by default)."""
        self.call_hook("trainhub_warning", run=self.run, step=self.step, kind=kind, message=message, data=data or {})

    # ---- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        models = self.strategy.eval_models(self.raw_models, self.emas)  # EMA weights where there is an EMA
        was_training = {n: m.training for n, m in models.items()}
        for m in models.values():
            m.eval()
        media = MediaWriter(self.run_dir / "samples" if self.run_dir else None, self.step, enabled=self.is_main and not self.dry_run)
        console = getattr(getattr(self.config, "loggers", None), "console", None)
        progress = console_progress if self.is_main and console is not None and console.enabled and console.progress_bar else no_progress
        data = progress(self.val_loader, "eval", len(self.val_loader)) if self.val_loader is not None else None
        ctx = EvalContext(models, data, self.device, self.config, self.step, self.run_dir, self.is_main, self.autocast, media, progress)
        t0 = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():  # eval never disturbs the training RNG
            torch.manual_seed(self.tc.seed + 7919 * self.rank)  # (random and numpy restart at every step anyway)
            metrics = self.recipe.evaluate(ctx) or {}
        for n, m in models.items():
            m.train(was_training[n])
        self.strategy.after_eval(self.raw_models)
        metrics = dist.mean_where_reported({k: float(v) for k, v in metrics.items()}, self.device)
        metrics["eval_time"] = time.perf_counter() - t0
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

    # ---- checkpoints (trainhub.training.state) ------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        return state.training_state(self)

    def save(self, name: Optional[str] = None, is_best: bool = False) -> Optional[Path]:
        return state.save(self, name, is_best)

    def load(self, directory: Path) -> None:
        state.load(self, directory)

    def load_foreign(self, path: str) -> None:
        state.load_foreign(self, path)


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (1 when it has none)."""
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    first = next((v for v in items if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 1
