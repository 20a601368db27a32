"""Compatibility with the public SR3 implementation (Janspiry/Image-Super-Resolution-via-Iterative-Refinement):
its ``*_gen.pth`` weights (both of its networks), its ``*_opt.pth`` training state and its JSON configs.

Reference weights carry no config. What they need that their shapes do not show is checked against the config
they are loaded with (:func:`check_reference`): the noise-level encoding, the prediction target and the
residual flag are fixed by the reference's code; ``norm_groups`` (GroupNorm weights have the same shape for
every group count) comes from the reference JSON the config was read from, or is the reference's default 32.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainhub import UserError
from trainhub_sr3.diffusion import SCHEDULES, Schedule, make_betas

PREFIX = "denoise_fn."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
REFERENCE_NORM_GROUPS = 32  # define_G's value when a config has no (or a null) norm_groups
# the settings reference weights need whatever their config: (key path, value)
REFERENCE_OBJECTIVE = (("model.unet.noise_encoding", "sqrt_gamma"), ("model.prediction", "eps"), ("model.residual", False))
# ddpm_modules/unet.py names -> ours (see model.py: its per-block Swish is the extra Swish ending our embedding MLP)
_DDPM_RENAMES = ((re.compile(r"^time_mlp\."), "noise_level_mlp."),
                 (re.compile(r"\.res_block\.mlp\.1\."), ".res_block.noise_func.noise_func.0."))
_DDPM_INV_FREQ = "time_mlp.0.inv_freq"


@dataclass
class ReferenceWeights:
    """A reference ``_gen.pth`` in our naming: the UNet state, which network it is, and the schedule it was saved with."""

    path: Path
    state: dict[str, torch.Tensor]
    network: str
    betas: Optional[np.ndarray]

    @property
    def in_channel(self) -> int:
        return int(self.state["downs.0.weight"].shape[1])

    @property
    def out_channel(self) -> int:
        return int(self.state["final_conv.block.3.weight"].shape[0])


def from_reference(state: dict[str, torch.Tensor], path: Path = Path("weights")) -> ReferenceWeights:
    """Their diffusion-module state dict (``denoise_fn.*`` + schedule buffers; ``module.`` from DataParallel;
    either network) -> our UNet's state dict."""
    out, buffers = {}, {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k in SCHEDULE_BUFFERS:
            buffers[k] = v
            continue
        out[k.removeprefix(PREFIX)] = v
    network = "ddpm" if any(k.startswith("time_mlp.") for k in out) else "sr3"
    if network == "ddpm":
        inv = out.pop(_DDPM_INV_FREQ, None)
        dim = int(out["time_mlp.1.weight"].shape[1]) if "time_mlp.1.weight" in out else 0
        want = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000) / dim))
        if inv is not None and (inv.shape != want.shape or not torch.allclose(inv.float(), want, rtol=1e-6, atol=0)):
            raise UserError(f"{path}: {PREFIX}{_DDPM_INV_FREQ} is not the ddpm network's timestep frequencies; these weights "
                            "would compute another embedding")
        renamed = {}
        for k, v in out.items():
            for pattern, new in _DDPM_RENAMES:
                k = pattern.sub(new, k)
            renamed[k] = v
        out = renamed
    betas = buffers["betas"].double().numpy() if "betas" in buffers else None
    return ReferenceWeights(path, out, network, betas)


def to_reference(unet_state: dict[str, torch.Tensor], schedule: Optional[Schedule] = None, network: str = "sr3") -> dict[str, torch.Tensor]:
    """Our UNet state dict -> their ``_gen.pth`` layout (with the schedule buffers when given)."""
    state = dict(unet_state)
    if network == "ddpm":
        state = {}
        for k, v in unet_state.items():
            k = k.replace(".res_block.noise_func.noise_func.0.", ".res_block.mlp.1.")
            state[re.sub(r"^noise_level_mlp\.", "time_mlp.", k)] = v
        dim = int(state["time_mlp.1.weight"].shape[1])
        state[_DDPM_INV_FREQ] = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000) / dim))
    out = {PREFIX + k: v for k, v in state.items()}
    if schedule is not None:
        out.update(schedule.buffers())
    return out


