"""The ``dit`` recipe: class-conditional DiT training on the shared trainer, in pixel or latent space.

    trainhub run dit                                        embedded: 6 shape classes at 16x16, tiny DiT, CPU
    trainhub run dit --config dit_xl2_256 data.root=imagenet/train   the reference's setup (latents on the fly)
    trainhub dit precompute-latents --config cfg.yaml --out latents/      encode once (both flips), then
    trainhub run dit --config cfg.yaml data.source=latents data.root=latents/
    trainhub sample dit --checkpoint runs/dit/NAME --class-labels 1 2 3 --cfg-scale 4 --steps 250 --seed 0
    trainhub run dit --resume results/000-DiT-XL-2/checkpoints/0050000.pt   continue an official training checkpoint
    trainhub dit import-official --checkpoint DiT-XL-2-256x256.pt --out runs/dit/xl2-official   released weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub import EMAConfig, EvalContext, ForeignResume, Recipe, StepContext, UserError
from trainhub.kit.media import labelled_grid
from trainhub_dit import compat
from trainhub_dit.config import DiTConfig
from trainhub_dit.data import EMBEDDED_CLASSES, EmbeddedShapes, ImageFiles, coco, custom_folder, image_folder
from trainhub_dit.diffusion import GaussianDiffusion, guided, linear_betas
from trainhub_dit.latents import LatentShards, decode, encode, load_vae, precompute, read_index, vae_shape
from trainhub_dit.metrics import fid, fid_unavailable, probe_accuracy, probe_predictions, train_probe

# the official train.py updates its EMA every step at this decay (update_ema's default)
OFFICIAL_EMA_DECAY = 0.9999


def latent_mode(config: DiTConfig) -> bool:
    d = config.data
    return d.space == "latent" or (d.space == "auto" and (d.source == "latents" or d.vae is not None))


def model_shape(config: DiTConfig) -> tuple[int, int]:
    """(channels, spatial size) of what the model sees, from the config alone."""
    m, d = config.model, config.data
    if d.source == "latents":
        if not d.root:
            raise UserError("data.source=latents needs data.root (a folder written by `trainhub dit precompute-latents`)")
        index = read_index(d.root)
        c, s = int(index["channels"]), int(index["size"])
    elif d.vae:
        c, s = vae_shape(d.vae, d.image_size)
    else:
        c, s = 3, d.image_size
    return m.in_channels or c, m.input_size or s


def build_dit(config: DiTConfig) -> nn.Module:
    """The model named by ``config.model.name`` from the model registry (third-party variants included)."""
    from trainhub.plugins import get_plugins

    m = config.model
    c, s = model_shape(config)
    factory = get_plugins().model(m.name)
    try:
        return factory(input_size=s, in_channels=c, num_classes=m.num_classes, class_dropout_prob=m.class_dropout_prob,
                       learn_sigma=m.learn_sigma)
    except ValueError as e:
        raise UserError(f"model.name={m.name}: {e}") from None


class DiTRecipe(Recipe):
    name = "dit"
    description = "DiT class-conditional diffusion transformer, pixel or latent (official checkpoints load)"
    config_class = DiTConfig

    def __init__(self) -> None:
        self._diffusions: dict[tuple[int, bool, str], GaussianDiffusion] = {}
        self._vaes: dict[tuple[str, str], nn.Module] = {}
        self._said: set[str] = set()
        self._ema_config: Optional[EMAConfig] = None
        self._probe: Optional[tuple[nn.Module, float]] = None

    # ---- building ----
    def build_models(self, config: DiTConfig) -> dict[str, nn.Module]:
        self._said.clear()  # one-line notices (FID skipped, ...) are said once per run
        self._probe = None
        self._ema_config = config.train.ema  # load_foreign continues an official EMA only where the run keeps one
        return {"model": build_dit(config)}

    def build_data(self, config: DiTConfig) -> tuple[Dataset, Optional[Dataset]]:
        d = config.data
        if d.space == "latent" and d.source != "latents" and not d.vae:
            raise UserError(f"data.space=latent on data.source={d.source} needs data.vae (a local diffusers AutoencoderKL "
                            "directory) to encode the images, or precomputed latents (data.source=latents)")
        train = self._dataset(config, d.root, d.annotations, "train", d.hflip)
        val: Optional[Dataset] = None
        if d.source == "embedded":
            val = EmbeddedShapes(256, d.image_size, "val", hflip=False, seed=config.train.seed,
                                num_classes=config.model.num_classes)
        elif d.val_root:
            val = self._dataset(config, d.val_root, d.val_annotations, "val", False)
        labels = getattr(train, "labels", None)
        top = int(labels.max()) + 1 if labels is not None and len(labels) else len(getattr(train, "classes", ()) or [0])
        if top > config.model.num_classes:
            raise UserError(f"the training data has {top} classes but model.num_classes={config.model.num_classes}; "
                            f"set model.num_classes={top}")
        return train, val

    def _dataset(self, config: DiTConfig, root: Optional[str], annotations: Optional[str], split: str, hflip: bool) -> Dataset:
        d = config.data
        if d.source == "embedded":
            return EmbeddedShapes(d.num_samples or 8192, d.image_size, split, hflip=hflip, seed=config.train.seed,
                                  num_classes=config.model.num_classes)
        if not root:
            raise UserError(f"data.source={d.source} needs data.root{' (or data.val_root)' if split == 'val' else ''}")
        path = Path(root)
        if not path.is_dir():
            raise UserError(f"data.root={root} is not a folder")
        if d.source == "latents":
            return LatentShards(path, hflip, d.num_samples)
        kw: dict[str, Any] = dict(image_size=d.image_size, center_crop=d.center_crop, hflip=hflip, num_samples=d.num_samples,
                                  on_error=d.on_error)
        if d.source == "custom":
            ds: ImageFiles = custom_folder(path, **kw)
        elif d.source == "imagefolder":
            ds = image_folder(path, **kw)
        else:
            if not annotations:
                raise UserError("data.source=coco needs data.annotations (the COCO JSON)")
            ds = coco(path, Path(annotations), d.coco_labels, **kw)
        if len(ds) == 0:
            raise UserError(f"no images found for data.source={d.source} under {root}")
        return ds

    # ---- helpers shared by training, eval and sampling ----
    def diffusion(self, config: DiTConfig, steps: Optional[int] = None) -> GaussianDiffusion:
        """The training process, or its respacing to ``steps`` sampling steps."""
        m = config.model
        key = (m.diffusion_steps, m.learn_sigma, str(steps or ""))
        if key not in self._diffusions:
            base = GaussianDiffusion(linear_betas(m.diffusion_steps), m.learn_sigma)
            self._diffusions[key] = base.respaced(steps) if steps else base
        return self._diffusions[key]

    def vae(self, config: DiTConfig, device: torch.device, vae_dir: Optional[str] = None) -> nn.Module:
        d = config.data
        path = vae_dir or d.vae or (read_index(d.root).get("vae") if d.source == "latents" and d.root else None)
        if not path:
            raise UserError("this model works in latent space: give the VAE to decode with (data.vae=DIR, or --vae DIR)")
        key = (str(path), str(device))
        if key not in self._vaes:
            self._vaes[key] = load_vae(path, device, d.vae_slicing)
        return self._vaes[key]

    def _inputs(self, batch: dict[str, torch.Tensor], config: DiTConfig, device: torch.device) -> torch.Tensor:
        """Model-space inputs: images, or latents (encoded on the fly when a VAE is configured on image data)."""
        x = batch["x"].to(device)
        if config.data.vae and config.data.source != "latents":
            mean, std = encode(self.vae(config, device), x)
            x = (mean + std * torch.randn_like(mean)) * config.data.latent_scale
        return x

    def say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            print(f"trainhub-dit: {line}", file=sys.stderr, flush=True)

    @torch.no_grad()
    def generate(self, net: nn.Module, config: DiTConfig, labels: torch.Tensor, steps: int, sampler: str, cfg_scale: float,
                 generator: torch.Generator, autocast: Callable[[], Any], vae_dir: Optional[str] = None,
                 batch_size: int = 64, progress: bool | Callable[..., Any] = False, cfg_channels: Optional[int] = None) -> torch.Tensor:
        """Images in [-1, 1] on the CPU, one per label."""
        m = config.model
        if cfg_scale != 1.0 and m.class_dropout_prob <= 0:
            raise UserError("classifier-free guidance needs a model trained with model.class_dropout_prob > 0; use cfg scale 1")
        c, s = model_shape(config)
        device = labels.device
        diffusion = self.diffusion(config, steps)
        out = []
        for chunk in labels.split(batch_size):
            noise = torch.randn(len(chunk), c, s, s, generator=generator, device=device)
            fn = guided(net, chunk, cfg_scale, m.num_classes, min(cfg_channels or config.eval.cfg_channels or c, c))
            with autocast():
                x = diffusion.sample(fn, noise, sampler, clip=not latent_mode(config), generator=generator, progress=progress)
            if latent_mode(config):
                x = decode(self.vae(config, device, vae_dir), x, config.data.latent_scale)
            out.append(x.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    # ---- training ----
    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        x, y = self._inputs(batch, ctx.config, ctx.device), batch["y"]
        diffusion = self.diffusion(ctx.config)
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=x.device)
        terms = diffusion.training_losses(ctx.models["model"], x, t, y)
        return {k: v.mean() for k, v in terms.items()}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg, e = ctx.config, ctx.config.eval
        net = ctx.models["model"]
        metrics: dict[str, float] = {}
        if ctx.data is not None:
            diffusion, sums, n = self.diffusion(cfg), {}, 0
            for i, batch in enumerate(ctx.data):
                if e.val_batches and i >= e.val_batches:
                    break
                x, y = self._inputs(batch, cfg, ctx.device), batch["y"].to(ctx.device)
                t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=ctx.device)
                with ctx.autocast():
                    terms = diffusion.training_losses(net, x, t, y)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.sum())
                n += x.shape[0]
            metrics.update({f"val_{k}": v / max(n, 1) for k, v in sums.items()})
        if ctx.is_main:
            metrics.update(self._samples_and_probe(ctx, net))
        reason = fid_unavailable(e.fid_inception_weights)
        if reason:
            self.say_once(reason)
        elif ctx.data is None:
            self.say_once("FID skipped: no validation data for the reference statistics (data.val_root)")
        else:
            metrics["fid"] = self._fid(ctx, net)
        return metrics

    def _samples_and_probe(self, ctx: EvalContext, net: nn.Module) -> dict[str, float]:
        """The sample grid (one row per class, titled with the class name) and the class probe: generated images of
        every class are classified by a small CNN trained on real images, so ``class_probe_acc`` says how often a
        sample is recognisably of the class it was asked for (chance: 1 / num_classes); ``class_probe_real_acc`` is
        the same probe on held-out real images, i.e. how far the probe itself can be trusted."""
        cfg, e = ctx.config, ctx.config.eval
        k = cfg.model.num_classes
        classes = e.classes if e.classes is not None else list(range(min(k, 8)))
        probe = self._probe_for(cfg) if self._probe_wanted(cfg) else None
        gen = classes + ([c for c in range(k) if c not in classes] if probe else [])
        per = max(e.samples_per_class, e.probe_per_class) if probe else e.samples_per_class
        labels = torch.tensor(gen, device=ctx.device).repeat_interleave(per)
        g = torch.Generator(ctx.device).manual_seed(cfg.train.seed)
        scale = self._eval_cfg_scale(cfg)
        imgs = self.generate(net, cfg, labels, e.steps, e.sampler, scale, g, ctx.autocast, batch_size=256,
                             progress=ctx.progress)
        blocks = imgs.view(len(gen), per, *imgs.shape[1:])
        titles = self._titles(cfg, classes)
        metrics: dict[str, float] = {}
        caption = f"one row per class, cfg {scale}, {e.sampler} {e.steps} steps"
        if probe is not None:
            net_p, real_acc = probe
            scored = blocks[:, : e.probe_per_class]
            truth = torch.tensor(gen).repeat_interleave(e.probe_per_class)
            pred = probe_predictions(net_p, scored.reshape(-1, *imgs.shape[1:]))
            hits = (pred == truth).view(len(gen), e.probe_per_class).sum(1).tolist()
            metrics["class_probe_acc"] = sum(hits) / (len(gen) * e.probe_per_class)
            metrics["class_probe_real_acc"] = real_acc
            metrics["class_probe_chance"] = 1.0 / k
            titles = [f"{t} {h}/{e.probe_per_class}" for t, h in zip(titles, hits)]
            caption += (f"; row titles: samples the class probe recognises; class_probe_acc "
                        f"{metrics['class_probe_acc']:.2f} (real held-out {real_acc:.2f}, chance {1 / k:.2f})")
        grid = labelled_grid(blocks[: len(classes), : e.samples_per_class].reshape(-1, *imgs.shape[1:]),
                             ncol=e.samples_per_class, row_titles=titles)
        ctx.media.image("samples", grid, caption=caption)
        return metrics

    def _class_names(self, cfg: DiTConfig) -> tuple[str, ...]:
        """Names of the labels where the data has them (embedded, class subfolders, latents' index), else ()."""
        d = cfg.data
        if d.source == "embedded":
            return EMBEDDED_CLASSES[: cfg.model.num_classes]
        if d.source == "latents" and d.root and Path(d.root).is_dir():
            return tuple(read_index(d.root).get("classes") or ())
        if d.source == "imagefolder" and d.root and Path(d.root).is_dir():
            return tuple(sorted(p.name for p in Path(d.root).iterdir() if p.is_dir() and not p.name.startswith(".")))
        return ()

    def _titles(self, cfg: DiTConfig, labels: list[int]) -> list[str]:
        names = self._class_names(cfg)
        return [names[c] if c < len(names) else f"class {c}" for c in labels]

    def _probe_wanted(self, cfg: DiTConfig) -> bool:
        e, k = cfg.eval, cfg.model.num_classes
        if e.probe_per_class == 0:
            return False
        why = ("latent space (the probe reads pixels)" if latent_mode(cfg) else
               "unconditional data" if k < 2 else f"{k} classes (at most 100)" if k > 100 else "")
        if why:
            self.say_once(f"class probe skipped: {why}; eval.probe_per_class=0 turns it off")
        return not why

    def _probe_for(self, cfg: DiTConfig) -> tuple[nn.Module, float]:
        """The class probe of this run, trained once (at the first eval) on ``eval.probe_train_images`` random real
        training images, and its accuracy on held-out real images: the validation set, else a quarter of the drawn
        training images kept out of its training. Leaves the global RNG untouched."""
        if self._probe is None:
            d, e = cfg.data, cfg.eval
            train = self._dataset(cfg, d.root, d.annotations, "train", False)
            rng = np.random.default_rng(cfg.train.seed)
            if d.source == "embedded":
                held: Dataset = EmbeddedShapes(max(e.probe_train_images // 4, 64), d.image_size, "val", hflip=False,
                                               seed=cfg.train.seed, num_classes=cfg.model.num_classes)
                pick, held_idx = rng.permutation(len(train))[: e.probe_train_images], np.arange(len(held))
            elif d.val_root:
                held = self._dataset(cfg, d.val_root, d.val_annotations, "val", False)
                pick = rng.permutation(len(train))[: e.probe_train_images]
                held_idx = rng.permutation(len(held))[: max(e.probe_train_images // 4, 64)]
            else:
                order = rng.permutation(len(train))[: e.probe_train_images + e.probe_train_images // 4]
                cut = max(len(order) * 4 // 5, 1)
                held, pick, held_idx = train, order[:cut], order[cut:]

            def stack(ds: Dataset, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
                items = [ds[int(i)] for i in idx]
                return torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])

            x, y = stack(train, pick)
            net = train_probe(x, y, cfg.model.num_classes, seed=cfg.train.seed)
            real_acc = probe_accuracy(net, *stack(held, held_idx)) if len(held_idx) else float("nan")
            self._probe = (net, real_acc)
        return self._probe

    def _eval_cfg_scale(self, cfg: DiTConfig) -> float:
        """eval.cfg_scale, or 1 (with a notice) when the model has no null class to guide with."""
        if cfg.eval.cfg_scale != 1.0 and cfg.model.class_dropout_prob <= 0:
            self.say_once("guidance off in eval: model.class_dropout_prob=0 trains no null class")
            return 1.0
        return cfg.eval.cfg_scale

    def _fid(self, ctx: EvalContext, net: nn.Module) -> float:
        """FID of ``fid_num_samples`` generated images (random classes) against as many validation images. Under DDP
        each rank generates its share of them (its own seed) and reads its share of the real ones from its validation
        shard; the feature statistics are summed over the ranks, so every rank returns the FID of the whole set."""
        from trainhub.training.distributed import rank, world_size

        cfg, e = ctx.config, ctx.config.eval
        r, w, n = rank(), world_size(), e.fid_num_samples
        share = n * (r + 1) // w - n * r // w
        g = torch.Generator(ctx.device).manual_seed(cfg.train.seed + 1 + r)
        labels = torch.randint(0, cfg.model.num_classes, (share,), device=ctx.device, generator=g)
        fake = self.generate(net, cfg, labels, e.steps, e.sampler, self._eval_cfg_scale(cfg), g, ctx.autocast).split(64) \
            if share else ()

        def real() -> Any:
            left = share
            for batch in ctx.data or []:
                if left <= 0:
                    break
                x = batch["x"][:left].to(ctx.device)
                left -= x.shape[0]
                if cfg.data.source == "latents":
                    x = decode(self.vae(cfg, ctx.device), x, cfg.data.latent_scale)
                yield x

        return fid(real(), fake, str(e.fid_inception_weights), ctx.device)

    def noise_schedule(self, models: dict[str, nn.Module]) -> Optional[dict[str, torch.Tensor]]:
        if not self._diffusions:
            return None
        t = next(iter(self._diffusions.values())).tables64
        return {k: t[k].float() for k in ("betas", "alphas_cumprod")}

    # ---- the reference's checkpoints ----
    def load_foreign(self, path: str, models: dict[str, nn.Module],
                     optimizers: dict[str, torch.optim.Optimizer]) -> Optional[ForeignResume]:
        """``--resume X.pt``: an official training checkpoint (weights, Adam moments, EMA, step) or released weights
        (weights only, step 0: the EMA restarts from them)."""
        if not Path(path).is_file():
            return None
        ck = compat.read(path)
        net = models["model"]
        notes = compat.load_weights(net, ck.model, path)
        restored, ema = ["weights"], {}
        step = 0
        if ck.opt is not None and "model" in optimizers:
            step = compat.load_optimizer(optimizers["model"], net, ck.opt, list(ck.model))
            if step:
                restored.append("optimizer")
        e = self._ema_config
        if ck.ema is not None and e is not None and e.enabled:
            ema["model"], more = compat.ema_state(net, ck.ema, f"{path} (ema)")
            notes += more
            restored.append("ema")
            if e.decay != OFFICIAL_EMA_DECAY:
                notes.append(f"train.py keeps its EMA at decay {OFFICIAL_EMA_DECAY}; this run continues it at "
                             f"train.ema.decay={e.decay} (set train.ema.decay={OFFICIAL_EMA_DECAY} to continue as train.py would)")
        step = compat.step_from_name(path) or step
        if step:
            restored.append("step")
        for note in notes:
            print(f"trainhub-dit: {note}", file=sys.stderr)
        return ForeignResume(step, ema=ema, restored=tuple(restored))

    # ---- commands ----
    def command(self, args: list[str]) -> None:
        tools = {"precompute-latents": self._precompute_latents, "import-official": self._import_official}
        if not args or args[0] not in tools:
            raise UserError(f"usage: trainhub dit {{{','.join(tools)}}} ... (see trainhub dit TOOL --help)")
        tools[args[0]](args[1:])

    def _precompute_latents(self, argv: list[str]) -> None:
        from trainhub.plugins import get_plugins
        from trainhub.resolve import resolve_config
        from trainhub.training.devices import select_device

        p = argparse.ArgumentParser(prog="trainhub dit precompute-latents", description="Encode a dataset once with the VAE "
                                    "(data.vae) into safetensors shards, each image and its mirror image; train on them with "
                                    "data.source=latents data.root=OUT. Extra key=value arguments override the config.")
        p.add_argument("--config", help="a dit config (YAML/JSON); its data section picks images, size and VAE")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--split", choices=("train", "val"), default="train", help="val encodes data.val_root")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--shard-size", type=int, default=4096, help="images per shard")
        p.add_argument("--num-workers", type=int, default=4)
        p.add_argument("--device", default="auto")
        a, overrides = p.parse_known_args(argv)
        config = resolve_config(self, get_plugins(), a.config, overrides)
        d = config.data
        if not d.vae:
            raise UserError("precompute-latents needs data.vae (a local diffusers AutoencoderKL directory)")
        if d.source == "latents":
            raise UserError("data.source=latents is already encoded; choose embedded, custom, imagefolder or coco")
        device = select_device(a.device)
        ds = self._dataset(config, d.root if a.split == "train" else d.val_root,
                           d.annotations if a.split == "train" else d.val_annotations, a.split, hflip=False)
        vae = load_vae(d.vae, device, d.vae_slicing)
        meta = {"vae": str(Path(d.vae).resolve()), "source": d.source, "classes": list(getattr(ds, "classes", ()))}
        index = precompute(ds, vae, Path(a.out), device, d.latent_scale, d.image_size, a.batch_size, a.shard_size,
                           a.num_workers if device.type == "cuda" else 0, meta)
        print(f"wrote {index['num_samples']} latents ({index['channels']}x{index['size']}x{index['size']}, both flips) in "
              f"{len(index['shards'])} shards to {a.out}; train with data.source=latents data.root={a.out}")

    def _import_official(self, argv: list[str]) -> None:
        from safetensors.torch import save_model

        from trainhub import config as C
        from trainhub.plugins import get_plugins
        from trainhub.resolve import resolve_config
        from trainhub.training.checkpoint import write_json_atomic

        p = argparse.ArgumentParser(prog="trainhub dit import-official", description="Turn an official DiT checkpoint "
                                    "(released weights or a train.py checkpoint) into a trainhub run directory, so that "
                                    "`trainhub sample dit` and `trainhub eval dit` work on it.")
        p.add_argument("--checkpoint", required=True, help="DiT-XL-2-256x256.pt, or results/.../checkpoints/0050000.pt")
        p.add_argument("--out", required=True, help="run directory to create")
        p.add_argument("--model", help="architecture, e.g. DiT-XL/2 (default: from the checkpoint's args, else DiT-XL/2)")
        p.add_argument("--image-size", type=int, help="256 or 512 (default: from args, else 256)")
        p.add_argument("--num-classes", type=int, help="default: from args, else 1000")
        p.add_argument("--vae", help="local diffusers AutoencoderKL directory used to decode samples")
        a = p.parse_args(argv)
        out = Path(a.out)
        if (out / "checkpoints").exists() or (out / "config.yaml").exists():
            raise UserError(f"--out {out} already holds a run; choose a new directory")
        ck = compat.read(a.checkpoint)
        args = vars(ck.args) if ck.args is not None else {}
        image_size = a.image_size or int(args.get("image_size", 256))
        overrides = {
            "model": {"name": a.model or args.get("model", "DiT-XL/2"), "num_classes": a.num_classes or int(args.get("num_classes", 1000)),
                      "input_size": image_size // 8, "in_channels": 4},
            "data": {"source": "custom", "image_size": image_size, "vae": a.vae, "space": "latent"},
            "eval": {"steps": 250, "cfg_scale": 4.0},
        }
        config = resolve_config(self, get_plugins(), None, overrides)
        models = {"model": build_dit(config)}
        compat.load_weights(models["model"], ck.model, a.checkpoint)
        ema = build_dit(config)
        compat.load_weights(ema, ck.ema if ck.ema is not None else ck.model, a.checkpoint)
        step = compat.step_from_name(a.checkpoint) or 0
        ckpt = out / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_model(models["model"], str(ckpt / "model.safetensors"))
        save_model(ema, str(ckpt / "ema.safetensors"))
        write_json_atomic(ckpt / "training_state.json", {"step": step, "epoch": 0, "recipe": self.name,
                                                         "imported_from": str(Path(a.checkpoint).resolve())})
        (out / "config.yaml.tmp").write_text(C.to_yaml(config))
        os.replace(out / "config.yaml.tmp", out / "config.yaml")
        print(f"imported {a.checkpoint} ({config.model.name}, {image_size}px, {config.model.num_classes} classes) into {out}; "
              f"sample with: trainhub sample dit --checkpoint {out}" + ("" if a.vae else " --vae VAE_DIR"))

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--class-labels", type=int, nargs="+", help="one image per label (default: the first 8 classes)")
        parser.add_argument("--per-class", type=int, default=1, help="images per label (one grid row per label when > 1)")
        parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: eval.cfg_scale)")
        parser.add_argument("--cfg-channels", type=int, help="channels guided (default: eval.cfg_channels, i.e. all noise "
                            "channels; 3 reproduces the official sample.py)")
        parser.add_argument("--steps", type=int, help="respaced sampling steps (default: eval.steps)")
        parser.add_argument("--sampler", choices=("ddpm", "ddim"), help="default: eval.sampler")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--batch-size", type=int, default=32, help="images generated at once")
        parser.add_argument("--vae", help="VAE directory to decode latents with (default: data.vae of the run)")

    def sample(self, models: dict[str, nn.Module], config: DiTConfig, args: argparse.Namespace, out_dir: Path) -> None:
        import contextlib

        from trainhub.kit.media import save_png
        from trainhub.training.devices import select_precision

        e = config.eval
        device = args.device
        classes = args.class_labels if args.class_labels is not None else list(range(min(config.model.num_classes, 8)))
        bad = [c for c in classes if not 0 <= c < config.model.num_classes]
        if bad:
            raise UserError(f"--class-labels {bad}: this model has classes 0..{config.model.num_classes - 1}")
        t = config.model.diffusion_steps
        if args.steps is not None and not 1 <= args.steps <= t:
            raise UserError(f"--steps {args.steps}: respaced sampling takes 1..{t} steps (model.diffusion_steps={t})")
        for flag, value in (("--per-class", args.per_class), ("--batch-size", args.batch_size), ("--cfg-channels", args.cfg_channels)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        labels = torch.tensor(classes, device=device).repeat_interleave(args.per_class)
        precision = select_precision(config.train.precision, device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

        g = torch.Generator(device).manual_seed(args.seed)
        steps, cfg_scale = args.steps if args.steps is not None else e.steps, args.cfg_scale if args.cfg_scale is not None else e.cfg_scale
        imgs = self.generate(models["model"], config, labels, steps, args.sampler or e.sampler, cfg_scale, g, autocast,
                             args.vae, args.batch_size, progress=True, cfg_channels=args.cfg_channels)
        titles = self._titles(config, classes)
        if args.per_class == 1 and len(classes) <= 8:  # one image per label in a row, titled above
            grid = labelled_grid(imgs, ncol=len(classes), col_titles=titles)
        else:  # one row per label, titled with its class
            grid = labelled_grid(imgs, ncol=args.per_class, row_titles=titles)
        path = save_png(out_dir / "samples.png", grid)
        (out_dir / "samples.json").write_text(json.dumps({"class_labels": classes, "per_class": args.per_class,
                                                          "cfg_scale": cfg_scale, "steps": steps, "seed": args.seed}, indent=2))
        print(f"{len(imgs)} samples ({steps} steps, cfg {cfg_scale}) -> {path}")
