"""The ``tokenimage`` recipe: text tokens written into images, denoised by a masked DiT.

    trainhub run tokenimage                              standard-library docstrings, byte tokens, 64x64 images
    trainhub run tokenimage data.use_chat_template=true  chat: condition = prompt image, target = answer image
    trainhub run tokenimage data.source=chats.jsonl data.tokenizer=tokenizer.json
    trainhub sample tokenimage --checkpoint runs/tokenimage/NAME --steps 50 [--prompt "json.dumps"]
    trainhub tokenimage info | encode TEXT --out x.png | decode x.png | layout --out layout.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, Recipe, StepContext, UserError
from trainhub.kit.media import labelled_grid, save_png, to_uint8_image
from trainhub.training import distributed as dist
from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.config import TokenImageConfig, TokenImageData, TokenImageModel
from trainhub_tokenimage.data import TokenImageDataset
from trainhub_tokenimage.diffusion import (
    add_noise_to_timestep,
    masked_mse,
    sample,
    sample_sequential,
    token_cross_entropy,
    token_times,
)
from trainhub_tokenimage.metrics import dictionary_of, evaluate_denoiser, generation_metrics
from trainhub_tokenimage.render import text_panel
from trainhub_tokenimage.tokenizer import Tokenizer, load_tokenizer
from trainhub_tokenimage.tools import save_token_png

# flat keys of a script-style config (``--use_amp``, ``--lr`` ...) -> our sections
FLAT_KEYS: dict[str, str] = {
    "img_size": "data.img_size", "use_chat_template": "data.use_chat_template", "max_tokens": "data.max_tokens",
    "tokenizer": "data.tokenizer", "train_file": "data.source", "data_path": "data.source", "val_file": "data.val_source",
    "batch_size": "train.batch_size", "lr": "train.lr", "learning_rate": "train.lr", "warmup_steps": "train.warmup_steps",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "max_grad_norm": "train.max_grad_norm",
    "max_steps": "train.max_steps", "num_train_steps": "train.max_steps", "epochs": "train.epochs",
    "num_epochs": "train.epochs", "seed": "train.seed", "weight_decay": "train.weight_decay",
}


def codec_for(data: TokenImageData, tokenizer: Tokenizer) -> TokenCodec:
    return TokenCodec(tokenizer.vocab_size, data.img_size, data.channels, data.block, data.base)


class TokenImageRecipe(Recipe):
    name = "tokenimage"
    description = "text tokens as 64x64 images, denoised by a masked DiT (stdlib docstrings by default)"
    config_class = TokenImageConfig

    def _tok_codec(self, config: TokenImageConfig) -> tuple[Tokenizer, TokenCodec]:
        key = (config.data.tokenizer, config.data.img_size, config.data.channels, config.data.block, config.data.base)
        if getattr(self, "_cache_key", None) != key:
            tok = load_tokenizer(config.data.tokenizer)
            self._tc, self._cache_key = (tok, codec_for(config.data, tok)), key
        return self._tc

    def build_models(self, config: TokenImageConfig) -> dict[str, nn.Module]:
        from trainhub.plugins import get_plugins

        m, d = config.model, config.data
        if d.img_size % m.patch_size:
            raise UserError(f"model.patch_size={m.patch_size} must divide data.img_size={d.img_size}")
        if m.hidden % m.heads or m.hidden % 4:
            raise UserError(f"model.hidden={m.hidden} must be a multiple of model.heads={m.heads} and of 4")
        if m.head == "tokens":
            bh, bw = d.block
            if m.patch_size % bh or m.patch_size % bw:
                raise UserError(f"model.head=tokens needs model.patch_size={m.patch_size} to be a multiple of "
                                f"data.block={list(d.block)}; use a multiple, or model.head=pixels")
        else:
            if m.noise != "per_image" or m.sampler != "ddim":
                raise UserError("model.head=pixels predicts pixels, not tokens: it needs model.noise=per_image and "
                                f"model.sampler=ddim (got {m.noise}, {m.sampler})")
        net = get_plugins().model(m.name)(img_size=d.img_size, channels=d.channels, patch_size=m.patch_size,
                                          hidden=m.hidden, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
                                          conditional=d.use_chat_template, skip=m.skip, schedule=m.schedule,
                                          sigma_data=m.sigma_data, head=m.head, codec=self._tok_codec(config)[1],
                                          context=m.context)
        return {"model": net}

    def build_data(self, config: TokenImageConfig) -> tuple[Dataset, Optional[Dataset]]:
        d = config.data
        tok, codec = self._tok_codec(config)
        train, val = TokenImageDataset.splits(
            d.source, d.val_source, max_documents=d.max_documents, val_max_images=d.val_images, tokenizer=tok,
            img_size=d.img_size, channels=d.channels, block=d.block, base=d.base, use_chat_template=d.use_chat_template,
            max_tokens=d.max_tokens, packing=d.packing, val_percent=d.val_percent,
        )
        if val is None and config.train.best_metric:  # the first eval would fail, after training time is spent
            held = (f"data.val_source={d.val_source} gives no images" if d.val_source else
                    f"data.val_percent={d.val_percent:g} of the {train.num_documents} document(s) in data.source="
                    f"{d.source or 'stdlib docstrings'} holds none out (each text file is one document)")
            raise UserError(f"no validation data: {held}, but train.best_metric={config.train.best_metric!r} needs it; "
                            "set data.val_source=FILE_OR_FOLDER, or train.best_metric=null")
        if dist.is_main():
            print(f"tokenimage: {codec.describe()}; {len(train)} train images from {train.num_documents} documents, "
                  f"{len(val) if val is not None else 0} val images", file=sys.stderr)
        self._train, self._dictionary = train, None
        return train, val

    def dictionary(self, tok: Tokenizer) -> Optional[frozenset[str]]:
        """The training text's words (each at least 3 times), for ``gen_word_hit``; None before build_data."""
        train = getattr(self, "_train", None)
        if train is None:
            return None
        if self._dictionary is None:
            self._dictionary = dictionary_of(tok.decode(train.targets.flat.tolist()))
        return self._dictionary

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        m: TokenImageModel = ctx.config.model  # type: ignore[attr-defined]
        _, codec = self._tok_codec(ctx.config)  # type: ignore[arg-type]
        clean, mask = batch["clean"], batch["mask"]
        keep = codec.block_mask(mask)
        if m.noise == "per_token":
            t = token_times(keep)
            noisy = add_noise_to_timestep(clean, codec.block_map(t), m.schedule)
        else:
            t = torch.rand(clean.shape[0], device=clean.device)
            noisy = add_noise_to_timestep(clean, t, m.schedule)
        net = ctx.models["model"]
        cond, cmask = batch.get("condition"), batch.get("condition_mask")
        if m.head == "pixels":
            return {"loss": masked_mse(net(noisy, t, condition=cond, mask=mask, condition_mask=cmask), clean, mask)}
        # DDP wraps the model: its forward is the only entry point, so the logits come through forward(logits=True)
        logits = net(noisy, t, condition=cond, mask=mask, condition_mask=cmask, logits=True)
        return {"loss": token_cross_entropy(logits, codec.nearest(clean), keep)}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        cfg: TokenImageConfig = ctx.config  # type: ignore[assignment]
        tok, codec = self._tok_codec(cfg)
        net = ctx.models["model"]
        levels = cfg.model.eval_levels
        reference: dict[str, torch.Tensor] = {}
        metrics = evaluate_denoiser(net, ctx.data or [], codec, levels, cfg.model.schedule, ctx.device, ctx.autocast,
                                    seed=cfg.train.seed, reference=reference, head=cfg.model.head)
        if metrics and ctx.data is not None:
            metrics.update(self._eval_media(ctx, next(iter(ctx.data)), tok, codec, reference))
        return metrics

    def _eval_media(self, ctx: EvalContext, batch: dict[str, torch.Tensor], tok: Tokenizer, codec: TokenCodec,
                    reference: dict[str, torch.Tensor]) -> dict[str, float]:
        """Up to 4 validation images: clean | (noisy, prediction) at the lowest, middle and highest eval level;
        then ``data.eval_samples`` generations from noise with the same lengths (and prompts), as images, rendered
        text and .txt (main process), and their :func:`generation_metrics` (every process: same keys on all ranks)."""
        cfg: TokenImageConfig = ctx.config  # type: ignore[assignment]
        net, levels = ctx.models["model"], cfg.model.eval_levels
        k = min(4, batch["clean"].shape[0])
        b = {name: v[:k].to(ctx.device) for name, v in batch.items()}
        cond, cmask = b.get("condition"), b.get("condition_mask")
        shown = (levels[0], levels[len(levels) // 2], levels[-1])
        g = torch.Generator().manual_seed(cfg.train.seed)
        rows = []
        for t in shown:
            noisy = add_noise_to_timestep(b["clean"], t, cfg.model.schedule, noise=torch.randn(b["clean"].shape, generator=g).to(ctx.device))
            with ctx.autocast():
                pred = net(noisy, torch.full((k,), t, device=ctx.device), condition=cond, mask=b["mask"], condition_mask=cmask)
            if cfg.model.head == "tokens":  # the tokens it reads, not their expected blend
                pred = codec.snap(pred.float())
            rows += [noisy.clamp(-1, 1).cpu(), (pred.float() * b["mask"]).cpu()]
        tiles = torch.stack([b["clean"].cpu(), *rows], dim=1).flatten(0, 1)  # per image: clean, noisy, pred, ...
        read = "read" if cfg.model.head == "tokens" else "denoised"
        titles = ["clean"] + [x for t in shown for x in (f"noisy t={t:g}", f"{read} t={t:g}")]
        if ctx.is_main:
            ctx.media.image("denoise", labelled_grid(tiles, ncol=len(titles), col_titles=titles),
                            caption=", ".join(titles))
        if not cfg.data.eval_samples:
            return {}
        n = min(cfg.data.eval_samples, k)
        gen = generate(net, codec, cfg, n, mask=b["mask"][:n], condition=None if cond is None else cond[:n],
                       condition_mask=None if cmask is None else cmask[:n], seed=cfg.train.seed, autocast=ctx.autocast)
        gen_ids = [codec.decode(gen[i], b["mask"][i]) for i in range(n)]
        metrics = generation_metrics(gen_ids, reference, codec.vocab_size, decode=tok.decode, dictionary=self.dictionary(tok),
                                     seed=cfg.train.seed)
        if not ctx.is_main:
            return metrics
        texts = [render_text(tok, ids, cfg.data.use_chat_template) for ids in gen_ids]
        ctx.media.image("generated", labelled_grid(gen.cpu(), ncol=n, col_titles=[f"sample {i + 1}" for i in range(n)]),
                        caption=" | ".join(x[:80] for x in texts))
        ctx.media.image("generated_text", text_panel(texts), caption=f"{n} generations, {cfg.model.sample_steps} steps")
        if ctx.media.enabled and ctx.media.dir is not None:
            (ctx.media.dir / "generated.txt").write_text("\n\n---\n\n".join(texts), encoding="utf-8")
        return metrics

    def map_config(self, raw: dict[str, Any], path: Path) -> dict[str, Any]:
        """Script-style flat keys (``use_amp``, ``lr``, ``img_size``, ...) -> sections; ``use_amp: false`` is
        ``train.precision: fp32`` and ``use_amp: true`` is ``auto`` (bf16 on CUDA if supported, else fp16)."""
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()
               if isinstance(v, dict) or (k in self.config_class.model_fields and k not in FLAT_KEYS)}
        unknown = []
        for key, value in raw.items():
            if key in out:
                continue
            if key == "use_amp":
                out.setdefault("train", {})["precision"] = "auto" if value else "fp32"
            elif key in FLAT_KEYS:
                section, name = FLAT_KEYS[key].split(".")
                out.setdefault(section, {})[name] = value
            else:
                unknown.append(key)
        if unknown:
            raise UserError(f"{path}: cannot map top-level key(s) {', '.join(unknown)}; flat keys understood: use_amp, "
                            f"{', '.join(FLAT_KEYS)}")
        return out

    # ---- commands ----
    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prompt", help="chat prompt (checkpoints trained with data.use_chat_template=true)")
        parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: model.sample_steps)")
        parser.add_argument("--temperature", type=float, default=None,
                            help="sequential sampler: softmax temperature, 0 = argmax (default: model.temperature)")
        parser.add_argument("--num", type=int, default=1, help="how many samples")
        parser.add_argument("--length", type=int, default=None, help="tokens per image (default: data.max_tokens or the capacity)")
        parser.add_argument("--max-images", type=int, default=1,
                            help="chat: continue an answer over up to N images, each conditioned on the prompt and the "
                                 "answer so far, until <|eos|> (default 1)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-snap", action="store_true", help="do not project predictions onto valid codes while sampling")

    def sample(self, models: dict[str, nn.Module], config: TokenImageConfig, args: argparse.Namespace, out_dir: Path) -> None:
        tok, codec = self._tok_codec(config)
        cap = config.data.max_tokens or codec.capacity
        length = args.length or cap
        if not 1 <= length <= codec.capacity:
            raise UserError(f"--length {length}: must lie in 1..{codec.capacity}")
        if args.temperature is not None and args.temperature < 0:
            raise UserError(f"--temperature {args.temperature}: must be 0 (argmax) or more")
        if args.num < 1 or args.max_images < 1:
            raise UserError(f"--num {args.num} and --max-images {args.max_images} must be at least 1")
        chat = config.data.use_chat_template
        if args.prompt is not None and not chat:
            raise UserError("--prompt needs a checkpoint trained with data.use_chat_template=true; this one is unconditional")
        if chat and args.prompt is None:
            raise UserError("this checkpoint was trained with a chat template: give --prompt TEXT")
        if args.max_images > 1 and not chat:
            raise UserError("--max-images continues chat answers; this checkpoint is unconditional")
        dev, n = args.device, args.num
        mask = codec.encode([0] * length)[1].to(dev)[None].expand(n, -1, -1, -1)
        prompt = [tok.bos_id, tok.role_id("user")] + tok.encode(args.prompt) + [tok.role_id("assistant")] if chat else []
        answers: list[list[int]] = [[] for _ in range(n)]
        finished = [False] * n
        for k in range(args.max_images):
            cond = cmask = None
            if chat:
                pairs = [codec.encode((prompt + answers[i])[-cap:]) for i in range(n)]
                cond = torch.stack([c for c, _ in pairs]).to(dev)
                cmask = torch.stack([m for _, m in pairs]).to(dev)
            out = generate(models["model"], codec, config, n, mask, cond, cmask, seed=args.seed + k,
                           steps=args.steps, snap=not args.no_snap, progress=True, temperature=args.temperature)
            for i in range(n):
                name = f"sample_{i}" if k == 0 else f"sample_{i}-{k}"
                if not finished[i]:
                    ids = codec.decode(out[i], mask[i])
                    answers[i] += ids
                    finished[i] = tok.eos_id in ids
                if codec.channels in (1, 3):  # the exact token image (alpha = mask): `trainhub tokenimage decode` reads it
                    save_token_png(out_dir / f"{name}.png", codec.snap(out[i].cpu()) * mask[i].cpu(), mask[i].cpu())
                save_png(out_dir / f"{name}_view.png", to_uint8_image(_zoom(out[i].cpu(), 4)))
            if all(finished):
                break
        for i in range(n):
            text = render_text(tok, answers[i], chat)
            (out_dir / f"sample_{i}.txt").write_text(text, encoding="utf-8")
            print(f"--- sample {i} ({out_dir / f'sample_{i}.png'})")
            print(text)

    def command(self, args: list[str]) -> None:
        from trainhub_tokenimage.tools import main

        main(args)