def read_gen(path: str | Path) -> ReferenceWeights:
    """Read a reference ``*_gen.pth`` (tensors only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a tensor-only checkpoint ({type(exc).__name__}); refusing to unpickle it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    weights = from_reference(state, path)
    missing = [k for k in ("downs.0.weight", "final_conv.block.3.weight") if k not in weights.state]
    if missing:
        raise UserError(f"{path}: not SR3 UNet weights (no {PREFIX}{missing[0]})")
    return weights


def load_gen(path: str | Path) -> dict[str, torch.Tensor]:
    """A reference ``*_gen.pth`` as our UNet's state dict."""
    return read_gen(path).state


def resolve_prefix(resume: str) -> Optional[Path]:
    """``.../I640000_E37`` (or a path ending in ``_gen.pth``) -> the prefix, when ``<prefix>_gen.pth`` exists."""
    p = Path(resume.removesuffix("_gen.pth").removesuffix("_opt.pth"))
    return p if Path(f"{p}_gen.pth").is_file() else None


def iter_epoch(prefix: Path) -> tuple[int, int]:
    """(iteration, epoch) from a reference name ``I<iter>_E<epoch>`` (0, 0 when it has another name)."""
    m = re.fullmatch(r"I(\d+)_E(\d+)", prefix.name)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# ---- what reference weights need ---------------------------------------------------------------

