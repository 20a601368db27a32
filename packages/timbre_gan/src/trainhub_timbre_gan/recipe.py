"""The ``timbre_gan`` recipe: restore audio whose timbre was damaged (EQ, band limiting, compression,
clipping, noise) with a residual-gated generator trained against multi-resolution spectrogram discriminators.

    trainhub run timbre_gan                                     embedded default: synthesised music, prepared
                                                                into the cache on first use
    trainhub prepare timbre_gan --config cfg.yaml --num_workers 4 [--shard-idx i --shard-count k] [--skip_existing]
    trainhub run timbre_gan --config cfg.yaml                   cfg.yaml: data.root = the prepared folder
    trainhub sample timbre_gan --checkpoint runs/timbre_gan/NAME --input damaged.wav (or a folder)

Two optimizers through the shared trainer, phase order ("d", "g"): phase "d" runs the generator once (kept in
``ctx.cache``) and trains the discriminator on ``fake.detach()``; phase "g" reuses that output for the
reconstruction, adversarial and feature-matching losses. Before ``gan.gan_start_epoch`` phase "d" returns no
loss, so the discriminator and its optimizer are left untouched and the generator trains on L1 + MR-STFT only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from trainhub import EvalContext, OptimizerSpec, Recipe, StepContext, UserError
from trainhub_timbre_gan.config import TimbreData, TimbreGANConfig

# ---- config ------------------------------------------------------------------------------------------


# ---- the recipe --------------------------------------------------------------------------------------

def prepared_dir(data: TimbreData) -> Path:
    """``data.root``, or the cache folder of this exact data configuration (its settings' fingerprint)."""
    from trainhub_timbre_gan.prepare import default_cache_root, fingerprint

    if data.root:
        return Path(data.root)
    return (Path(data.cache_dir) if data.cache_dir else default_cache_root()) / "timbre_gan" / f"prepared-{fingerprint(data)}"


class TimbreGANRecipe(Recipe):
    name = "timbre_gan"
    description = "audio timbre restoration GAN (residual-gated generator, multi-resolution spectrogram discriminators)"
    config_class = TimbreGANConfig
    optimizer_order = ("d", "g")

    def __init__(self) -> None:
        self._stft_losses: dict[tuple[Any, ...], nn.Module] = {}

    # ---- building ----
    def build_models(self, config: TimbreGANConfig) -> dict[str, nn.Module]:
        from trainhub.plugins import get_plugins

        g, d = config.model.generator, config.model.discriminator
        plugins = get_plugins()
        return {
            "generator": plugins.model(g.name)(channels=g.channels, strides=g.strides, res_blocks=g.res_blocks,
                                               bottleneck_dilations=g.bottleneck_dilations, kernel_size=g.kernel_size,
                                               gate_bias=g.gate_bias),
            "discriminator": plugins.model(d.name)(resolutions=d.resolutions, channels=d.channels, strides=d.strides),
        }

    def optimizers(self, config: TimbreGANConfig, models: dict[str, nn.Module]) -> dict[str, OptimizerSpec]:
        return {"d": OptimizerSpec(models=("discriminator",), lr=config.gan.d_lr), "g": OptimizerSpec(models=("generator",))}

    def ema_models(self, config: TimbreGANConfig) -> tuple[str, ...]:
        return ("generator",)

    def build_data(self, config: TimbreGANConfig) -> tuple[Dataset, Optional[Dataset]]:
        from trainhub.training import distributed as dist
        from trainhub_timbre_gan.data import TimbreRestoreDataset, read_pair_list
        from trainhub_timbre_gan.prepare import is_prepared, prepare

        d = config.data
        root = prepared_dir(d)
        if not is_prepared(root):
            if d.root:
                raise UserError(f"data.root={root} is not a prepared folder (no train.txt/prepared.json): run "
                                f"`trainhub prepare timbre_gan --config CFG` first, or leave data.root unset to prepare into the cache")
            if not d.val_every and config.train.best_metric:
                raise UserError(f"data.val_every=0 holds out no validation files, so train.best_metric={config.train.best_metric} "
                                "cannot be measured: set data.val_every (e.g. 8), or train.best_metric=null and train.eval_every=0")
            if d.source_dir and not Path(d.source_dir).is_dir():
                raise UserError(f"data.source_dir={d.source_dir} is not a folder")
            if dist.is_main():
                print(f"timbre_gan: preparing the dataset into {root} (once)", file=sys.stderr, flush=True)
                res = prepare(d, root, progress=True)
                for problem in res.problems:  # unreadable sources are left out; bad pairs stop the run (below)
                    print(f"timbre_gan: problem: {problem}", file=sys.stderr, flush=True)
            dist.barrier()
        summary = json.loads((root / "prepared.json").read_text())
        if summary.get("bad_pairs", 0):
            raise UserError(f"{root}: {summary['bad_pairs']} listed pairs failed validation when it was prepared (paths were "
                            "printed then): fix or delete the folder and prepare again")
        train = TimbreRestoreDataset(root / "train.txt")
        if len(train) == 0:
            raise UserError(f"{root / 'train.txt'} lists no pairs: more source files or a lower data.val_every")
        val_list = root / "val.txt"
        val = TimbreRestoreDataset(val_list, d.val_limit) if val_list.is_file() and read_pair_list(val_list) else None
        if val is None and config.train.best_metric:
            raise UserError(f"{root} has no validation pairs (data.val_every={d.val_every}: every N-th source file), so "
                            f"train.best_metric={config.train.best_metric} cannot be measured: lower data.val_every, or set "
                            "train.best_metric=null and train.eval_every=0")
        self._set_warmup(config, len(train))
        return train, val

    def _set_warmup(self, config: TimbreGANConfig, n_train: int) -> None:
        """``gan.warmup_epochs`` -> ``train.warmup_steps`` (the trainer's warm-up counts optimizer steps). The value is
        recorded in ``gan.derived_warmup_steps``: a saved config.yaml (a resume, a new run from it, eval on other
        data) derives it again from the data it is built with instead of taking it for a user-set warm-up."""
        from trainhub.training import distributed as dist

        tc, g = config.train, config.gan
        if g.derived_warmup_steps and tc.warmup_steps == g.derived_warmup_steps:
            tc.warmup_steps = 0  # derived by an earlier build, not set by the user
        g.derived_warmup_steps = 0
        if not g.warmup_epochs:
            return
        if tc.batch_size == "auto":
            raise UserError("gan.warmup_epochs needs a numeric train.batch_size; with batch_size auto set gan.warmup_epochs=0 "
                            "and train.warmup_steps")
        per_epoch = max(1, n_train // dist.world_size() // (tc.batch_size * tc.gradient_accumulation_steps))
        steps = g.warmup_epochs * per_epoch
        if tc.warmup_steps not in (0, steps):
            raise UserError(f"train.warmup_steps={tc.warmup_steps} and gan.warmup_epochs={g.warmup_epochs} both set the warm-up; "
                            "set one (gan.warmup_epochs=0 to use train.warmup_steps)")
        tc.warmup_steps = g.derived_warmup_steps = steps

    # ---- training ----
    def stft_loss(self, config: TimbreGANConfig, device: torch.device) -> nn.Module:
        from trainhub_timbre_gan.losses import MultiResolutionSTFTLoss

        key = (tuple(config.loss.stft_resolutions), str(device))
        if key not in self._stft_losses:
            self._stft_losses[key] = MultiResolutionSTFTLoss(config.loss.stft_resolutions).to(device)
        return self._stft_losses[key]

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        from trainhub_timbre_gan.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, mean_score

        degraded, clean = batch
        cfg: TimbreGANConfig = ctx.config  # type: ignore[assignment]
        gan_on = ctx.epoch >= cfg.gan.gan_start_epoch
        if ctx.optimizer == "d":
            if not gan_on:
                return {}  # no loss: the trainer skips this optimizer (no backward, no step, D untouched)
            fake = ctx.models["generator"](degraded)
            ctx.cache["fake"] = fake
            disc = ctx.models["discriminator"]
            real_out, fake_out = disc(clean), disc(fake.detach())
            return {"loss": discriminator_loss(real_out, fake_out), "D_real": mean_score(real_out), "D_fake": mean_score(fake_out)}
        fake = ctx.cache.pop("fake", None)
        if fake is None:
            fake = ctx.models["generator"](degraded)
        w = cfg.loss
        l1 = F.l1_loss(fake.float(), clean.float())
        sc, mag = self.stft_loss(cfg, fake.device).terms(fake, clean)
        total = w.l1 * l1 + w.stft * (sc + mag)
        out = {"l1": l1.detach(), "stft_sc": sc.detach(), "stft_mag": mag.detach(), "gan_active": float(gan_on)}
        if gan_on:
            # the plain module: its D gradients are discarded (phase "d" clears them), so no DDP all-reduce for them
            disc = ctx.unwrap("discriminator")
            with torch.no_grad():
                real_out = disc(clean)
            fake_out = disc(fake)
            adv, fm = generator_adversarial_loss(fake_out), feature_matching_loss(real_out, fake_out)
            total = total + w.adversarial * adv + w.feature_matching * fm
            out.update(adv_g=adv.detach(), fm=fm.detach())
        out["loss"] = total
        return out

    # ---- evaluation ----
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from trainhub_timbre_gan.metrics import log_spectral_distance, mrstft_distance, si_sdr

        cfg: TimbreGANConfig = ctx.config  # type: ignore[assignment]
        gen = ctx.models["generator"]
        sums: dict[str, float] = {}
        examples: list[dict[str, Any]] = []  # the first eval.media_examples pairs, for the wavs and the picture
        n = 0
        for degraded, clean in ctx.data or []:
            degraded, clean = degraded.to(ctx.device), clean.to(ctx.device)
            with ctx.autocast():
                restored = gen(degraded)
            restored = restored.float()
            per: dict[str, torch.Tensor] = {}
            for name, x in (("degraded", degraded), ("restored", restored)):
                for metric, values in (("mrstft", mrstft_distance(x, clean, cfg.loss.stft_resolutions)),
                                       ("lsd", log_spectral_distance(x, clean, cfg.eval.lsd_n_fft, cfg.eval.lsd_hop)),
                                       ("sisdr", si_sdr(x, clean))):
                    key = f"{metric}_{name}"
                    per[key] = values
                    sums[key] = sums.get(key, 0.0) + float(values.sum())
            n += clean.shape[0]
            for i in range(min(clean.shape[0], cfg.eval.media_examples - len(examples)) if ctx.is_main else 0):
                examples.append({"waves": {"degraded": degraded[i, 0].cpu(), "restored": restored[i, 0].cpu(), "clean": clean[i, 0].cpu()},
                                 "sisdr": (float(per["sisdr_degraded"][i]), float(per["sisdr_restored"][i]))})
        if examples:
            self._write_media(ctx, examples, cfg.data.sample_rate)
        if not n:
            return {}
        out = {k: v / n for k, v in sums.items()}
        out["mrstft_gain"] = out["mrstft_degraded"] - out["mrstft_restored"]
        out["sisdr_gain"] = out["sisdr_restored"] - out["sisdr_degraded"]
        return out

    @staticmethod
    def _write_media(ctx: EvalContext, examples: list[dict[str, Any]], sr: int) -> None:
        """``example<i>_{degraded,restored,clean}.wav`` and one picture, ``spectrograms.png``: an example per row,
        degraded | restored | clean side by side, each row titled with its SI-SDR before and after."""
        from trainhub_timbre_gan.spectrogram import spectrogram_grid

        for i, ex in enumerate(examples):
            for kind, wave in ex["waves"].items():
                ctx.media.audio(f"example{i}_{kind}", wave.clamp(-1, 1), sr, caption=kind)
        rows = [list(ex["waves"].values()) for ex in examples]
        titles = [f"example {i}\n0-{sr / 2000:g} kHz\nSI-SDR (dB)\n{a:.1f} -> {b:.1f}" for i, ex in enumerate(examples)
                  for a, b in [ex["sisdr"]]]
        ctx.media.image("spectrograms", spectrogram_grid(rows, list(examples[0]["waves"]), titles),
                        caption=f"step {ctx.step}: degraded | restored | clean, log spectrograms 0-{sr / 2000:g} kHz, one dB scale per row")

    # ---- commands ----
    def prepare(self, args: list[str]) -> None:
        from trainhub.plugins import get_plugins
        from trainhub.resolve import resolve_config
        from trainhub_timbre_gan.prepare import prepare

        p = argparse.ArgumentParser(
            prog="trainhub prepare timbre_gan",
            description="Cut clean audio (data.source_dir, or synthesised music when unset) into segments, degrade each "
            "with its own seeded chain (EQ, band limit, compression, clipping, noise) and write degraded/clean pairs "
            "plus train.txt and val.txt. Extra key=value arguments override the config (e.g. data.sample_rate=22050).",
        )
        p.add_argument("--config", help="a timbre_gan run config (YAML/JSON); its data section is used")
        p.add_argument("--out", help="output folder (default: data.root, else the cache folder training would use)")
        p.add_argument("--source", help="folder of clean audio (overrides data.source_dir)")
        p.add_argument("--max_files", "--max-files", type=int, default=None, help="only the first N source files (sorted order)")
        p.add_argument("--skip_existing", "--skip-existing", action="store_true",
                       help="keep sources already written (their manifest exists): resumes an interrupted run")
        p.add_argument("--num_workers", "--num-workers", type=int, default=0, help="worker processes (0 = this process)")
        p.add_argument("--shard-idx", "--shard_idx", type=int, default=0, help="this shard (0-based)")
        p.add_argument("--shard-count", "--shard_count", type=int, default=1,
                       help="number of shards: shard i takes source files i, i+k, ...; the last to finish writes the lists")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        a, overrides = p.parse_known_args(args)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise UserError(f"unknown arguments {' '.join(bad)}; see trainhub prepare timbre_gan --help")
        if a.source:
            overrides.append(f"data.source_dir={a.source}")
        config = resolve_config(self, get_plugins(), a.config, overrides)
        d: TimbreData = config.data  # type: ignore[assignment]
        out = Path(a.out) if a.out else prepared_dir(d)
        res = prepare(d, out, a.max_files, a.skip_existing, a.num_workers, a.shard_idx, a.shard_count, not a.no_progress)
        for problem in res.problems:
            print(f"problem: {problem}", file=sys.stderr)
        done = "train.txt and val.txt written" if res.merged else "lists are written when every shard is done"
        print(f"timbre_gan prepare: {res.pairs} pairs from {res.sources} sources ({res.skipped_sources} already done) in "
              f"{res.seconds:.1f} s into {out}; {done}")
        if res.problems:
            raise UserError(f"{len(res.problems)} problems (listed above by path)")

    def add_sample_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", required=True, help="an audio file (wav/flac/...) or a folder of them")
        parser.add_argument("--chunk-seconds", type=float, default=10.0, help="restore long files in chunks of this length")

    def sample(self, models: dict[str, nn.Module], config: TimbreGANConfig, args: argparse.Namespace, out_dir: Path) -> None:
        from trainhub_timbre_gan.data import AUDIO_EXTENSIONS, read_audio, resample, write_audio_atomic
        from trainhub_timbre_gan.model import restore_long

        src = Path(args.input)
        if src.is_dir():
            paths = sorted(q for q in src.rglob("*") if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file())
            names = [q.relative_to(src).with_suffix("") for q in paths]
        else:
            paths, names = ([src], [Path(src.stem)]) if src.is_file() else ([], [])
        if not paths:
            raise UserError(f"--input {src}: no audio files found ({', '.join(AUDIO_EXTENSIONS)})")
        targets = [out_dir / n.with_name(n.name + "_restored.wav") for n in names]
        seen: dict[str, Path] = {}
        for path, target in zip(paths, targets):  # take.wav and take.flac: refused before anything is written
            first = seen.setdefault(str(target).casefold(), path)
            if first != path:
                raise UserError(f"--input {src}: {first} and {path} would both be restored to {target}; rename one of them")
        sr = config.data.sample_rate
        gen = models["generator"]
        chunk = max(1, int(args.chunk_seconds * sr))
        for path, target in zip(paths, targets):
            try:
                wave, file_sr = read_audio(path)
            except Exception as exc:
                print(f"skipping unreadable {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            x = torch.from_numpy(resample(wave, file_sr, sr)).to(args.device)
            y = restore_long(gen, x, chunk, context=sr // 2)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_audio_atomic(target, y.float().cpu().numpy().T, sr, subtype="FLOAT")  # restored audio may pass 1.0
            note = f" (resampled {file_sr} -> {sr} Hz)" if file_sr != sr else ""
            print(f"{path} -> {target}{note}")
