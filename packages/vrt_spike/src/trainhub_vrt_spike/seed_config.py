"""Config files in the seed project's layout (uppercase MODEL / DATA / DATALOADER / TRAIN sections) and
``base:`` inheritance, mapped onto the vrt_spike schema by :meth:`VRTSpikeRecipe.map_config`.

    MODEL:      {VRT_DEPTHS: [8, 7, 8, 8, 4, 4, 4, 6], WINDOW_SIZE: 7, FUSE: {HEADS: 4, CHUNK_SIZE: 80}}
    DATA:       {USE_RAM_CACHE: true, CACHE_SIZE_GB: 50.0}
    DATALOADER: {TOTAL_WORKERS: auto, TRAIN_PREFETCH_FACTOR: 4}
    TRAIN:      {AMP_ENABLED: true, BATCH_SIZE: 1, GRADIENT_ACCUMULATION_STEPS: 4}

Lowercase sections in the same file are read as our schema and win over mapped keys. Keys we know but
that have no counterpart here (:data:`IGNORED`) are dropped with one warning; any other uppercase key
is an error that lists them all. A top-level ``base: NAME`` (a shipped preset such as ``baseline``, or
a path relative to the file) is loaded first and the file is merged on top of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

from trainhub import UserError
from trainhub.config import deep_merge, load_file, set_path

CONFIG_DIR = Path(__file__).parent / "configs"


def _precision(amp: Any) -> str:
    if not isinstance(amp, bool):
        raise UserError(f"TRAIN.AMP_ENABLED must be true or false, got {amp!r}")
    return "auto" if amp else "fp32"  # auto = bf16 where the GPU has it, else fp16; fp32 on CPU


def _same(v: Any) -> Any:
    return v


_CHUNK = {"HEADS": "heads", "ADAPTIVE_CHUNK": "adaptive_chunk", "MAX_BATCH_TOKENS": "max_batch_tokens", "CHUNK_SIZE": "chunk_size",
          "CHUNK_SHAPE": "chunk_shape"}

#: seed key (dotted, uppercase) -> (our dotted key, value conversion)
KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "SEED": ("train.seed", _same),
    "MODEL.VRT_DEPTHS": ("model.depths", _same),
    "MODEL.DEPTHS": ("model.depths", _same),
    "MODEL.EMBED_DIMS": ("model.embed_dims", _same),
    "MODEL.NUM_HEADS": ("model.num_heads", _same),
    "MODEL.WINDOW_SIZE": ("model.window_size", _same),
    "MODEL.MLP_RATIO": ("model.mlp_ratio", _same),
    "MODEL.DROP_PATH_RATE": ("model.drop_path_rate", _same),
    "MODEL.USE_CHECKPOINT_ATTN": ("model.use_checkpoint_attn", _same),
    "MODEL.USE_CHECKPOINT_FFN": ("model.use_checkpoint_ffn", _same),
    "MODEL.PROFILE": ("model.profile", _same),
    **{f"MODEL.FUSE.{k}": (f"model.fuse.{v}", _same) for k, v in _CHUNK.items()},
    **{f"MODEL.SPIKE_TSA.{k}": (f"model.spike_tsa.{v}", _same) for k, v in _CHUNK.items()},
    "DATA.ROOT": ("data.root", _same),
    "DATA.TRAIN_SPLIT": ("data.train_split", _same),
    "DATA.VAL_SPLIT": ("data.val_split", _same),
    "DATA.CROP_SIZE": ("data.train_crop_size", _same),
    "DATA.TRAIN_CROP_SIZE": ("data.train_crop_size", _same),
    "DATA.CLIP_LEN": ("data.seq_len", _same),
    "DATA.K": ("data.num_bins", _same),
    "DATA.NUM_VOXEL_BINS": ("data.num_bins", _same),
    "DATA.USE_PRECOMPUTED_VOXELS": ("data.use_precomputed_voxels", _same),
    "DATA.SPIKE_DIR": ("data.spike_dir", _same),
    "DATA.VOXEL_CACHE_DIRNAME": ("data.voxel_dir", _same),
    "DATA.USE_RAM_CACHE": ("data.use_ram_cache", _same),
    "DATA.CACHE_SIZE_GB": ("data.cache_size_gb", _same),
    "DATALOADER.TOTAL_WORKERS": ("data.total_workers", _same),
    "DATALOADER.TRAIN_PREFETCH_FACTOR": ("loader.prefetch_factor", _same),
    "DATALOADER.PIN_MEMORY": ("loader.pin_memory", _same),
    "DATALOADER.PERSISTENT_WORKERS": ("loader.persistent_workers", _same),
    "DATALOADER.DROP_LAST": ("loader.drop_last", _same),
    "TRAIN.EPOCHS": ("train.epochs", _same),
    "TRAIN.MAX_STEPS": ("train.max_steps", _same),
    "TRAIN.BATCH_SIZE": ("train.batch_size", _same),
    "TRAIN.GRADIENT_ACCUMULATION_STEPS": ("train.gradient_accumulation_steps", _same),
    "TRAIN.MAX_GRAD_NORM": ("train.max_grad_norm", _same),
    "TRAIN.LR": ("train.lr", _same),
    "TRAIN.OPTIM.LR": ("train.lr", _same),
    "TRAIN.OPTIM.WEIGHT_DECAY": ("train.weight_decay", _same),
    "TRAIN.AMP_ENABLED": ("train.precision", _precision),
    "TRAIN.COMPILE_MODEL": ("train.compile", _same),
    "TRAIN.LOG_INTERVAL": ("train.log_every", _same),
    "TRAIN.MEMORY_LOG_INTERVAL": ("train.memory_log_every", _same),
}

#: seed keys with no counterpart in trainhub (dropped with a warning), and why
IGNORED: dict[str, str] = {
    "TRAIN.AMP_OPT_LEVEL": "apex opt levels do not exist here; train.precision picks bf16/fp16",
    "TRAIN.VAL_BATCH_SIZE": "evaluation uses train.batch_size",
    "DATALOADER.VAL_PREFETCH_FACTOR": "one loader.prefetch_factor serves both loaders",
    "DATALOADER.TRAIN_WORKERS": "workers come from data.total_workers / loader.num_workers",
    "DATALOADER.VAL_WORKERS": "workers come from data.total_workers / loader.num_workers",
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in KEYS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_seed_key(key: str) -> bool:
    return key.isupper()


def map_seed(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The uppercase sections of ``raw`` as a nested dict of our keys (lowercase sections are left out)."""
    flat = _flatten({k: v for k, v in raw.items() if is_seed_key(k)})
    out: dict[str, Any] = {}
    unknown = sorted(k for k in flat if k not in KEYS and k not in IGNORED)
    if unknown:
        raise UserError(f"{path}: unknown seed-style config keys {', '.join(unknown)}; known: {', '.join(sorted(KEYS))} "
                        f"(ignored with a warning: {', '.join(sorted(IGNORED))})")
    targets: dict[str, str] = {}
    for key, value in flat.items():
        if key in IGNORED:
            continue
        target, convert = KEYS[key]
        if target in targets and out_value(out, target) != convert(value):
            raise UserError(f"{path}: {targets[target]} and {key} both set {target} to different values")
        targets[target] = key
        set_path(out, target, convert(value))
    dropped = sorted(k for k in flat if k in IGNORED)
    if dropped:
        warnings.warn(f"{path}: seed-style keys without a trainhub counterpart were ignored: "
                      + "; ".join(f"{k} ({IGNORED[k]})" for k in dropped), UserWarning, stacklevel=2)
    return out


def out_value(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def resolve_base(name: str, path: Path) -> Path:
    """``base:`` -> a file: a shipped preset name (``baseline``) or a path relative to the including file."""
    shipped = CONFIG_DIR / f"{name}.yaml"
    if shipped.is_file() and "/" not in name and not name.endswith((".yaml", ".yml", ".json")):
        return shipped
    p = (path.parent / name) if not Path(name).is_absolute() else Path(name)
    if not p.is_file():
        raise UserError(f"{path}: base {name!r} is neither a shipped preset ({', '.join(presets())}) nor a file")
    return p


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def map_config(raw: dict[str, Any], path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Our layout from ``raw``: ``base`` first, then the mapped seed sections, then lowercase sections."""
    raw = dict(raw)
    base = raw.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise UserError(f"{path}: base must be a preset name or a file path, got {base!r}")
        bpath = resolve_base(base, path).resolve()
        if bpath in _seen:
            raise UserError(f"{path}: base {base!r} includes itself")
        merged = map_config(load_file(bpath), bpath, _seen + (bpath,))
    merged = deep_merge(merged, map_seed(raw, path))
    return deep_merge(merged, {k: v for k, v in raw.items() if not is_seed_key(k)})