def infer_unet(w: ReferenceWeights) -> dict[str, Any]:
    """The UNet keys the weights' shapes determine: channels, multipliers, res_blocks and the levels with attention
    (level 0 is full resolution)."""
    s = w.state
    inner = int(s["downs.0.weight"].shape[0])
    levels: list[list[tuple[int, bool]]] = [[]]
    i = 1
    while True:
        if f"downs.{i}.res_block.block1.block.3.weight" in s:
            levels[-1].append((int(s[f"downs.{i}.res_block.block1.block.3.weight"].shape[0]), f"downs.{i}.attn.qkv.weight" in s))
        elif f"downs.{i}.conv.weight" in s:
            levels.append([])
        else:
            break
        i += 1
    blocks = {len(lv) for lv in levels}
    if len(blocks) != 1 or not levels[0] or any(len({c for c, _ in lv}) != 1 for lv in levels):
        raise UserError(f"{w.path}: the downsampling path is not the SR3 UNet layout (levels {[len(lv) for lv in levels]})")
    if any(lv[0][0] % inner for lv in levels):
        raise UserError(f"{w.path}: channel counts {[lv[0][0] for lv in levels]} are not multiples of inner_channel {inner}")
    return {"in_channel": w.in_channel, "out_channel": w.out_channel, "inner_channel": inner,
            "channel_multiplier": [lv[0][0] // inner for lv in levels], "res_blocks": blocks.pop(),
            "attn_levels": [n for n, lv in enumerate(levels) if any(a for _, a in lv)]}


def _shortest(x: float) -> float:
    """The shortest decimal that rounds to the same float32 (``9.99999997e-07`` -> ``1e-06``)."""
    for digits in range(1, 10):
        c = float(f"{x:.{digits}g}")
        if np.float32(c) == np.float32(x):
            return c
    return float(x)


def infer_schedule(betas: np.ndarray) -> Optional[dict[str, Any]]:
    """The beta schedule (name, n_timestep, linear_start, linear_end) whose float32 values the checkpoint stores."""
    n = len(betas)
    start, end = _shortest(float(betas[0])), _shortest(float(betas[-1]))
    for name in SCHEDULES:
        try:
            cand = make_betas(name, n, start, end)
        except ValueError:
            continue
        if np.allclose(cand.astype(np.float32), betas, rtol=2e-6, atol=1e-12):
            return {"schedule": name, "n_timestep": n, "linear_start": start, "linear_end": end}
    return None


def check_reference(w: ReferenceWeights, m: Any, how: str = "") -> None:
    """One-line error when the model config ``m`` (an SR3Model) would compute another function than the weights:
    the settings without parameters (encoding, target, residual, network, conditioning, norm_groups)."""
    needed = list(REFERENCE_OBJECTIVE) + [("model.network", w.network),
                                         ("model.conditional", w.in_channel == 2 * w.out_channel)]
    groups_known = bool(getattr(m, "reference_config", None))
    if not groups_known:
        needed.append(("model.unet.norm_groups", REFERENCE_NORM_GROUPS))
    have = {"model.unet.noise_encoding": m.unet.noise_encoding, "model.prediction": m.prediction, "model.residual": m.residual,
            "model.network": m.network, "model.conditional": m.conditional, "model.unet.norm_groups": m.unet.norm_groups}
    wrong = [(k, v) for k, v in needed if have[k] != v]
    if not wrong:
        return
    def fmt(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)
    msg = (f"{w.path}: reference SR3 weights need {' '.join(f'{k}={fmt(v)}' for k, v in wrong)}; this config has "
           f"{', '.join(fmt(have[k]) for k, _ in wrong)}")
    if any(k == "model.unet.norm_groups" for k, _ in wrong):
        msg += (f" (GroupNorm shapes do not show norm_groups: the reference uses {REFERENCE_NORM_GROUPS} unless its JSON "
                "says otherwise, so give that JSON as --config)")
    raise UserError(msg + (f"; {how}" if how else ""))


def check_shapes(w: ReferenceWeights, unet: torch.nn.Module) -> None:
    """One-line error, saying which UNet the weights are, unless their names and shapes are ``unet``'s."""
    ours = unet.state_dict()
    if set(ours) == set(w.state) and all(ours[k].shape == v.shape for k, v in w.state.items()):
        return
    arch = infer_unet(w)
    levels = arch.pop("attn_levels")
    raise UserError(f"{w.path} does not match model.unet: the weights are a UNet with "
                    f"{', '.join(f'{k} {v}' for k, v in arch.items())}, attention at levels {levels} (0 = full size) "
                    "-- set model.unet.* to these or give the reference JSON it was trained with as --config")


def load_into(w: ReferenceWeights, unet: torch.nn.Module) -> None:
    check_shapes(w, unet)
    unet.load_state_dict(w.state, strict=True)


def schedule_note(w: ReferenceWeights, m: Any) -> Optional[str]:
    """A line when the weights were saved with another train schedule than the config's (a JSON that may not be theirs)."""
    if w.betas is None:
        return None
    t = m.beta_schedule.train
    ours = make_betas(t.schedule, t.n_timestep, t.linear_start, t.linear_end).astype(np.float32)
    if ours.shape == w.betas.shape and np.allclose(ours, w.betas, rtol=2e-6, atol=1e-12):
        return None
    saved = infer_schedule(w.betas)
    desc = (f"{saved['schedule']} {saved['n_timestep']} steps {saved['linear_start']:g}..{saved['linear_end']:g}" if saved
            else f"{len(w.betas)} steps")
    return (f"{w.path.name} was saved while training with a {desc} schedule; this config trains with {t.schedule} "
            f"{t.n_timestep} steps {t.linear_start:g}..{t.linear_end:g} (is it the JSON these weights were trained with?)")


def load_resume(prefix: Path, unet: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], m: Any) -> tuple[int, int]:
    """``--resume PREFIX``: check ``<prefix>_gen.pth`` against the model config ``m``, load it into ``unet`` and,
    when present, ``<prefix>_opt.pth`` into ``optimizer``. Returns (iteration, epoch)."""
    w = read_gen(f"{prefix}_gen.pth")
    check_reference(w, m, "add them as key=value overrides, or run with the reference JSON as --config")
    load_into(w, unet)
    note = schedule_note(w, m)
    if note:
        print(f"trainhub-sr3: note: {note}", file=sys.stderr)
    it, ep = iter_epoch(prefix)
    opt_file = Path(f"{prefix}_opt.pth")
    if opt_file.is_file():
        try:
            state = torch.load(opt_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{opt_file}: not a tensor-only checkpoint ({type(exc).__name__}); refusing to unpickle it") from None
        if not isinstance(state, dict):
            raise UserError(f"{opt_file}: expected the reference's dict of epoch, iter and optimizer")
        it, ep = int(state.get("iter", it)), int(state.get("epoch", ep))
        if optimizer is not None and state.get("optimizer"):
            _load_adam(optimizer, state["optimizer"], opt_file)
    return it, ep


def _load_adam(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path) -> None:
    """Their Adam state into our optimizer, refusing moments whose shapes are not the parameters' (torch's
    load_state_dict checks only the counts, and a moment of another shape can broadcast silently)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        groups = state["param_groups"]
        n = sum(len(g["params"]) for g in groups)
    except (KeyError, TypeError):
        raise UserError(f"{path}: no optimizer param_groups in it") from None
    if n != len(params):
        raise UserError(f"{path}: the optimizer state covers {n} parameters, this model has {len(params)}")
    for i, p in enumerate(params):
        s = state.get("state", {}).get(i, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in s and s[k].shape != p.shape:
                raise UserError(f"{path}: moment {k} of parameter {i} has shape {tuple(s[k].shape)}, the parameter "
                                f"{tuple(p.shape)} (the state belongs to another network)")
    optimizer.load_state_dict(state)


# ---- config JSON ---------------------------------------------------------------------------------

_UNET_REQUIRED = ("in_channel", "out_channel", "inner_channel", "channel_multiplier", "attn_res", "res_blocks", "dropout")


class _Reader:
    """Walks a reference config dict, converting values and collecting the keys that are missing, wrong, or unused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unused: list[str] = []
        self.missing: list[str] = []
        self.bad: list[str] = []

    def section(self, d: Any, where: str) -> dict[str, Any]:
        if d is None:
            return {}
        if not isinstance(d, dict):
            self.bad.append(f"{where} must be an object")
            return {}
        return dict(d)

    def need(self, d: dict[str, Any], key: str, where: str) -> Any:
        if d.get(key) is None:
            self.missing.append(f"{where}.{key}")
            return None
        return d.pop(key)

    def integer(self, value: Any, where: str) -> Optional[int]:
        if value is None:
            return None
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = float("nan")
        if not math.isfinite(f) or f != int(f) or isinstance(value, bool):
            self.bad.append(f"{where}={value!r} must be a whole number")
            return None
        return int(f)

    def rest(self, d: dict[str, Any], where: str, why: str = "not read by the reference") -> None:
        if d:
            self.unused.append(f"{', '.join(f'{where}.{k}' for k in d)} ({why})")


def _dataset(r: _Reader, d: dict[str, Any], where: str, out: dict[str, Any], train: bool) -> tuple[Optional[int], Optional[int]]:
    d.pop("name", None)  # a label in their logs
    mode = d.pop("mode", None)
    if mode is not None and mode not in ("HR", "LRHR"):
        r.unused.append(f"{where}.mode={mode} (read as HR: the reference loads LR images only in LRHR mode)")
    root = r.need(d, "dataroot", where)
    dtype = r.need(d, "datatype", where)
    if dtype is not None and dtype not in ("img", "lmdb"):
        r.bad.append(f"{where}.datatype={dtype} (the reference reads img or lmdb)")
    kind = {"img": "paired", "lmdb": "lmdb"}.get(dtype)
    sizes = tuple(r.integer(r.need(d, k, where), f"{where}.{k}") for k in ("l_resolution", "r_resolution"))
    length = r.integer(d.pop("data_len", -1), f"{where}.data_len")
    if train:
        out["data"].update({k: v for k, v in (("root", root), ("source", kind), ("train_len", length)) if v is not None})
        bs = r.integer(r.need(d, "batch_size", where), f"{where}.batch_size")
        if bs is not None:
            out["train"]["batch_size"] = bs
        workers = r.integer(d.pop("num_workers", None), f"{where}.num_workers")
        if workers is not None:
            out["loader"]["num_workers"] = workers
        if "use_shuffle" in d:
            out["loader"]["shuffle"] = bool(d.pop("use_shuffle"))
    else:
        out["data"].update({k: v for k, v in (("val_root", root), ("val_source", kind), ("val_len", length)) if v is not None})
        r.rest({k: d.pop(k) for k in ("batch_size", "num_workers", "use_shuffle") if k in d}, where,
               "not read for validation: the reference validates one image at a time")
    r.rest(d, where)
    return sizes  # type: ignore[return-value]


def _beta_schedule(r: _Reader, d: Any, where: str) -> Optional[dict[str, Any]]:
    d = r.section(d, where)
    if not d:
        return None
    out: dict[str, Any] = {"schedule": r.need(d, "schedule", where)}
    n = r.integer(r.need(d, "n_timestep", where), f"{where}.n_timestep")
    if n is not None:
        out["n_timestep"] = n
    uses = {"linear": ("linear_start", "linear_end"), "quad": ("linear_start", "linear_end"), "warmup10": ("linear_start", "linear_end"),
            "warmup50": ("linear_start", "linear_end"), "const": ("linear_end",)}.get(out["schedule"], ())
    for k in ("linear_start", "linear_end"):
        v = r.need(d, k, where) if k in uses else d.pop(k, None)
        if v is not None:
            out[k] = float(v)
    r.rest(d, where)
    return {k: v for k, v in out.items() if v is not None}


def is_reference_layout(raw: dict[str, Any]) -> bool:
    return "datasets" in raw or "which_model_G" in (raw.get("model") or {}) or "gpu_ids" in raw


def map_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Their config layout -> ours, every key read as the reference's code reads it (its defaults where one is
    absent: norm_groups 32, loss l1; Adam without weight decay or clipping, no EMA). Keys it needs but the file
    lacks, or values it would refuse, are one error; keys that change nothing here are named in one line on stderr."""
    if not is_reference_layout(raw):
        return raw  # already our layout
    r = _Reader(path)
    raw = dict(raw)
    out: dict[str, Any] = {"model": {}, "data": {}, "train": {}, "loader": {}, "loggers": {}}
    if raw.get("name") is not None:
        out["run_name"] = str(raw.pop("name"))
    raw.pop("name", None)
    raw.pop("phase", None)  # the reference's command line sets it: here the command does (run, eval, sample)
    raw.pop("distributed", None)  # set by the reference's parser from gpu_ids
    gpus = raw.pop("gpu_ids", None)
    if isinstance(gpus, list) and len(gpus) > 1:
        r.unused.append(f"gpu_ids={gpus} (one device per process here: --nproc-per-node {len(gpus)} runs DDP, with "
                        "train.batch_size per process)")
    paths = r.section(raw.pop("path", None), "path")
    resume = paths.pop("resume_state", None)
    if resume:
        r.unused.append(f"path.resume_state={resume} (give it as --resume {resume})")
    if paths:
        r.unused.append(f"path.{{{','.join(paths)}}} (runs are written to <output_dir>/sr3/<run_name>/)")

    ds = r.section(raw.pop("datasets", None), "datasets")
    if "train" not in ds:
        r.missing.append("datasets.train")
    train_sizes = _dataset(r, r.section(ds.pop("train", None), "datasets.train"), "datasets.train", out, True) \
        if "train" in ds else (None, None)
    val_sizes = _dataset(r, r.section(ds.pop("val", None), "datasets.val"), "datasets.val", out, False) if "val" in ds else None
    r.rest(ds, "datasets")
    for k, v in zip(("l_resolution", "r_resolution"), train_sizes):
        if v is not None:
            out["data"][k] = v
    if val_sizes is not None and None not in val_sizes and None not in train_sizes and val_sizes != train_sizes:
        r.bad.append(f"datasets.val resolutions {val_sizes[0]}->{val_sizes[1]} differ from datasets.train's "
                     f"{train_sizes[0]}->{train_sizes[1]} (one pair of resolutions per run here)")

    mo = r.section(raw.pop("model", None), "model")
    model = out["model"]
    # eval: one sample per image as the reference validates (its val schedule; 100 steps where that is respaced)
    model.update(reference_config=str(path), loss="l1", residual=False, prediction="eps", sampler="ancestral",
                 eval_steps=100, eval_samples=1, zero_init_output=False)
    which = r.need(mo, "which_model_G", "model")
    if which is not None and which not in ("sr3", "ddpm"):
        r.bad.append(f"model.which_model_G={which} (the reference has sr3 and ddpm)")
    elif which is not None:
        model["network"] = which
    if mo.pop("finetune_norm", False):
        r.bad.append("model.finetune_norm=true (the reference then trains only parameters named 'transformer', which its "
                     "UNets do not have)")
    unet = r.section(mo.pop("unet", None), "model.unet")
    mu: dict[str, Any] = {"noise_encoding": "sqrt_gamma"}
    for k in _UNET_REQUIRED:
        v = r.need(unet, k, "model.unet")
        if v is None:
            continue
        if k in ("channel_multiplier", "attn_res"):
            if not isinstance(v, list):
                r.bad.append(f"model.unet.{k}={v!r} must be a list")
                continue
            v = [r.integer(x, f"model.unet.{k}") for x in v]
        elif k == "dropout":
            v = float(v)
        else:
            v = r.integer(v, f"model.unet.{k}")
        mu[k] = v
    groups = unet.pop("norm_groups", None)
    mu["norm_groups"] = REFERENCE_NORM_GROUPS if groups is None else r.integer(groups, "model.unet.norm_groups")
    r.rest(unet, "model.unet")
    model["unet"] = mu
    bs = r.section(mo.pop("beta_schedule", None), "model.beta_schedule")
    sched: dict[str, Any] = {}
    for phase in ("train", "val"):
        s = _beta_schedule(r, bs.pop(phase, None), f"model.beta_schedule.{phase}")
        if s is not None:
            sched[phase] = s
        elif phase == "train":
            r.missing.append("model.beta_schedule.train")
    r.rest(bs, "model.beta_schedule")
    model["beta_schedule"] = sched
    diff = r.section(mo.pop("diffusion", None), "model.diffusion")
    size = r.integer(r.need(diff, "image_size", "model.diffusion"), "model.diffusion.image_size")
    if size is not None:
        mu["image_size"] = size
    conditional = r.need(diff, "conditional", "model.diffusion")
    channels = r.integer(diff.pop("channels", None), "model.diffusion.channels")
    if conditional is not None:
        model["conditional"] = bool(conditional)
        if not conditional and channels is not None and channels != mu.get("in_channel"):
            r.bad.append(f"model.diffusion.channels={channels} must equal model.unet.in_channel={mu.get('in_channel')} for "
                         "unconditional generation")
    r.rest(diff, "model.diffusion")
    r.rest(mo, "model")

    tn = r.section(raw.pop("train", None), "train")
    train = out["train"]
    for theirs, ours in (("n_iter", "max_steps"), ("val_freq", "eval_every"), ("save_checkpoint_freq", "checkpoint_every"),
                         ("print_freq", "log_every")):
        v = r.integer(r.need(tn, theirs, "train"), f"train.{theirs}")
        if v is not None:
            train[ours] = v
    opt = r.section(tn.pop("optimizer", None), "train.optimizer")
    lr = r.need(opt, "lr", "train.optimizer")
    if lr is not None:
        train["lr"] = float(lr)
    kind = opt.pop("type", None)
    if kind is not None and str(kind).lower() != "adam":
        r.unused.append(f"train.optimizer.type={kind} (the reference always uses Adam, as this run does)")
    r.rest(opt, "train.optimizer")
    # the reference's optimizer step: torch.optim.Adam(lr) with its defaults, no clipping, a constant lr
    train.update(optimizer="adam", weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8, max_grad_norm=None, schedule="constant",
                 warmup_steps=0, min_lr_ratio=0.0, ema={"enabled": False})
    if "ema_scheduler" in tn:
        tn.pop("ema_scheduler")
        r.unused.append("train.ema_scheduler (the reference does not read it and keeps no EMA; neither does this run: "
                        "train.ema.enabled=true adds one)")
    r.rest(tn, "train")
    # the reference keeps the checkpoint of best single-sample PSNR; generation has no target to score
    train["best_metric"] = "psnr" if model.get("conditional", True) else None

    wb = raw.pop("wandb", None)
    if isinstance(wb, dict) and wb.get("project"):
        out["loggers"]["wandb"] = {"project": str(wb["project"])}  # used when loggers.wandb.enabled=true (their -enable_wandb)
    pl = raw.pop("param_logging", None)  # trainhub's parameter monitor, in this layout
    if isinstance(pl, dict):
        pl = dict(pl)
        keys = ("enabled", "save_param_freq", "save_weights", "save_gradients", "save_activations", "layers_to_monitor")
        out["loggers"]["param_outputs"] = {k: pl.pop(k) for k in keys if k in pl}
        r.rest(pl, "param_logging")
    if raw:
        r.unused.append(f"{', '.join(raw)} (not read by the reference)")

    if r.missing or r.bad:
        parts = ([f"missing {', '.join(r.missing)} (the reference's code needs them)"] if r.missing else []) + r.bad
        raise UserError(f"{path}: {'; '.join(parts)}")
    if r.unused:
        print(f"trainhub-sr3: {path.name}: not used here: {'; '.join(r.unused)}", file=sys.stderr)
    for k in ("loggers", "loader"):
        if not out[k]:
            out.pop(k)
    return out