@torch.no_grad()
def generate(net: nn.Module, codec: TokenCodec, config: TokenImageConfig, n: int, mask: torch.Tensor,
             condition: Optional[torch.Tensor] = None, condition_mask: Optional[torch.Tensor] = None, seed: int = 0,
             steps: Optional[int] = None, snap: Optional[bool] = None, autocast: Any = None, progress: bool = False,
             temperature: Optional[float] = None) -> torch.Tensor:
    """Sample ``n`` token images from noise (padding zeroed by ``mask``) with ``model.sampler``."""
    import contextlib

    ac = autocast or contextlib.nullcontext
    m = config.model

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with ac():
            return net(x, t, condition=condition, mask=mask, condition_mask=condition_mask).float()

    g = torch.Generator().manual_seed(seed)
    if m.sampler == "sequential":
        def logits(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with ac():
                return net(x, t, condition=condition, mask=mask, condition_mask=condition_mask, logits=True).float()

        temp = m.temperature if temperature is None else temperature
        return sample_sequential(logits, codec, mask, steps or m.sample_steps, temp, generator=g, progress=progress)
    shape = (n, codec.channels, codec.img_size, codec.img_size)
    use_snap = m.snap if snap is None else snap
    out = sample(denoise, shape, steps or m.sample_steps, m.schedule, snap=codec.snap if use_snap else None,
                 generator=g, device=mask.device, progress=progress)
    return out * mask


def render_text(tok: Tokenizer, ids: list[int], chat: bool) -> str:
    """Chat answers end at the first ``<eos>``; unconditional samples show their special tokens."""
    if chat:
        if tok.eos_id in ids:
            ids = ids[: ids.index(tok.eos_id)]
        return tok.decode(ids)
    return tok.decode(ids, skip_special=False)


def _zoom(image: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return image.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


__all__ = ["TokenImageRecipe", "TokenImageConfig", "generate"]
