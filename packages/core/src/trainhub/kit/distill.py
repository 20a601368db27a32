"""Knowledge distillation support: load a trained checkpoint of the same recipe as a frozen teacher.

A recipe adds a ``distill: DistillConfig`` section, returns the teacher from ``build_models`` under
the name ``"teacher"`` (``load_teacher``), lists it in ``frozen_models`` (eval mode, no gradients,
never saved: student checkpoints are ordinary checkpoints) and adds ``output_weight`` x the
student-teacher output loss (and feature losses where it exposes features) in ``train_step``, with
the teacher's forward under ``torch.no_grad()`` and the trainer's autocast (the same precision).

With ``init_from_teacher`` a recipe starts the student from the teacher's weights (``init_from_teacher``
below): every student tensor is copied from a teacher tensor of the same shape; where the student has
fewer layers it takes a spread subset of the teacher's (``spread_layers``: every other layer of a
teacher twice as deep, as DistilBERT). The copy happens in ``build_models``, before the trainer makes
the EMA and the optimizer; on resume the checkpoint then replaces it, so resume stays exact.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from trainhub.config import DistillConfig
from trainhub.errors import UserError


def load_teacher(recipe: Any, cfg: DistillConfig, name: str = "model") -> nn.Module:
    """Build the teacher from its own saved ``config.yaml`` and load its weights; frozen, eval mode. The teacher is
    built by a copy of ``recipe``, so whatever ``build_models`` keeps on the recipe (its loss, say) stays the student's."""
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config
    from trainhub.training import checkpoint as ckpt

    if not cfg.teacher:
        raise UserError("distill.teacher is not set: give the teacher's checkpoint or run directory")
    path = ckpt.resolve_checkpoint(cfg.teacher, default="best")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"distill.teacher: {cfg_file} not found (the teacher's resolved config)")
    tconf = resolve_config(recipe, get_plugins(), Path(cfg_file), cfg.teacher_overrides)
    teacher = copy.deepcopy(recipe).build_models(tconf)[name]
    ckpt.load_models(path, {name: teacher}, ema=cfg.use_ema)
    return teacher.eval().requires_grad_(False)


def spread_layers(teacher_depth: int, student_depth: int, keep_parity: bool = False) -> list[int]:
    """Which of ``teacher_depth`` layers a student of ``student_depth`` layers takes: evenly spread from
    the first (``j * teacher_depth // student_depth``: every other layer of a teacher twice as deep).
    ``keep_parity``: a pick whose index parity differs from the student layer's moves one layer on, so
    layers that alternate (e.g. shifted / unshifted windows) keep their kind; picks stay increasing."""
    if student_depth > teacher_depth:
        raise UserError(f"a student of {student_depth} layers cannot take its layers from a teacher of {teacher_depth}")
    picks = [j * teacher_depth // student_depth for j in range(student_depth)]
    if keep_parity:
        picks = [p + 1 if (p - j) % 2 else p for j, p in enumerate(picks)]
    return picks


def init_from_teacher(student: nn.Module, teacher: nn.Module, key_map: Callable[[str], Optional[str]] = lambda k: k,
                      option: str = "distill.init_from_teacher", hint: str = "") -> dict[str, str]:
    """Copy the teacher's tensors into ``student``: student key -> teacher key ``key_map(key)`` (None: no
    counterpart). Every student parameter and buffer needs a teacher tensor of the same shape, otherwise
    nothing is copied and one ``UserError`` line names the keys. Returns {student key: teacher key}."""
    src = teacher.state_dict()
    dst = student.state_dict()
    mapping: dict[str, str] = {}
    bad: list[str] = []
    for key, t in dst.items():
        tkey = key_map(key)
        if tkey is None or tkey not in src:
            bad.append(f"{key} (no teacher tensor{'' if tkey is None else ' ' + tkey})")
        elif src[tkey].shape != t.shape:
            bad.append(f"{key} (student {list(t.shape)}, teacher {tkey} {list(src[tkey].shape)})")
        else:
            mapping[key] = tkey
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise UserError(f"{option}: {len(bad)} of the student's {len(dst)} tensors have no teacher tensor of the same shape: "
                        f"{shown}{'; ' + hint if hint else ''}")
    with torch.no_grad():
        for key, tkey in mapping.items():
            dst[key].copy_(src[tkey])
    return mapping
