"""The ``sr3`` recipe: SR3 diffusion super-resolution on the shared trainer.

    trainhub run sr3                                   embedded default: procedural shapes, 8 -> 32
    trainhub run sr3 --config photos                   the same on photographs from scikit-image
    trainhub run sr3 --config sr_sr3_16_128.json       the reference's JSON config, mapped onto this schema
    trainhub prepare sr3 --path photos/ --out data/ --sizes 16,128 [--lmdb]
    trainhub sample sr3 --checkpoint runs/sr3/NAME --input low_res.png --steps 100
    trainhub sr3 import-reference --checkpoint I640000_E37 --config sr_sr3_16_128.json --out runs/sr3/reference
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, ForeignResume, Recipe, StepContext, UserError
from trainhub.kit.media import labelled_grid
from trainhub.training import distributed as dist
from trainhub_sr3 import compat
from trainhub_sr3.config import SR3Config, SR3Data, SR3Model
from trainhub_sr3.data import (
    EmbeddedPhotos,
    HRFolder,
    PairedFolder,
    Shapes,
    bicubic_sr,
    list_images,
    open_image,
    prepare,
    to_tensor,
)
from trainhub_sr3.diffusion import SCHEDULES, Schedule, make_betas, sample, training_loss
from trainhub_sr3.lmdb_store import LMDBPairs, is_lmdb
from trainhub_sr3.metrics import downsample, gradient_energy, psnr, ssim

BUILTIN_SOURCES = ("shapes", "embedded")  # they bring their own pictures and read no data.root
SCORES = ("psnr", "ssim", "psnr_mean", "ssim_mean", "consistency", "psnr_bicubic", "ssim_bicubic", "consistency_bicubic")
EVAL_METRICS = SCORES + ("psnr_gain", "psnr_mean_gain", "sharpness", "sharpness_bicubic")  # what evaluate returns


class Deferred(Dataset):
    """A dataset opened on first use. ``trainhub eval`` builds (train, val) and reads only val, so a run evaluated
    where its training data is not (an imported reference checkpoint, a copied run) needs only ``data.val_root``;
    training asks for the length while the trainer is built, so its data errors come at the same point as before."""

    def __init__(self, make: Callable[[], Dataset]) -> None:
        self.make, self.opened = make, None

    @property
    def dataset(self) -> Dataset:
        if self.opened is None:
            self.opened = self.make()
        return self.opened

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


def _first(data: Dataset, n: int) -> Dataset:
    """The first ``n`` items of ``data`` (all of them for n <= 0)."""
    return torch.utils.data.Subset(data, range(n)) if 0 < n < len(data) else data  # type: ignore[arg-type]


def set_best_metric(config: SR3Config, scored: bool) -> None:
    """Resolves ``train.best_metric=auto`` (psnr_mean where eval scores super-resolution, else none, said in one line)
    and refuses, before training, a metric this run's eval cannot produce."""
    t, d = config.train, config.data
    why = ("model.conditional=false: eval generates images and scores no metric" if not config.model.conditional else
           None if scored else f"data.source={d.source} without data.val_root: there is no validation data to score")
    if t.best_metric == "auto":
        t.best_metric = "psnr_mean" if why is None else None
        if why is not None and dist.is_main():
            print(f"trainhub-sr3: {why}, so no best checkpoint is kept (train.best_metric=auto)", file=sys.stderr)
    elif t.best_metric is not None and why is not None:
        fix = "set train.best_metric=null" if not config.model.conditional else "set data.val_root, or train.best_metric=null"
        raise UserError(f"train.best_metric={t.best_metric} cannot be measured: {why}; {fix}")
    elif t.best_metric is not None and t.best_metric not in EVAL_METRICS:
        raise UserError(f"train.best_metric={t.best_metric} is not an sr3 eval metric; those are {', '.join(EVAL_METRICS)}")


def size_multiple(m: SR3Model) -> int:
    """What the UNet's input sides must be a multiple of: every level but the last halves them."""
    return 2 ** (len(m.unet.channel_multiplier) - 1)


