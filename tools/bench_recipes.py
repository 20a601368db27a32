"""Each installed recipe's training step through trainhub vs a plain PyTorch loop over the same model.

trainhub side: the recipe's config with the speed switches on (precision auto -> bf16 on CUDA, fused
AdamW, foreach EMA, TF32, optional --compile / channels_last). Plain side: the same models, data and
``Recipe.train_step`` in fp32 with a default AdamW, clipping and a per-parameter EMA, the way a
reference train.py does it. Both in one run on the same device; prints and writes a table
(img/s, step time, MFU, peak memory, ratio) into docs/benchmarks.md between markers.

    python tools/bench_recipes.py --recipes sr3 dit --steps 30 --warmup 10
    python tools/bench_recipes.py --recipes tiny --device cpu --steps 20   # smoke test on CPU
    python tools/bench_recipes.py --set dit:model.name=DiT-XL/2 --set dit:train.batch_size=32
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from harness import StepClock, timed_train
from trainhub.plugins import get_plugins
from trainhub.recipe import StepContext
from trainhub.resolve import resolve_config
from trainhub.training.devices import to_device
from trainhub.training.flops import device_peak, mfu

MARK_BEGIN, MARK_END = "<!-- bench_recipes:begin -->", "<!-- bench_recipes:end -->"


def plain_loop(recipe: Any, config: Any, device: torch.device, steps: int, warmup: int) -> tuple[list[float], float]:
    """fp32, default AdamW, clip 1.0, per-step EMA over the recipe's own step function."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    models = {k: m.to(device) for k, m in recipe.build_models(config).items()}
    specs = recipe.optimizers(config, models)
    opts = {n: torch.optim.AdamW([p for mn in s.models for p in models[mn].parameters() if p.requires_grad],
                                 lr=config.train.lr, weight_decay=config.train.weight_decay) for n, s in specs.items()}
    ema = {n: {k: v.detach().clone() for k, v in models[n].state_dict().items()} for n in recipe.ema_models(config) if n in models}
    train_ds, _ = recipe.build_data(config)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=2, collate_fn=recipe.collate_fn(config), persistent_workers=True)
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done = 0
    while done < steps + warmup:
        for batch in loader:
            batch = to_device(batch, device, False)
            cache: dict[str, Any] = {}
            for name in recipe.optimizer_order:
                ctx = StepContext(models, name, done, 0, 0, device, config, cache)
                out = recipe.train_step(batch, ctx)
                if out.get("loss") is None:
                    continue
                out["loss"].backward()
                params = [p for g in opts[name].param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
            with torch.no_grad():
                for n, shadow in ema.items():
                    for k, v in models[n].state_dict().items():
                        if v.dtype.is_floating_point:
                            shadow[k].mul_(0.9999).add_(v, alpha=1 - 0.9999)
            clock.mark()
            done += 1
            if done >= steps + warmup:
                break
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    torch.backends.cuda.matmul.allow_tf32 = True
    return clock.deltas(warmup)[0], peak


def trainhub_loop(name: str, overrides: list[str], steps: int, warmup: int, device: torch.device) -> tuple[list[float], dict]:
    run = timed_train(name, overrides + [f"train.max_steps={steps + warmup}", f"train.log_every={steps + warmup}"], device, warmup)
    return run.wall, run.last_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", help="default: every installed recipe except tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile on the trainhub side")
    p.add_argument("--set", action="append", default=[], metavar="RECIPE:key=value", help="config override for one recipe")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"))
    args = p.parse_args()
    device = torch.device(args.device)
    plugins = get_plugins()
    names = args.recipes or sorted(n for n in plugins.registry["recipes"] if n != "tiny")
    rows = []
    for name in names:
        recipe = plugins.recipe(name)
        ov = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == name]
        ov += ["loggers.console.progress_bar=false", "train.eval_every=0", "train.eval_at_end=false", "train.best_metric=null",
               f"train.device={device.type}", "train.gradient_accumulation_steps=1"]
        if args.compile:
            ov.append("train.compile=true")
        config = resolve_config(recipe, plugins, None, ov)
        batch = config.train.batch_size
        plain_t, plain_mem = plain_loop(recipe, config, device, args.steps, args.warmup)
        ours_t, last = trainhub_loop(name, ov, args.steps, args.warmup, device)
        tp, to = statistics.median(plain_t), statistics.median(ours_t)
        peak = device_peak(device, "bf16" if device.type == "cuda" else "fp32")
        fps = last.get("flops_per_sample", 0.0)
        rows.append({
            "recipe": name, "model": getattr(config.model, "name", "-"), "batch": batch,
            "plain_img_s": batch / tp, "trainhub_img_s": batch / to, "ratio": tp / to,
            "plain_mfu": mfu(fps, batch / tp, peak[0]) if peak and fps else None,
            "trainhub_mfu": mfu(fps, batch / to, peak[0]) if peak and fps else None,
            "plain_mem_mb": plain_mem, "trainhub_mem_mb": last.get("cuda_max_alloc_mb", 0.0),
        })
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_note = device_peak(device, "bf16")[1] if device.type == "cuda" else "no MFU on CPU"
    table = [f"Device: {dev}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; steps {args.steps} after {args.warmup} warm-up; "
             f"MFU against {peak_note}; `python tools/bench_recipes.py {' '.join(names)}`", "",
             "| recipe | model | batch | plain fp32 img/s | trainhub img/s | ratio | MFU plain | MFU trainhub | peak MB plain | peak MB trainhub |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.1%}" if isinstance(v, float) else "-"  # noqa: E731
    for r in rows:
        table.append(f"| {r['recipe']} | {r['model']} | {r['batch']} | {r['plain_img_s']:.1f} | {r['trainhub_img_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {fmt(r['plain_mfu'])} | {fmt(r['trainhub_mfu'])} | {r['plain_mem_mb']:.0f} | {r['trainhub_mem_mb']:.0f} |")
    text = "\n".join(table)
    print(text)
    out = Path(args.out)
    if device.type == "cuda" and out.parent.is_dir():
        doc = out.read_text() if out.is_file() else "# Benchmarks\n"
        block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
        doc = doc[: doc.index(MARK_BEGIN)] + block + doc[doc.index(MARK_END) + len(MARK_END):] if MARK_BEGIN in doc else doc + "\n" + block + "\n"
        out.write_text(doc)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
