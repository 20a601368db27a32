"""DiT training step on 4x32x32 latents: trainhub's path vs a plain fp32/TF32 loop like the official train.py, one run.

Models: DiT-XL/2 at batch 32 and DiT-B/2 at batch 64 (1000 classes, learned sigma), the recipe's own diffusion loss
(hybrid MSE + VLB over the linear 1000-step schedule) on both sides.

- trainhub: ``trainhub.training.run.train`` with bf16 autocast (precision auto on CUDA), fused AdamW, foreach EMA, TF32,
  optional ``--compile``; batch x 1 accumulation, max_grad_norm 1.0.
- plain: what the official train.py does: fp32 with TF32 matmuls, ``torch.optim.AdamW(lr=1e-4, weight_decay=0)``,
  no clipping, a per-parameter EMA update (``mul_``/``add_`` per tensor) every step, an ordinary DataLoader.

Both start from the same weights and see the same in-memory latents (random, fixed; data loading is not what is
measured); afterwards both are scored in fp32 on the same held-out latents, timesteps and noise ("eval loss": equal
within noise when the optimised path trains the same). FLOPs per image: ``FlopCounterMode`` on one fp32 step. MFU is
against the measured bf16 matmul peak (the datasheet peak is printed too).

    python tools/bench_dit.py                            # CUDA: XL/2 b32 and B/2 b64, 30 timed steps after 10 warm-up
    python tools/bench_dit.py --compile --models DiT-XL/2
    python tools/bench_dit.py --device cpu --tiny        # smoke test: DiT-Ti/4 on 4x16x16 latents, CPU
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
from trainhub_dit.recipe import DiTRecipe

VIRTUAL_LEN = 1_000_000  # no epoch boundary inside the timed window
FULL = {"DiT-XL/2": 32, "DiT-B/2": 64}
TINY = {"DiT-Ti/4": 4}


class Latents(Dataset):
    """A fixed pool of random "latents" and labels served round-robin."""

    def __init__(self, size: int, pool: int = 256, seed: int = 0, classes: int = 1000) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(pool, 4, size, size, generator=g)
        self.y = torch.randint(0, classes, (pool,), generator=g)

    def __len__(self) -> int:
        return VIRTUAL_LEN

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i % len(self.x)
        return {"x": self.x[j], "y": self.y[j]}


class BenchRecipe(DiTRecipe):
    """The dit recipe on the in-memory latents."""

    def build_data(self, config: Any) -> tuple[Dataset, Optional[Dataset]]:
        return Latents(config.model.input_size), None


def overrides(name: str, size: int, batch: int, device: torch.device) -> list[str]:
    return [f"model.name={name}", "model.num_classes=1000", f"model.input_size={size}", "model.in_channels=4",
            "data.space=latent", f"train.batch_size={batch}", "train.gradient_accumulation_steps=1", "train.lr=1e-4",
            "train.schedule=constant", "train.warmup_steps=0", f"train.device={device.type}", "train.ema.decay=0.9999",
            "train.eval_every=0", "train.eval_at_end=false", "train.checkpoint_every=0", "train.checkpoint_every_epoch=false",
            "train.best_metric=null", "train.log_every=1000000", "train.measure_flops=false", "loggers.console.progress_bar=false",
            "loader.num_workers=" + ("2" if device.type == "cuda" else "0")]


@torch.no_grad()
def eval_loss(recipe: DiTRecipe, net: torch.nn.Module, config: Any, device: torch.device, batches: int = 4, batch: int = 16) -> float:
    """The training objective in fp32 on fixed held-out latents, timesteps and noise."""
    val = Latents(config.model.input_size, pool=batches * batch, seed=1)
    d = recipe.diffusion(config)
    was = net.training
    net.eval()
    total = 0.0
    g = torch.Generator().manual_seed(1234)
    for i in range(batches):
        x, y = val.x[i * batch:(i + 1) * batch].to(device), val.y[i * batch:(i + 1) * batch].to(device)
        t = torch.randint(0, d.num_timesteps, (batch,), generator=g).to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        total += float(d.training_losses(net, x, t, y, noise=noise)["loss"].mean())
    net.train(was)
    return total / batches


def flops_per_image(recipe: DiTRecipe, config: Any, device: torch.device, batch: int) -> float:
    torch.manual_seed(0)
    net = recipe.build_models(config)["model"].to(device)
    s = config.model.input_size
    x, y = torch.randn(batch, 4, s, s, device=device), torch.randint(0, 1000, (batch,), device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    return count_flops(lambda: recipe.diffusion(config).training_losses(net, x, t, y)["loss"].mean().backward()) / batch


def plain_loop(recipe: DiTRecipe, config: Any, device: torch.device, steps: int, warmup: int) -> tuple[list[float], float, float]:
    """The official train.py's loop: fp32 + TF32, default AdamW, per-parameter EMA; (step seconds, peak MB, eval loss)."""
    torch.backends.cuda.matmul.allow_tf32 = True  # the official script turns TF32 on
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.train.seed)
    net = recipe.build_models(config)["model"].to(device)
    ema = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0)
    loader = DataLoader(Latents(config.model.input_size), batch_size=config.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=2 if device.type == "cuda" else 0, pin_memory=device.type == "cuda")
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(loader)
    net.train()
    for step in range(steps + warmup + 1):
        batch = to_device(next(it), device, False)
        out = recipe.train_step(batch, StepContext({"model": net}, "model", step, 0, 0, device, config))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        with torch.no_grad():
            for k, p in net.named_parameters():
                ema[k].mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
        clock.mark()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return clock.deltas(warmup)[0], peak, eval_loss(recipe, net, config, device)


