"""What ``trainhub run NAME --dry-run`` prints: what was validated and built, the one step it ran, and where a real
run would write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def describe_batch(batch: Any) -> str:
    """``x float32[16, 3, 32, 32], y int64[16]`` for a (nested) batch of tensors."""
    if isinstance(batch, torch.Tensor):
        return f"{str(batch.dtype).replace('torch.', '')}{list(batch.shape)}"
    if isinstance(batch, dict):
        return ", ".join(f"{k} {describe_batch(v)}" for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        return "(" + ", ".join(describe_batch(v) for v in batch) + ")"
    return type(batch).__name__


def dry_run_summary(trainer: Any, would_write: Path, batch: Any) -> str:
    """The summary of a dry run: models and parameter counts, data and batch shapes, the losses of its one step,
    optimizer, schedule and precision, and the run directory a real run would use."""
    tc = trainer.tc
    lines = [f"trainhub: dry run of {trainer.recipe.name}: config valid, models and data built, one step run, nothing written"]
    for name, m in trainer.raw_models.items():
        total = sum(p.numel() for p in m.parameters())
        trained = sum(p.numel() for p in m.parameters() if p.requires_grad) if name in trainer.trained else 0
        notes = ["frozen" if name in trainer.frozen else f"{trained:,} trained"] + (["EMA"] if name in trainer.emas else [])
        lines.append(f"  model '{name}': {type(m).__name__}, {total:,} parameters ({', '.join(notes)})")
    n_train = len(trainer.loader.dataset)
    n_val = len(trainer.val_loader.dataset) if trainer.val_loader is not None else 0
    lines.append(f"  data: {n_train:,} training samples, {n_val:,} validation; batch {trainer.batch_size} x accumulation "
                 f"{trainer.accum} x {trainer.world} process{'es' if trainer.world > 1 else ''}; "
                 f"{trainer.steps_per_epoch:,} steps per epoch, {trainer.max_steps:,} steps")
    lines.append(f"  batch: {describe_batch(batch)}")
    losses = {k: float(v) for k, v in trainer.run.step_losses.items()}
    lines.append("  step 1: " + (" ".join(f"{k}={v:.4g}" for k, v in losses.items()) or "no loss (every optimizer skipped)"))
    for name, spec in trainer.specs.items():
        group = trainer.optimizers[name].param_groups[0]
        lines.append(f"  optimizer '{name}': {spec.optimizer or tc.optimizer} (lr {group['initial_lr'] if 'initial_lr' in group else group['lr']:g}, "
                     f"weight decay {group.get('weight_decay', 0):g}); schedule {tc.schedule} over {trainer.max_steps:,} steps, "
                     f"warmup {tc.warmup_steps}")
    lines.append(f"  device {trainer.device}, precision {trainer.precision}, {trainer.strategy.describe()}")
    lines.append(f"  a run would write: {would_write}")
    return "\n".join(lines)