def check_model_config(m: SR3Model) -> None:
    """Combinations the UNet or the diffusion cannot run, as one-line errors naming the keys."""
    u = m.unet
    if m.conditional and u.in_channel != 2 * u.out_channel:
        raise UserError(f"model.unet.in_channel={u.in_channel} must be 2 x out_channel={u.out_channel} (LR image + noisy HR); "
                        "model.conditional=false generates without an LR image")
    if not m.conditional and u.in_channel != u.out_channel:
        raise UserError(f"model.conditional=false: model.unet.in_channel={u.in_channel} must equal out_channel={u.out_channel}")
    if not m.conditional and m.residual:
        raise UserError("model.residual=true needs model.conditional=true (the residual is taken from the upsampled LR image)")
    if m.network == "ddpm" and u.noise_encoding != "sqrt_gamma":
        raise UserError(f"model.network=ddpm embeds the timestep itself: set model.unet.noise_encoding=sqrt_gamma "
                        f"(got {u.noise_encoding}, which is for network sr3)")
    if any(u.inner_channel * k % u.norm_groups for k in u.channel_multiplier):
        raise UserError(f"model.unet.norm_groups={u.norm_groups} must divide inner_channel x every channel_multiplier")


def build_unet(cfg: SR3Model) -> nn.Module:
    from trainhub.plugins import get_plugins

    u = cfg.unet
    net = get_plugins().model(cfg.name)(
        in_channel=u.in_channel, out_channel=u.out_channel, inner_channel=u.inner_channel, norm_groups=u.norm_groups,
        channel_multiplier=u.channel_multiplier, attn_res=u.attn_res, res_blocks=u.res_blocks, dropout=u.dropout,
        image_size=u.image_size, noise_encoding=u.noise_encoding, network=cfg.network,
    )
    last = getattr(getattr(net, "final_conv", None), "block", [None])[-1]
    if cfg.zero_init_output and isinstance(last, nn.Conv2d):
        # the orthogonal init's first outputs have std ~1 where the 8 -> 32 residual has ~0.13: zero lets the
        # UNet learn the residual from the start (+3.1 dB over bicubic after 300 regression steps instead of +0.1)
        with torch.no_grad():
            last.weight.zero_()
    return net


def schedules(cfg: SR3Model, eval_steps: Optional[int] = None) -> tuple[Schedule, Schedule]:
    """(train schedule, eval schedule): eval is the explicit val schedule, or train respaced to ``eval_steps``."""
    t = cfg.beta_schedule.train
    train = Schedule(make_betas(t.schedule, t.n_timestep, t.linear_start, t.linear_end))
    v = cfg.beta_schedule.val
    if v is not None and eval_steps is None:
        return train, Schedule(make_betas(v.schedule, v.n_timestep, v.linear_start, v.linear_end))
    return train, Schedule.respaced(train.betas, eval_steps or cfg.eval_steps)