class EvalAtEnd:
    def __init__(self, recipe: DiTRecipe, config: Any, device: torch.device) -> None:
        self.recipe, self.config, self.device, self.loss = recipe, config, device, float("nan")

    @hookimpl
    def trainhub_run_end(self, run: Any, status: str) -> None:
        self.loss = eval_loss(self.recipe, run.models["model"], self.config, self.device)


def trainhub_loop(recipe: DiTRecipe, ov: list[str], config: Any, device: torch.device, steps: int, warmup: int) -> tuple[list[float], float, float]:
    scorer = EvalAtEnd(recipe, config, device)
    run = timed_train(recipe, ov + [f"train.max_steps={steps + warmup + 1}"], device, warmup, plugins=(scorer,))
    return run.wall, run.peak_mb, scorer.loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", help="model names (default DiT-XL/2 DiT-B/2; --tiny: DiT-Ti/4)")
    p.add_argument("--batch", type=int, help="batch size for every model (default: XL/2 32, B/2 64; --tiny 4)")
    p.add_argument("--steps", type=int, help="timed steps per side (default 30; --tiny 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; --tiny 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on the trainhub side")
    p.add_argument("--tiny", action="store_true", help="DiT-Ti/4 on 4x16x16 latents (CPU smoke test)")
    a = p.parse_args()
    device = torch.device(a.device)
    table = TINY if a.tiny else FULL
    names = a.models or list(table)
    size = 16 if a.tiny else 32
    steps = a.steps if a.steps is not None else (3 if a.tiny else 30)
    warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 10)
    if device.type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    if device.type == "cuda":
        measured = measured_matmul_peak(device, torch.bfloat16)
        sheet = device_peak(device, "bf16")
        dev_name = torch.cuda.get_device_name(device)
        print(f"device {dev_name}; measured bf16 matmul peak {measured / 1e12:.0f} TFLOP/s"
              + (f"; {sheet[1]} {sheet[0] / 1e12:.0f} TFLOP/s" if sheet else ""))
    else:
        measured, dev_name = 0.0, "CPU"

    from trainhub.plugins import get_plugins

    recipe = BenchRecipe()
    rows = []
    for name in names:
        batch = a.batch or table.get(name, 32)
        ov = overrides(name, size, batch, device)
        fast = ["train.precision=auto"] + (["train.compile=true"] if a.compile else [])
        config = resolve_config(recipe, get_plugins(), None, ov + fast)
        fpi = flops_per_image(recipe, config, device, batch)
        t0 = time.perf_counter()
        plain_t, plain_mem, plain_loss = plain_loop(recipe, config, device, steps, warmup)
        ours_t, ours_mem, ours_loss = trainhub_loop(recipe, ov + fast, config, device, steps, warmup)
        tp, to = statistics.median(plain_t), statistics.median(ours_t)
        rows.append((name, batch, fpi, batch / tp, batch / to, tp / to, mfu(fpi, batch / tp, measured), mfu(fpi, batch / to, measured),
                     plain_mem, ours_mem, plain_loss, ours_loss))
        print(f"{name} batch {batch}: done in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\nDiT training step on 4x{size}x{size} latents, {dev_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"median of {steps} steps after {warmup} warm-up. plain: fp32+TF32, AdamW, per-parameter EMA (official train.py); "
          f"trainhub: {'bf16 autocast, fused AdamW' if device.type == 'cuda' else 'fp32 (precision auto on CPU), AdamW'}, foreach EMA, "
          f"clipping{', compile' if a.compile else ''}. MFU vs measured bf16 matmul peak")
    print("| model | batch | GFLOP/img (train) | plain img/s | trainhub img/s | ratio | MFU plain | MFU trainhub | "
          "peak MB plain | peak MB trainhub | eval loss plain | eval loss trainhub |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    pct = (lambda v: f"{v:.1%}") if measured else (lambda v: "-")
    for name, b, fpi, ips_p, ips_o, ratio, m_p, m_o, mem_p, mem_o, l_p, l_o in rows:
        print(f"| {name} | {b} | {fpi / 1e9:.1f} | {ips_p:.1f} | {ips_o:.1f} | {ratio:.2f}x | {pct(m_p)} | {pct(m_o)} | "
              f"{mem_p:.0f} | {mem_o:.0f} | {l_p:.4f} | {l_o:.4f} |")


if __name__ == "__main__":
    main()
