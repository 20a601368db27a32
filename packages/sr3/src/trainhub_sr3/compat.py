"""Compatibility with the public SR3 implementation (Janspiry/Image-Super-Resolution-via-Iterative-Refinement):
its ``*_gen.pth`` weights, its ``*_opt.pth`` training state and its JSON config layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from trainhub import UserError

from trainhub_sr3.diffusion import Schedule

PREFIX = "denoise_fn."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def from_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their diffusion-module state dict (``denoise_fn.*`` + schedule buffers; ``module.`` from DataParallel)
    -> our UNet's state dict. The schedule comes from the config instead."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k in SCHEDULE_BUFFERS:
            continue
        out[k.removeprefix(PREFIX)] = v
    return out


def to_reference(unet_state: dict[str, torch.Tensor], schedule: Optional[Schedule] = None) -> dict[str, torch.Tensor]:
    """Our UNet state dict -> their ``_gen.pth`` layout (with the schedule buffers when given)."""
    out = {PREFIX + k: v for k, v in unet_state.items()}
    if schedule is not None:
        out.update(schedule.buffers())
    return out


def load_gen(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a reference ``*_gen.pth`` (tensors only: ``weights_only=True``) into our naming."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a tensor-only checkpoint ({type(exc).__name__}); refusing to unpickle it") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict, got {type(state).__name__}")
    return from_reference(state)


def resolve_prefix(resume: str) -> Optional[Path]:
    """``.../I640000_E37`` (or a path ending in ``_gen.pth``) -> the prefix, when ``<prefix>_gen.pth`` exists."""
    p = Path(resume.removesuffix("_gen.pth").removesuffix("_opt.pth"))
    return p if Path(f"{p}_gen.pth").is_file() else None


def load_resume(prefix: Path, unet: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> tuple[int, int]:
    """Load ``<prefix>_gen.pth`` into ``unet`` and, when present, ``<prefix>_opt.pth`` into ``optimizer``.

    Returns (iteration, epoch) from the opt file (or parsed from ``I<iter>_E<epoch>``)."""
    missing, unexpected = unet.load_state_dict(load_gen(f"{prefix}_gen.pth"), strict=False)
    if missing or unexpected:
        raise UserError(f"{prefix}_gen.pth does not match model.unet: missing {missing[:3]}, unexpected {unexpected[:3]} "
                        "(set model.unet.* to the config it was trained with)")
    it = ep = 0
    name = prefix.name
    if name.startswith("I") and "_E" in name:
        try:
            it, ep = int(name[1 : name.index("_E")]), int(name[name.index("_E") + 2 :])
        except ValueError:
            pass
    opt_file = Path(f"{prefix}_opt.pth")
    if opt_file.is_file():
        state = torch.load(opt_file, map_location="cpu", weights_only=True)
        it, ep = int(state.get("iter", it)), int(state.get("epoch", ep))
        if optimizer is not None and state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
    return it, ep


# ---- config JSON ---------------------------------------------------------------------------------

def _pop(d: dict, key: str, default: Any = None) -> Any:
    return d.pop(key, default) if isinstance(d, dict) else default


def map_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Their config layout -> ours. Keys with no meaning here are listed in one error; keys that only
    concern their runner (paths, gpu ids, phase, print frequency) are accepted and ignored."""
    if "datasets" not in raw and "model" in raw and "which_model_G" not in raw.get("model", {}):
        return raw  # already our layout
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    out: dict[str, Any] = {"model": {}, "data": {}, "train": {}, "loggers": {}}
    unknown: list[str] = []
    ignored = {"phase", "gpu_ids", "path", "distributed"}
    for k in list(raw):
        if k in ignored:
            raw.pop(k)
    if "name" in raw:
        out["run_name"] = str(raw.pop("name"))

    ds = raw.pop("datasets", {}) or {}
    tr = dict(ds.pop("train", {}) or {})
    va = dict(ds.pop("val", {}) or {})
    unknown += [f"datasets.{k}" for k in ds]
    data = out["data"]
    if tr:
        _pop(tr, "name")
        mode = _pop(tr, "mode", "LRHR")
        root = _pop(tr, "dataroot")
        dtype = _pop(tr, "datatype", "img")
        if dtype != "img":
            unknown.append(f"datasets.train.datatype={dtype} (only 'img' folders are read; convert LMDB with their prepare script)")
        if root:
            data["source"] = "paired" if mode == "LRHR" else "folder"
            data["root"] = root
        for ours, theirs in (("l_resolution", "l_resolution"), ("r_resolution", "r_resolution")):
            if theirs in tr:
                data[ours] = int(tr.pop(theirs))
        if "batch_size" in tr:
            out["train"]["batch_size"] = int(tr.pop("batch_size"))
        if "num_workers" in tr:
            out.setdefault("loader", {})["num_workers"] = int(tr.pop("num_workers"))
        if "use_shuffle" in tr:
            out.setdefault("loader", {})["shuffle"] = bool(tr.pop("use_shuffle"))
        if "data_len" in tr:
            data["train_len"] = int(tr.pop("data_len"))
        unknown += [f"datasets.train.{k}" for k in tr]
    if va:
        _pop(va, "name")
        _pop(va, "mode")
        _pop(va, "datatype")
        _pop(va, "l_resolution")
        _pop(va, "r_resolution")
        if "dataroot" in va:
            data["val_root"] = va.pop("dataroot")
        if "data_len" in va:
            data["val_len"] = int(va.pop("data_len"))
        unknown += [f"datasets.val.{k}" for k in va]

    mo = raw.pop("model", {}) or {}
    model = out["model"]
    model.update(residual=False, prediction="eps", sampler="ancestral")  # the reference's objective (its weights need it)
    which = _pop(mo, "which_model_G", "sr3")
    if which != "sr3":
        unknown.append(f"model.which_model_G={which} (only sr3)")
    _pop(mo, "finetune_norm")
    unet = _pop(mo, "unet", {}) or {}
    model["unet"] = {"noise_encoding": "sqrt_gamma"}  # the reference embeds sqrt(gamma) itself
    for k in ("in_channel", "out_channel", "inner_channel", "norm_groups", "channel_multiplier", "attn_res", "res_blocks", "dropout"):
        if k in unet:
            model["unet"][k] = unet.pop(k)
    unknown += [f"model.unet.{k}" for k in unet]
    bs = _pop(mo, "beta_schedule", {}) or {}
    for phase in ("train", "val"):
        if phase in bs:
            s = dict(bs.pop(phase))
            model.setdefault("beta_schedule", {})[phase] = {k: s.pop(k) for k in ("schedule", "n_timestep", "linear_start", "linear_end") if k in s}
            unknown += [f"model.beta_schedule.{phase}.{k}" for k in s]
    unknown += [f"model.beta_schedule.{k}" for k in bs]
    diff = _pop(mo, "diffusion", {}) or {}
    if "image_size" in diff:
        model["unet"]["image_size"] = int(diff.pop("image_size"))
    _pop(diff, "channels")
    if diff.pop("conditional", True) is not True:
        unknown.append("model.diffusion.conditional=false (unconditional generation is not this recipe)")
    unknown += [f"model.diffusion.{k}" for k in diff]
    unknown += [f"model.{k}" for k in mo]

    tn = raw.pop("train", {}) or {}
    train = out["train"]
    if "n_iter" in tn:
        train["max_steps"] = int(float(tn.pop("n_iter")))
    if "val_freq" in tn:
        train["eval_every"] = int(float(tn.pop("val_freq")))
    if "save_checkpoint_freq" in tn:
        train["checkpoint_every"] = int(float(tn.pop("save_checkpoint_freq")))
    if "print_freq" in tn:
        train["log_every"] = int(float(tn.pop("print_freq")))
    opt = _pop(tn, "optimizer", {}) or {}
    if "lr" in opt:
        train["lr"] = float(opt.pop("lr"))
    kind = str(opt.pop("type", "adam")).lower()
    if kind not in ("adam", "adamw"):
        unknown.append(f"train.optimizer.type={kind}")
    else:
        train["optimizer"] = kind
    unknown += [f"train.optimizer.{k}" for k in opt]
    ema = _pop(tn, "ema_scheduler", None)
    if isinstance(ema, dict):
        train["ema"] = {k: v for k, v in (("start_step", ema.get("step_start_ema")), ("every", ema.get("update_ema_every")),
                                           ("decay", ema.get("ema_decay"))) if v is not None}
        train["ema"] = {k: (int(float(v)) if k != "decay" else float(v)) for k, v in train["ema"].items()}
    unknown += [f"train.{k}" for k in tn]

    wb = raw.pop("wandb", None)
    if isinstance(wb, dict) and wb.get("project"):
        out["loggers"]["wandb"] = {"project": wb["project"]}
    pl = raw.pop("param_logging", None)
    if isinstance(pl, dict):
        pl = dict(pl)
        mapped = {}
        for ours, theirs in (("enabled", "enabled"), ("save_param_freq", "save_param_freq"), ("save_weights", "save_weights"),
                             ("save_gradients", "save_gradients"), ("save_activations", "save_activations"),
                             ("layers_to_monitor", "layers_to_monitor")):
            if theirs in pl:
                mapped[ours] = pl.pop(theirs)
        out["loggers"]["param_outputs"] = mapped
        unknown += [f"param_logging.{k}" for k in pl]
    unknown += list(raw)
    if unknown:
        raise UserError(f"{path}: cannot map these keys of the reference SR3 config: {', '.join(unknown)}")
    if not out["loggers"]:
        out.pop("loggers")
    return out