def parse_sizes(text: str) -> tuple[int, int]:
    """``--sizes 16,128`` -> (16, 128)."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--sizes {text!r}: expected two integers like 16,128") from None
    if lo < 1 or hi % lo:
        raise UserError(f"--sizes {text}: the HR size must be a multiple of the LR size")
    return lo, hi


def generate(net: nn.Module, m: SR3Model, sched: Schedule, n: int, sampler: str, generator: torch.Generator,
             temperature: float, device: torch.device, progress: bool = False) -> torch.Tensor:
    """``n`` unconditional samples of ``image_size`` (out_channel x image_size x image_size)."""
    size = m.unet.image_size
    return sample(net, None, sched, sampler, generator=generator, progress=progress, prediction=m.prediction,
                  temperature=temperature, discrete=m.network == "ddpm", shape=(n, m.unet.out_channel, size, size), device=device)


class SR3Recipe(Recipe):
    GRID_ROWS = 8  # validation images shown in the eval grid
    name = "sr3"
    description = "SR3 diffusion super-resolution (reference-compatible weights and configs)"
    config_class = SR3Config

    def build_models(self, config: SR3Config) -> dict[str, nn.Module]:
        check_model_config(config.model)
        self._model_config = config.model  # load_foreign checks reference weights against it
        self._train_schedule, _ = schedules(config.model)  # this run's (each run builds its own recipe)
        return {"model": build_unet(config.model)}

    def build_data(self, config: SR3Config) -> tuple[Dataset, Optional[Dataset]]:
        """(train, val). ``data.val_root`` is the validation data whatever source trains; without it shapes and embedded
        validate on their own pictures. Unconditional generation evaluates by generating, so it reads no validation data."""
        d = config.data
        if d.r_resolution % d.l_resolution:
            raise UserError(f"data.r_resolution={d.r_resolution} must be a multiple of data.l_resolution={d.l_resolution}")
        multiple = size_multiple(config.model)
        if d.r_resolution % multiple:
            levels = len(config.model.unet.channel_multiplier)
            raise UserError(f"data.r_resolution={d.r_resolution} must be a multiple of {multiple}: the UNet halves it "
                            f"{levels - 1} times (model.unet.channel_multiplier has {levels} levels)")
        if d.root and d.source in BUILTIN_SOURCES:
            raise UserError(f"data.root={d.root} is read only with data.source=paired|lmdb|folder, got data.source={d.source} "
                            "(it brings its own pictures): add data.source=folder for a folder of images (paired or lmdb for "
                            "prepared data), or leave data.root out")
        if d.source == "shapes":
            train: Dataset = Shapes(d.l_resolution, d.r_resolution, "train", d.train_len if d.train_len > 0 else 0)
        elif d.source == "embedded":
            train = EmbeddedPhotos(d.l_resolution, d.r_resolution, "train", flips=d.flips)
        else:
            train = Deferred(functools.partial(SR3Recipe._train_set, d))
        val: Optional[Dataset] = None
        if config.model.conditional and d.val_root:
            vroot = Path(d.val_root)
            kind = d.val_source or ("lmdb" if is_lmdb(vroot) else "paired" if (vroot / f"hr_{d.r_resolution}").is_dir() else "folder")
            val = _first(self._dataset(d, kind, vroot, "data.val_root", train=False), d.val_len)
        elif config.model.conditional and d.source == "shapes":
            val = Shapes(d.l_resolution, d.r_resolution, "val", d.val_len if d.val_len > 0 else 32)
        elif config.model.conditional and d.source == "embedded":
            val = _first(EmbeddedPhotos(d.l_resolution, d.r_resolution, "val"), d.val_len)
        set_best_metric(config, scored=val is not None)
        return train, val

    @staticmethod
    def _train_set(d: SR3Data) -> Dataset:
        if not d.root:
            raise UserError(f"data.source={d.source} needs data.root (a folder)")
        return SR3Recipe._dataset(d, d.source, Path(d.root), "data.root", train=True)

    @staticmethod
    def _dataset(d: SR3Data, kind: str, root: Path, key: str, train: bool) -> Dataset:
        if not root.is_dir():
            raise UserError(f"{key}={root} is not a folder")
        flips = d.flips and train
        limit = d.train_len if train else -1
        if kind == "paired":
            return PairedFolder(root, d.l_resolution, d.r_resolution, flips, d.on_error, limit)
        if kind == "lmdb":
            return LMDBPairs(root, d.l_resolution, d.r_resolution, flips, limit)
        return HRFolder(root, d.l_resolution, d.r_resolution, train, flips, d.on_error, limit)

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        m = ctx.config.model
        loss = training_loss(ctx.models["model"], batch["hr"], batch["sr"], self._train_schedule, m.loss, m.residual, m.prediction,
                             m.residual_scale, discrete=m.network == "ddpm", conditional=m.conditional)
        return {"loss": loss}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Scored as SR3 and the perception-distortion trade-off ask, K = ``model.eval_samples`` samples per image:

        - ``psnr``, ``ssim``: of single samples (averaged over the K). A perfect posterior sample has twice the
          mean's squared error (3.01 dB below it), so on photographs it scores below bicubic by design;
        - ``psnr_mean``: of the mean of the K samples, the posterior-mean estimate (bicubic is a mean estimate too);
        - ``consistency``: PSNR of the sample downsampled (bicubic, antialiased: what made the LR) against the LR
          input; a sample that explains its input scores high (bicubic's own upsampling: ``consistency_bicubic``);
        - ``sharpness``: the samples' gradient energy over HR's (1 = as sharp as HR; bicubic is blurry: below 1).
        Each has its bicubic counterpart (``*_bicubic``); ``psnr_gain`` / ``psnr_mean_gain`` subtract bicubic's PSNR."""
        m = ctx.config.model
        _, sched = schedules(m)
        net = ctx.models["model"]
        if not m.conditional:
            return self._generate_grid(ctx, sched)
        k = m.eval_samples
        scores: dict[str, list[torch.Tensor]] = {key: [] for key in SCORES}
        energy = {"sr": 0.0, "bicubic": 0.0, "hr": 0.0}
        shown: list[torch.Tensor] = []
        g = torch.Generator().manual_seed(0)  # the same starting noise at every eval: scores follow the model only
        for batch in ctx.data or []:
            hr, sr, lr = batch["hr"].to(ctx.device), batch["sr"].to(ctx.device), batch["lr"].to(ctx.device)
            b = hr.shape[0]
            with ctx.autocast():  # the K samples of every image in one batch: sample j of image i at j * b + i
                out = sample(net, sr.repeat(k, 1, 1, 1), sched, m.sampler, m.residual, generator=g, prediction=m.prediction,
                             residual_scale=m.residual_scale, temperature=m.temperature, discrete=m.network == "ddpm",
                             progress=ctx.progress)
            out = out.float()
            mean = out.view(k, b, *out.shape[1:]).mean(0)
            hr_k, lr_k = hr.repeat(k, 1, 1, 1), lr.repeat(k, 1, 1, 1)
            scores["psnr"].append(psnr(out, hr_k).view(k, b).mean(0))
            scores["ssim"].append(ssim(out, hr_k).view(k, b).mean(0))
            scores["consistency"].append(psnr(downsample(out, lr.shape[-2:]), lr_k).view(k, b).mean(0))
            scores["psnr_mean"].append(psnr(mean, hr))
            scores["ssim_mean"].append(ssim(mean, hr))
            scores["psnr_bicubic"].append(psnr(sr, hr))
            scores["ssim_bicubic"].append(ssim(sr, hr))
            scores["consistency_bicubic"].append(psnr(downsample(sr, lr.shape[-2:]), lr))
            energy["sr"] += float(gradient_energy(out).sum()) / k
            energy["bicubic"] += float(gradient_energy(sr).sum())
            energy["hr"] += float(gradient_energy(hr).sum())
            for i in range(min(b, self.GRID_ROWS - len(shown) // 5)):  # 5 tiles a row
                lr_big = torch.nn.functional.interpolate(lr[i : i + 1], size=hr.shape[-2:], mode="nearest")[0]
                shown += [lr_big.cpu(), sr[i].cpu(), out[i].cpu(), mean[i].cpu(), hr[i].cpu()]
        if not scores["psnr"]:
            return {}
        if shown:
            cols = ["LR", "bicubic", "SR (1 sample)", f"mean of {k}", "HR"]
            grid = labelled_grid(torch.stack(shown), ncol=5, col_titles=cols, min_tile=128)
            ctx.media.image("lr_sr_hr", grid, caption=" | ".join(cols))
        res = {key: float(torch.cat(v).mean()) for key, v in scores.items()}
        res["psnr_gain"] = res["psnr"] - res["psnr_bicubic"]
        res["psnr_mean_gain"] = res["psnr_mean"] - res["psnr_bicubic"]
        hr_energy = max(energy["hr"], 1e-12)
        res["sharpness"], res["sharpness_bicubic"] = energy["sr"] / hr_energy, energy["bicubic"] / hr_energy
        return res

    def _generate_grid(self, ctx: EvalContext, sched: Schedule) -> dict[str, float]:
        """Unconditional generation has no target to score: eval writes a grid of ``data.val_len`` images (8 when -1)."""
        m, d = ctx.config.model, ctx.config.data
        n = d.val_len if d.val_len > 0 else 8
        g = torch.Generator().manual_seed(0)
        with ctx.autocast():
            out = generate(ctx.models["model"], m, sched, n, m.sampler, g, m.temperature, ctx.device)
        ncol = min(n, 8)
        grid = labelled_grid(out.cpu().float(), ncol=ncol, col_titles=[f"sample {i + 1}" for i in range(ncol)], min_tile=128)
        ctx.media.image("samples", grid, caption=f"{n} generated images (unconditional)")
        return {}

    def noise_schedule(self, models: dict[str, nn.Module]) -> Optional[dict[str, torch.Tensor]]:
        return self._train_schedule.buffers()

    # ---- the reference's formats ----
    def map_config(self, raw: dict[str, Any], path: Path) -> dict[str, Any]:
        return compat.map_config(raw, path)

    def load_foreign(self, path: str, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> Optional[ForeignResume]:
        """``--resume .../I640000_E37`` (or its ``_gen.pth``): the reference's checkpoint, checked against this run's
        model config (:func:`compat.check_reference`); continues from its iteration with its Adam moments."""
        prefix = compat.resolve_prefix(path)
        if prefix is None:
            return None
        opt = optimizers.get("model")
        it, _ = compat.load_resume(prefix, models["model"], opt, self._model_config)
        restored = ["weights"] + (["optimizer"] if Path(f"{prefix}_opt.pth").is_file() and opt is not None else []) + ["step"]
        if opt is not None and (isinstance(opt, torch.optim.AdamW) or opt.param_groups[0].get("weight_decay", 0)):
            print(f"trainhub-sr3: note: the reference trains with Adam without weight decay; this run continues with "
                  f"{type(opt).__name__} weight_decay={opt.param_groups[0].get('weight_decay', 0)} (its JSON config sets "
                  "train.optimizer=adam train.weight_decay=0)", file=sys.stderr)
        return ForeignResume(it, restored=tuple(restored))

    # ---- commands ----
    def command(self, args: list[str]) -> None:
        from trainhub_sr3.importer import import_reference

        tools = {"import-reference": lambda argv: import_reference(self, argv)}
        if not args or args[0] not in tools:
            raise UserError(f"usage: trainhub sr3 {{{','.join(tools)}}} ... (see trainhub sr3 TOOL --help)")
        tools[args[0]](args[1:])

    def prepare(self, args: list[str]) -> None:
        p = argparse.ArgumentParser(prog="trainhub prepare sr3", description="Write hr_<R>/, lr_<r>/ and sr_<r>_<R>/ "
                                    "(bicubic, centre crop) from a folder of images, as the reference's prepare script.")
        p.add_argument("--path", required=True, help="folder of source images")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--sizes", default="16,128", help="LR,HR resolutions (default 16,128)")
        p.add_argument("--on-error", choices=("skip", "stop"), default="skip")
        p.add_argument("--lmdb", action="store_true", help="write one LMDB database at --out (the reference's datatype: lmdb) "
                       "instead of folders; a second run continues an interrupted one")
        a = p.parse_args(args)
        lo, hi = parse_sizes(a.sizes)
        n = prepare(Path(a.path), Path(a.out), lo, hi, a.on_error, lmdb=a.lmdb)
        print(f"prepared {n} images into {a.out}" + (" (LMDB)" if a.lmdb else ""))

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", help="a low-resolution image or a folder of them (super-resolution)")
        parser.add_argument("--num", type=int, default=4, help="unconditional models: images to generate (default 4)")
        parser.add_argument("--steps", type=int, default=None, help="respace the train schedule to this many steps (default: "
                            "the val schedule when model.beta_schedule.val is set, else the train schedule at model.eval_steps)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--sampler", choices=("ancestral", "ddim"), default=None)
        parser.add_argument("--temperature", type=float, default=None, help="starting-noise scale (default: model.temperature)")

    def sample(self, models: dict[str, nn.Module], config: SR3Config, args: argparse.Namespace, out_dir: Path) -> None:
        from trainhub.kit.media import save_png, to_uint8_image

        m = config.model
        if args.temperature is not None and not 0.0 <= args.temperature <= 1.0:
            raise UserError(f"--temperature {args.temperature}: must be between 0 and 1")
        if args.steps is not None and args.steps < 1:
            raise UserError(f"--steps {args.steps}: must be at least 1")
        _, sched = schedules(m, args.steps)
        which = ("the train schedule respaced to --steps" if args.steps else "the val schedule" if m.beta_schedule.val is not None
                 else "the train schedule respaced to model.eval_steps")
        print(f"trainhub-sr3: sampling {sched.steps} steps ({which})", file=sys.stderr)
        net = models["model"]
        g = torch.Generator().manual_seed(args.seed)
        sampler = args.sampler or m.sampler
        temperature = m.temperature if args.temperature is None else args.temperature
        if not m.conditional:
            if args.num < 1:
                raise UserError(f"--num {args.num}: must be at least 1")
            out = generate(net, m, sched, args.num, sampler, g, temperature, args.device, progress=True)
            for i, img in enumerate(out):
                save_png(out_dir / f"sample_{i:03d}.png", to_uint8_image(img))
            print(f"{args.num} images ({m.unet.image_size}x{m.unet.image_size}) -> {out_dir}")
            return
        if not args.input:
            raise UserError("--input is required: a low-resolution image or a folder of them (this model super-resolves)")
        src = Path(args.input)
        paths = list_images(src) if src.is_dir() else [src]
        if not paths or not paths[0].exists():
            raise UserError(f"--input {src}: no images found")
        scale = config.data.r_resolution // config.data.l_resolution
        multiple = size_multiple(m)
        for p in paths:
            img = open_image(p)
            if img is None:
                print(f"skipping unreadable image {p}")
                continue
            lr = to_tensor(img)[None].to(args.device)
            h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
            sr = torch.nn.functional.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
            pad_h, pad_w = -h % multiple, -w % multiple  # sampled at the next size the UNet takes, then cropped back
            if pad_h or pad_w:
                mode = "reflect" if pad_h < h and pad_w < w else "replicate"  # reflect needs the pad below the size
                sr = torch.nn.functional.pad(sr, (0, pad_w, 0, pad_h), mode=mode)
            out = sample(net, sr, sched, sampler, m.residual, generator=g, progress=True, prediction=m.prediction,
                         residual_scale=m.residual_scale, temperature=temperature, discrete=m.network == "ddpm")[..., :h, :w]
            save_png(out_dir / f"{p.stem}_sr.png", to_uint8_image(out[0]))
            print(f"{p} -> {out_dir / (p.stem + '_sr.png')} ({w}x{h})")


__all__ = ["SR3Recipe", "SR3Config", "bicubic_sr", "SCHEDULES"]
