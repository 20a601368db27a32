"""SR3 training step: trainhub's optimized path vs a plain fp32 PyTorch loop over the same network, in one run.

Network: the SR3 UNet at 16->128 (inner 64, multipliers 1,2,4,8,8, attention at 16, 2 res blocks, 97.8M
parameters), the recipe's own ``train_step`` (continuous noise level, L1 on the noise) on both sides.

- trainhub: ``trainhub.training.run.train`` with bf16 autocast (precision auto on CUDA), channels_last, fused AdamW,
  foreach EMA, TF32, optional ``--compile``.
- plain: fp32 (PyTorch's default TF32 flags), ``torch.optim.AdamW`` with its defaults, clipping, a
  per-parameter EMA, an ordinary DataLoader: what a reference ``train.py`` does.

Both start from the same weights, see the same in-memory batches (tiles of the photographs scikit-image ships,
so data loading is not what is measured) and are scored afterwards on the same fixed held-out batches, noise
levels and noise (fp32 "eval loss": the two should agree within noise). FLOPs per image come from
``torch.utils.flop_counter.FlopCounterMode`` on one fp32 step; MFU is against the measured bf16 matmul peak
(the datasheet peak is printed too).

    python tools/bench_sr3.py                          # CUDA: batch 4 and 16, 30 timed steps after 10 warm-up
    python tools/bench_sr3.py --compile --batches 16
    python tools/bench_sr3.py --device cpu --tiny      # smoke test: a tiny UNet at 4->16 on CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from harness import StepClock, timed_train
from trainhub import hookimpl
from trainhub.recipe import StepContext
from trainhub.resolve import resolve_config
from trainhub.training.devices import to_device
from trainhub.training.flops import count_flops, device_peak, measured_matmul_peak, mfu
from trainhub_sr3.data import EmbeddedPhotos
from trainhub_sr3.diffusion import training_loss
from trainhub_sr3.recipe import SR3Recipe, build_unet, schedules

SR3_16_128 = ["model.unet.inner_channel=64", "model.unet.norm_groups=32", "model.unet.channel_multiplier=[1,2,4,8,8]",
              "model.unet.attn_res=[16]", "model.unet.res_blocks=2", "model.unet.dropout=0.2", "model.unet.image_size=128",
              "data.l_resolution=16", "data.r_resolution=128", "model.beta_schedule.train.n_timestep=2000"]
TINY = ["model.unet.inner_channel=16", "model.unet.norm_groups=4", "model.unet.channel_multiplier=[1,2]",
        "model.unet.attn_res=[8]", "model.unet.res_blocks=1", "model.unet.dropout=0.0", "model.unet.image_size=16",
        "data.l_resolution=4", "data.r_resolution=16", "model.beta_schedule.train.n_timestep=100"]
VIRTUAL_LEN = 1_000_000  # the loaders never reach an epoch boundary inside the timed window


class Tiles(Dataset):
    """Precomputed (hr, sr, lr) tiles served round-robin: the step is measured, not image decoding."""

    def __init__(self, l_res: int, r_res: int, split: str) -> None:
        src = EmbeddedPhotos(l_res, r_res, split, scale_to=max(4 * r_res, 128), flips=False)
        items = [src[i] for i in range(len(src))]
        self.t = {k: torch.stack([it[k] for it in items]) for k in ("hr", "sr", "lr")}

    def __len__(self) -> int:
        return VIRTUAL_LEN

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i % len(self.t["hr"])
        return {k: v[j] for k, v in self.t.items()}


class BenchRecipe(SR3Recipe):
    """The sr3 recipe with the in-memory tiles as training data."""

    def build_data(self, config: Any) -> tuple[Dataset, Optional[Dataset]]:
        d = config.data
        return Tiles(d.l_resolution, d.r_resolution, "train"), None


@torch.no_grad()
def eval_loss(net: torch.nn.Module, config: Any, device: torch.device, batches: int = 4, batch: int = 8) -> float:
    """The training objective in fp32 on fixed held-out tiles with fixed noise levels and noise."""
    d = config.data
    val = Tiles(d.l_resolution, d.r_resolution, "val").t
    sched, _ = schedules(config.model)
    was = net.training
    net.eval()
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        for i in range(batches):
            idx = torch.arange(i * batch, (i + 1) * batch) % len(val["hr"])
            hr, sr = val["hr"][idx].to(device), val["sr"][idx].to(device)
            total += float(training_loss(net, hr, sr, sched, config.model.loss, config.model.residual, config.model.prediction))
    net.train(was)
    return total / batches


def flops_per_image(config: Any, device: torch.device, batch: int) -> float:
    """Training FLOPs (forward + backward) of one fp32 step, per image."""
    torch.manual_seed(0)
    net = build_unet(config.model).to(device)
    d = config.data
    hr = torch.randn(batch, 3, d.r_resolution, d.r_resolution, device=device)
    sched, _ = schedules(config.model)
    m = config.model
    return count_flops(lambda: training_loss(net, hr, hr, sched, m.loss, m.residual, m.prediction).backward()) / batch


def plain_loop(recipe: SR3Recipe, config: Any, device: torch.device, steps: int, warmup: int) -> tuple[list[float], float, float]:
    """fp32, default AdamW, clip, per-parameter EMA; returns (step seconds, peak MB, eval loss)."""
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's defaults (train() switches TF32 on for trainhub)
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.train.seed)
    net = recipe.build_models(config)["model"].to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    decay = config.train.ema.decay
    loader = DataLoader(recipe.build_data(config)[0], batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=2 if device.type == "cuda" else 0, pin_memory=device.type == "cuda")
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(loader)
    for step in range(steps + warmup + 1):
        batch = to_device(next(it), device, False)
        out = recipe.train_step(batch, StepContext({"model": net}, "model", step, 0, 0, device, config))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.train.max_grad_norm or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v, alpha=1 - decay)
        clock.mark()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return clock.deltas(warmup)[0], peak, eval_loss(net, config, device)


class EvalAtEnd:
    """Scores the trained (non-EMA) weights of the trainhub run with :func:`eval_loss`."""

    def __init__(self, config: Any, device: torch.device) -> None:
        self.config, self.device, self.loss = config, device, float("nan")

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        self.loss = eval_loss(run.models["model"], self.config, self.device)


def trainhub_loop(recipe: SR3Recipe, overrides: list[str], config: Any, device: torch.device, steps: int,
                  warmup: int) -> tuple[list[float], float, float]:
    """The same steps through ``trainhub.training.run.train``; returns (step seconds, peak MB, eval loss)."""
    scorer = EvalAtEnd(config, device)
    run = timed_train(recipe, overrides + [f"train.max_steps={steps + warmup + 1}"], device, warmup, plugins=(scorer,))
    return run.wall, run.peak_mb, scorer.loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 4 16; --tiny: 2 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side (default 30; --tiny: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; --tiny: 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet on the trainhub side")
    p.add_argument("--tiny", action="store_true", help="a tiny UNet at 4->16 (CPU smoke test)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (both sides)")
    args = p.parse_args()
    device = torch.device(args.device)
    batches = args.batches or ([2, 4] if args.tiny else [4, 16])
    steps = args.steps if args.steps is not None else (3 if args.tiny else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 10)
    if device.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))

    recipe = BenchRecipe()
    from trainhub.plugins import get_plugins

    plugins = get_plugins()
    base = (TINY if args.tiny else SR3_16_128) + list(args.set) + [
        f"train.device={device.type}", "train.max_grad_norm=1.0", "train.eval_every=0", "train.eval_at_end=false",
        "train.best_metric=null", "train.checkpoint_every=0", "train.log_every=1000000", "train.gradient_accumulation_steps=1",
        "loggers.console.progress_bar=false", "loader.num_workers=" + ("2" if device.type == "cuda" else "0"),
    ]
    fast = ["train.precision=auto", "train.channels_last=true", "train.ema.enabled=true"] + (["train.compile=true"] if args.compile else [])

    if device.type == "cuda":
        measured = measured_matmul_peak(device, torch.bfloat16)
        sheet = device_peak(device, "bf16")
        name = torch.cuda.get_device_name(device)
        print(f"device {name}; measured bf16 matmul peak {measured / 1e12:.0f} TFLOP/s; "
              f"{sheet[1]} {sheet[0] / 1e12:.0f} TFLOP/s" if sheet else "")
    else:
        measured, name = 0.0, "CPU"
    rows = []
    for b in batches:
        ov = base + [f"train.batch_size={b}"]
        config = resolve_config(recipe, plugins, None, ov + fast)
        fpi = flops_per_image(config, device, b)
        t0 = time.perf_counter()
        plain_t, plain_mem, plain_loss = plain_loop(recipe, config, device, steps, warmup)
        ours_t, ours_mem, ours_loss = trainhub_loop(recipe, ov + fast, config, device, steps, warmup)
        tp, to = statistics.median(plain_t), statistics.median(ours_t)
        rows.append((b, b / tp, b / to, tp / to, mfu(fpi, b / tp, measured), mfu(fpi, b / to, measured), plain_mem, ours_mem,
                     plain_loss, ours_loss, fpi))
        print(f"batch {b}: done in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\nSR3 {'tiny 4->16' if args.tiny else '16->128'} on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"median of {steps} steps after {warmup} warm-up; trainhub: "
          f"{'bf16 autocast, fused AdamW' if device.type == 'cuda' else 'fp32 (no autocast on CPU)'}, channels_last, foreach EMA"
          f"{', compile' if args.compile else ''}; {'MFU vs measured bf16 matmul peak' if measured else 'no MFU on CPU'}")
    print("| batch | GFLOP/img (train) | plain fp32 img/s | trainhub img/s | ratio | MFU plain | MFU trainhub | "
          "peak MB plain | peak MB trainhub | eval loss plain | eval loss trainhub |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for b, ips_p, ips_o, ratio, m_p, m_o, mem_p, mem_o, l_p, l_o, fpi in rows:
        pct = (lambda v: f"{v:.1%}") if measured else (lambda v: "-")
        print(f"| {b} | {fpi / 1e9:.3g} | {ips_p:.1f} | {ips_o:.1f} | {ratio:.2f}x | {pct(m_p)} | {pct(m_o)} | "
              f"{mem_p:.0f} | {mem_o:.0f} | {l_p:.4f} | {l_o:.4f} |")


if __name__ == "__main__":
    main()
