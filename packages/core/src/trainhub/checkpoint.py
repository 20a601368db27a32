"""Checkpoint directories: atomic writes, safetensors weights, exact-resume state, no pickle.

Layout of ``checkpoint-<step>/``::

    <model>.safetensors          one per model ("model.safetensors" for single-model recipes)
    ema.safetensors              EMA of "model" (``ema_<name>.safetensors`` for other models)
    optimizer.pt                 optimizer, scheduler and grad-scaler states (tensors and numbers only:
                                 loaded with ``torch.load(weights_only=True)``)
    rng_state_rank<R>.safetensors  per-rank torch/CUDA/numpy/python RNG states
    training_state.json          step, epoch, position in the epoch, counters, best metric

Everything is written into ``checkpoint-<step>.tmp/`` and renamed when complete, so a crash during
a save leaves the previous checkpoints untouched and never a half-written directory under the final name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from trainhub.errors import UserError

STATE_FILE = "training_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(?:epoch-)?\d+$")


def model_file(name: str) -> str:
    return f"{name}.safetensors"


def ema_file(name: str) -> str:
    return "ema.safetensors" if name == "model" else f"ema_{name}.safetensors"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- RNG state -----------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {"torch_cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, pstate, gauss = random.getstate()
    tensors["python_state"] = torch.tensor(pstate, dtype=torch.int64)
    meta = {
        "numpy_pos": str(pos),
        "numpy_has_gauss": str(has_gauss),
        "numpy_cached_gaussian": repr(float(cached)),
        "python_version": str(version),
        "python_gauss": repr(gauss),
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    np.random.set_state(
        (
            "MT19937",
            tensors["numpy_keys"].numpy().astype(np.uint32),
            int(meta["numpy_pos"]),
            int(meta["numpy_has_gauss"]),
            float(meta["numpy_cached_gaussian"]),
        )
    )
    gauss = None if meta["python_gauss"] == "None" else float(meta["python_gauss"])
    random.setstate((int(meta["python_version"]), tuple(int(v) for v in tensors["python_state"].tolist()), gauss))


# ---- saving --------------------------------------------------------------------------------------

def save_rng(directory: Path, rank: int) -> None:
    tensors, meta = rng_state()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / f"rng_state_rank{rank}.safetensors"), metadata=meta)


def save_main(
    directory: Path,
    models: dict[str, nn.Module],
    emas: dict[str, Any],
    optim_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Write the rank-0 part of a checkpoint into ``directory`` (the temporary one)."""
    for name, m in models.items():
        save_model(m, str(directory / model_file(name)))
    for name, ema in emas.items():
        sd = {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}
        save_file(sd, str(directory / ema_file(name)))
    torch.save(optim_state, directory / "optimizer.pt")
    write_json_atomic(directory / STATE_FILE, state)  # last: marks the contents complete


def tmp_dir(root: Path, name: str) -> Path:
    return root / f"{name}.tmp"


def begin(root: Path, name: str) -> Path:
    """Create an empty temporary directory for checkpoint ``name`` (rank 0, before the others write)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir(root, name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(root: Path, name: str) -> Path:
    """Atomically move the finished temporary directory to its final name."""
    tmp, final = tmp_dir(root, name), root / name
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = root / f"{name}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    return final


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.is_dir() and _CKPT_RE.match(d.name) and (d / STATE_FILE).is_file():
            try:
                step = int(json.loads((d / STATE_FILE).read_text())["step"])
            except (ValueError, KeyError, json.JSONDecodeError):
                continue
            out.append((step, d))
    return sorted(out, key=lambda t: (t[0], t[1].name))


def latest(root: Path) -> Optional[Path]:
    cks = list_checkpoints(root)
    return cks[-1][1] if cks else None


def prune(root: Path, keep_last: int, protect: set[str]) -> None:
    """Delete step checkpoints beyond the newest ``keep_last`` (never the names in ``protect``)."""
    steps = [(s, p) for s, p in list_checkpoints(root) if not p.name.startswith("checkpoint-epoch-")]
    for _, p in steps[: max(0, len(steps) - keep_last)]:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
    for leftover in root.glob("*.tmp"):  # from a crash during an earlier save
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


# ---- loading -------------------------------------------------------------------------------------

def read_state(directory: Path) -> dict[str, Any]:
    f = directory / STATE_FILE
    if not f.is_file():
        raise UserError(f"not a complete trainhub checkpoint (no {STATE_FILE}): {directory}")
    return json.loads(f.read_text())


def load_models(directory: Path, models: dict[str, nn.Module], ema: bool = False, strict: bool = True) -> list[str]:
    """Load weights (EMA ones when ``ema`` and present) into ``models``; returns the files used."""
    used = []
    for name, m in models.items():
        if not (directory / model_file(name)).is_file() and (directory / "fsdp_layout.json").is_file():
            from trainhub.fsdp import consolidate

            has_ema = (directory / ema_file(name).replace(".safetensors", "_shard_rank0.safetensors")).is_file()
            sd = consolidate(directory, name, ema=ema and has_ema)
            missing, unexpected = m.load_state_dict(sd, strict=False)
            if strict and (unexpected or [k for k in missing if k in dict(m.named_parameters())]):
                raise UserError(f"{directory}: sharded weights do not match model {name!r}")
            used.append(f"{'ema ' if ema and has_ema else ''}{name} shards (consolidated)")
            continue
        f = directory / (ema_file(name) if ema else model_file(name))
        if ema and not f.is_file():
            f = directory / model_file(name)
        if not f.is_file():
            raise UserError(f"checkpoint {directory} has no weights for model {name!r} ({f.name})")
        if f.name.startswith("ema"):
            sd = load_file(str(f))
            missing, unexpected = m.load_state_dict(sd, strict=False)
            missing = [k for k in missing if k in dict(m.named_parameters())]
            if strict and (missing or unexpected):
                raise UserError(f"{f}: weights do not match model {name!r}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        else:
            load_model(m, str(f), strict=strict)
        used.append(f.name)
    return used


def load_optim_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)


def load_rng(directory: Path, rank: int) -> bool:
    f = directory / f"rng_state_rank{rank}.safetensors"
    if not f.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    set_rng_state(tensors, meta)
    return True


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir / checkpoints dir (-> its latest checkpoint)."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    for root in (p / "checkpoints", p):
        found = latest(root)
        if found is not None:
            return found
    raise UserError(f"no complete checkpoint found at {p}")
