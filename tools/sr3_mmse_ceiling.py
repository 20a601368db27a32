"""How much PSNR over bicubic any single estimate can gain on sr3's embedded data in a CPU budget.

Trains the default sr3 UNet as a plain regressor (input: the bicubic upsampling, output: the residual, L1,
AdamW with a one-cycle schedule) on the embedded photographs and prints its PSNR gain over bicubic on all
validation tiles. A regressor trained for the mean is what the posterior mean can reach at this budget; a
sample from a perfect posterior sampler has twice the mean's squared error, i.e. 3.01 dB less PSNR. So a
single SR3 sample can only beat bicubic where this ceiling is above +3 dB.

    python tools/sr3_mmse_ceiling.py                              # 8 -> 32, photos at 128 px (the default)
    python tools/sr3_mmse_ceiling.py --l-res 16 --val-scale 256 --train-scales 256,384
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def main() -> None:
    from trainhub_sr3.data import EmbeddedPhotos
    from trainhub_sr3.metrics import psnr
    from trainhub_sr3.recipe import SR3Config, build_unet

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--l-res", type=int, default=8)
    p.add_argument("--r-res", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--val-scale", type=int, default=128, help="short side of the validation photos (the recipe's: 128)")
    p.add_argument("--train-scales", default="128,192,256", help="short sides of the training photos (the recipe's)")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)

    scales = tuple(int(s) for s in args.train_scales.split(","))
    train = EmbeddedPhotos(args.l_res, args.r_res, "train", scales=scales)
    val = EmbeddedPhotos(args.l_res, args.r_res, "val", scale_to=args.val_scale)
    vhr = torch.stack([val[i]["hr"] for i in range(len(val))])
    vsr = torch.stack([val[i]["sr"] for i in range(len(val))])
    bicubic = psnr(vsr, vhr)

    net = build_unet(SR3Config().model)  # the default UNet; its noisy-image input is zeros, its noise level fixed
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)

    def estimate(sr: torch.Tensor) -> torch.Tensor:
        return sr + net(torch.cat([sr, torch.zeros_like(sr)], 1), torch.full((sr.shape[0],), 0.05))

    print(f"{len(val)} validation tiles, bicubic {float(bicubic.mean()):.2f} dB; {args.l_res} -> {args.r_res}")
    t0 = time.time()
    for step in range(1, args.steps + 1):
        items = [train[random.randrange(len(train))] for _ in range(args.batch)]
        hr, sr = torch.stack([x["hr"] for x in items]), torch.stack([x["sr"] for x in items])
        loss = (estimate(sr) - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                gain = float((psnr(estimate(vsr).clamp(-1, 1), vhr) - bicubic).mean())
            net.train()
            print(f"step {step} ({time.time() - t0:.0f} s): regression gain over bicubic {gain:+.2f} dB "
                  f"-> a perfect posterior sample: {gain - 3.01:+.2f} dB", flush=True)


if __name__ == "__main__":
    main()
