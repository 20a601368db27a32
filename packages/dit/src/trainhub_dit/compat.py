"""Checkpoints of the official DiT code (facebookresearch/DiT).

Two formats exist: the released weights (``DiT-XL-2-256x256.pt``: a plain state dict, EMA weights) and the
training checkpoints of its ``train.py`` (``0050000.pt``: ``{"model", "ema", "opt", "args"}``, where ``args`` is an
``argparse.Namespace``). Both are read with ``torch.load(weights_only=True)``; the Namespace is allow-listed with
``torch.serialization.safe_globals`` and nothing else is unpickled.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from trainhub import UserError

# rows of the class table: the classes, then the null class of guidance where the model trains with label dropout
# (always, in the official code: its train.py keeps class_dropout_prob=0.1, the released weights have 1000 + 1 rows)
CLASS_TABLE = "y_embedder.embedding_table.weight"


@dataclass
class OfficialCheckpoint:
    model: dict[str, torch.Tensor]
    ema: Optional[dict[str, torch.Tensor]] = None
    opt: Optional[dict[str, Any]] = None
    args: Optional[argparse.Namespace] = None


def _strip(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DDP / torch.compile prefixes."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read(path: str | Path) -> OfficialCheckpoint:
    """Read an official checkpoint (plain state dict or training checkpoint) without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any unpickling refusal is reported the same way)
        raise UserError(f"{p}: cannot be read as a DiT checkpoint with weights_only=True ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return OfficialCheckpoint(_strip(obj["model"]), _strip(obj["ema"]) if isinstance(obj.get("ema"), dict) else None,
                                  obj.get("opt"), obj.get("args"))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return OfficialCheckpoint(_strip(obj))
    raise UserError(f"{p}: neither a DiT state dict nor a training checkpoint with a 'model' entry")


def _null_row_only(ckpt: tuple[int, ...], ours: tuple[int, ...], num_classes: int) -> bool:
    """The checkpoint's class table holds our ``num_classes`` classes plus the null row, which ours lacks (a model
    without label dropout, ``model.class_dropout_prob=0``)."""
    return ckpt[1:] == ours[1:] and (ckpt[0], ours[0]) == (num_classes + 1, num_classes)


def _matching(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], source: str,
              num_classes: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The entries of ``sd`` that load into a DiT of ``num_classes`` classes whose state dict is ``own``, and notes on
    what was left out.

    Every key must exist with the same shape, except the class table: where only the checkpoint's null row is
    extra, its class rows load; with another class count (a fine-tune on other classes) the table is left out.
    Either is noted.
    """
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise UserError(f"{source}: keys do not match this DiT: missing {missing[:4]}, unexpected {unexpected[:4]} "
                        "(is model.name the architecture the checkpoint was trained with?)")
    notes, load = [], {}
    for k, v in sd.items():
        if v.shape == own[k].shape:
            load[k] = v
        elif k == CLASS_TABLE and _null_row_only(tuple(v.shape), tuple(own[k].shape), num_classes):
            load[k] = v[:num_classes]
            notes.append(f"{source}: {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}: the {num_classes} "
                         "class rows loaded, the null class row dropped (model.class_dropout_prob=0 trains no guidance)")
        elif k == CLASS_TABLE:
            notes.append(f"{source}: {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}: class count differs, "
                         "kept freshly initialised")
        else:
            raise UserError(f"{source}: {k} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} here "
                            "(check model.name, model.input_size / data.image_size, model.in_channels, model.learn_sigma)")
    return load, notes


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Load an official state dict into our :class:`~trainhub_dit.model.DiT`; returns notes on what was kept.

    Every key must exist with the same shape, except the class table: a model without the null row takes the
    class rows of a checkpoint with it; with another class count (a fine-tune on other classes) ours is kept. Either
    is noted.
    """
    load, notes = _matching(model.state_dict(), sd, source, model.y_embedder.num_classes)
    model.load_state_dict(load, strict=False)
    return notes


def ema_state(model: nn.Module, ema: dict[str, torch.Tensor], source: str = "checkpoint ema") -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official ``ema`` (a full state dict of the EMA model) as the state of our EMA of ``model``, checked as
    strictly as the weights; returns it with notes.

    Where the class count differs, the EMA's class table is ``model``'s (the fresh one :func:`load_weights` kept):
    the table starts its average from the weights, as a restarted EMA would, and every other tensor keeps its
    history (where only the checkpoint's null row is extra, the EMA's class rows load). ``model`` must hold the loaded
    weights already.
    """
    own = model.state_dict()
    load, notes = _matching(own, ema, source, model.y_embedder.num_classes)
    return {k: load[k] if k in load else own[k].detach().clone() for k in own}, notes


def load_optimizer(opt: torch.optim.Optimizer, model: nn.Module, official: dict[str, Any], order: list[str]) -> int:
    """Move Adam moments from the official optimizer state onto ours; returns the step it had reached.

    ``order`` names the official parameters in optimizer order (its state dict's keys: ``pos_embed`` first, a frozen
    parameter without state there, a buffer here). Our hyperparameters (lr, betas, fused) stay as configured. The
    moments of a class table of another size are left out (the table is fresh, see :func:`load_weights`), except that
    those of a null row ours lacks are cut off the class rows' moments; any other moment whose shape differs from its
    parameter's means the order does not match and is refused.
    """
    ours = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    named = {n: p for n, p in model.named_parameters() if id(p) in ours}
    state: dict[int, Any] = {}
    for i, name in enumerate(order):
        if i not in official.get("state", {}) or name not in named:
            continue
        moments = official["state"][i]
        own = tuple(named[name].shape)
        shape = tuple(moments["exp_avg"].shape) if "exp_avg" in moments else own
        if shape != own:
            if name != CLASS_TABLE:
                raise UserError(f"optimizer state {i} ({name}) has Adam moments of shape {shape} but the parameter is "
                                f"{own}: the checkpoint's 'opt' does not follow its 'model' order")
            if not _null_row_only(shape, own, model.y_embedder.num_classes):
                continue
            moments = {k: v[: own[0]] if k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") else v for k, v in moments.items()}
        state[ours[id(named[name])]] = moments
    if not state:
        return 0
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    return int(float(next(iter(state.values()))["step"]))


def step_from_name(path: str | Path) -> Optional[int]:
    """``.../0050000.pt`` -> 50000 (the reference names training checkpoints by step)."""
    m = re.fullmatch(r"(\d+)\.pt", Path(path).name)
    return int(m.group(1)) if m else None
