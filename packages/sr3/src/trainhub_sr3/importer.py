"""``trainhub sr3 import-reference``: a reference ``_gen.pth`` as a trainhub run directory, so that
``trainhub sample sr3`` and ``trainhub eval sr3`` use it directly.

With ``--config JSON`` every setting comes from the reference JSON (its val schedule, its norm_groups).
Without one, the UNet's shapes give its channels, levels and attention, the betas saved in the file give the
schedule (train and val, as in every published config), and the settings the shapes cannot show are the
reference's: sqrt(gamma) encoding, eps prediction, no residual, ancestral sampling, norm_groups 32.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from trainhub import UserError
from trainhub_sr3 import compat


def gen_path(checkpoint: str) -> Path:
    """A prefix (``I640000_E37``) or a ``..._gen.pth`` path -> the ``_gen.pth`` file."""
    p = Path(checkpoint)
    if p.is_file() and p.name.endswith("_gen.pth"):
        return p
    prefix = compat.resolve_prefix(checkpoint)
    if prefix is None:
        raise UserError(f"--checkpoint {checkpoint}: neither a reference _gen.pth nor a prefix with {p.name}_gen.pth next to it")
    return Path(f"{prefix}_gen.pth")


def inferred_overrides(w: compat.ReferenceWeights, l_res: int, r_res: int) -> tuple[dict[str, Any], str]:
    """The config of reference weights read from the weights alone, and the line that says what was applied."""
    arch = compat.infer_unet(w)
    if w.betas is None:
        raise UserError(f"{w.path}: the file holds no schedule (betas): give the reference JSON with --config")
    sched = compat.infer_schedule(w.betas)
    if sched is None:
        raise UserError(f"{w.path}: its {len(w.betas)} betas are none of the reference's schedules: give its JSON with --config")
    levels = arch.pop("attn_levels")
    conditional = arch["in_channel"] == 2 * arch["out_channel"]
    unet = {**arch, "attn_res": [r_res >> n for n in levels], "image_size": r_res, "norm_groups": compat.REFERENCE_NORM_GROUPS,
            "noise_encoding": "sqrt_gamma", "dropout": 0.0}
    overrides = {
        "model": {"network": w.network, "conditional": conditional, "unet": unet, "prediction": "eps", "residual": False,
                  "sampler": "ancestral", "loss": "l1", "beta_schedule": {"train": sched, "val": sched},
                  "eval_steps": 100, "eval_samples": 1, "zero_init_output": False},
        "data": {"source": "embedded", "l_resolution": l_res, "r_resolution": r_res},
        "train": {"optimizer": "adam", "weight_decay": 0.0, "max_grad_norm": None, "ema": {"enabled": False},
                  "schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0, "best_metric": "psnr" if conditional else None},
    }
    line = (f"reference settings applied: network {w.network}, {'super-resolution ' + str(l_res) + '->' + str(r_res) if conditional else 'unconditional ' + str(r_res) + 'px'} "
            f"(--sizes), noise_encoding sqrt_gamma, prediction eps, residual false, sampler ancestral, norm_groups "
            f"{compat.REFERENCE_NORM_GROUPS} (the reference's default: GroupNorm shapes do not show it; give --config JSON if "
            f"it was trained with another), schedule {sched['schedule']} {sched['n_timestep']} steps "
            f"{sched['linear_start']:g}..{sched['linear_end']:g} from the file's betas (train and val)")
    return overrides, line


def import_reference(recipe: Any, argv: list[str]) -> Path:
    from safetensors.torch import save_file

    from trainhub import config as C
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config
    from trainhub.training.checkpoint import write_json_atomic
    from trainhub_sr3.recipe import build_unet, check_model_config, parse_sizes

    p = argparse.ArgumentParser(prog="trainhub sr3 import-reference", description="Turn a reference SR3 checkpoint "
                                "(Janspiry/Image-Super-Resolution-via-Iterative-Refinement) into a trainhub run directory, so "
                                "that `trainhub sample sr3` and `trainhub eval sr3` work on it.")
    p.add_argument("--checkpoint", required=True, help="the prefix (experiments/.../I640000_E37) or its _gen.pth")
    p.add_argument("--config", help="the reference JSON it was trained with (its schedules, norm_groups, resolutions, data)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--sizes", default="16,128", help="without --config: LR,HR resolutions (default 16,128; for unconditional "
                   "weights the HR size is the generated size)")
    a, overrides = p.parse_known_args(argv)
    out = Path(a.out)
    if (out / "checkpoints").exists() or (out / "config.yaml").exists():
        raise UserError(f"--out {out} already holds a run; choose a new directory")
    w = compat.read_gen(gen_path(a.checkpoint))
    plugins = get_plugins()
    if a.config:
        config = resolve_config(recipe, plugins, a.config, overrides)
        note = compat.schedule_note(w, config.model)
        line = f"settings from {a.config}" + (f"; note: {note}" if note else "")
    else:
        inferred, line = inferred_overrides(w, *parse_sizes(a.sizes))
        config = resolve_config(recipe, plugins, None, C.deep_merge(inferred, C.parse_overrides(overrides)))
    compat.check_reference(w, config.model, "give the reference JSON these weights were trained with as --config")
    check_model_config(config.model)
    with torch.device("meta"):  # shapes only: the weights are written as they are
        compat.check_shapes(w, build_unet(config.model))
    it, ep = compat.iter_epoch(w.path.parent / w.path.name.removesuffix("_gen.pth"))
    opt = Path(str(w.path).removesuffix("_gen.pth") + "_opt.pth")
    if opt.is_file() and not it:
        try:
            meta = torch.load(opt, map_location="cpu", weights_only=True)
            it, ep = int(meta.get("iter", 0)), int(meta.get("epoch", 0))
        except Exception:
            pass  # the step is only a label here
    final = out / "checkpoints" / f"checkpoint-{it}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in w.state.items()}, str(tmp / "model.safetensors"))
    write_json_atomic(tmp / "training_state.json", {"step": it, "epoch": ep, "recipe": recipe.name,
                                                    "imported_from": str(w.path.resolve())})
    os.replace(tmp, final)
    (out / "config.yaml.tmp").write_text(C.to_yaml(config))
    os.replace(out / "config.yaml.tmp", out / "config.yaml")
    print(f"trainhub-sr3: {line}", file=sys.stderr)
    how = "--input LR.png" if config.model.conditional else "--num 4"
    print(f"imported {w.path} ({w.network}, {sum(v.numel() for v in w.state.values()) / 1e6:.1f}M parameters, step {it}) into "
          f"{out}; sample with: trainhub sample sr3 --checkpoint {out} {how}")
    return out
