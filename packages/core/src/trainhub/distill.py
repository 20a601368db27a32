"""Knowledge distillation support: load a trained checkpoint of the same recipe as a frozen teacher.

A recipe adds a ``distill: DistillConfig`` section, returns the teacher from ``build_models`` under
the name ``"teacher"`` (``load_teacher``), lists it in ``frozen_models`` (eval mode, no gradients,
never saved: student checkpoints are ordinary checkpoints) and adds ``output_weight`` x the
student-teacher output loss (and feature losses where it exposes features) in ``train_step``, with
the teacher's forward under ``torch.no_grad()`` and the trainer's autocast (the same precision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field
from torch import nn

from trainhub.config import Section
from trainhub.errors import UserError


class DistillConfig(Section):
    teacher: Optional[str] = Field(None, description="teacher checkpoint or run directory (same recipe, any config)")
    teacher_overrides: list[str] = Field(default_factory=list, description="overrides of the teacher's saved config")
    output_weight: float = Field(1.0, ge=0.0, description="weight of the student-teacher output loss")
    feature_weight: float = Field(0.0, ge=0.0, description="weight of intermediate-feature losses, where exposed")
    use_ema: bool = Field(True, description="load the teacher's EMA weights")


def load_teacher(recipe: Any, cfg: DistillConfig, name: str = "model") -> nn.Module:
    """Build the teacher from its own saved ``config.yaml`` and load its weights; frozen, eval mode."""
    from trainhub import checkpoint as ckpt
    from trainhub.plugins import get_plugins
    from trainhub.run import resolve_config

    if not cfg.teacher:
        raise UserError("distill.teacher is not set: give the teacher's checkpoint or run directory")
    path = ckpt.resolve_checkpoint(cfg.teacher)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"distill.teacher: {cfg_file} not found (the teacher's resolved config)")
    tconf = resolve_config(recipe, get_plugins(), Path(cfg_file), cfg.teacher_overrides)
    teacher = recipe.build_models(tconf)[name]
    ckpt.load_models(path, {name: teacher}, ema=cfg.use_ema)
    return teacher.eval().requires_grad_(False)
