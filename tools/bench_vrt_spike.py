"""vrt_spike benchmarks: forward+backward per config preset, and the data pipeline with and without the RAM cache.

Model: for each preset (default, baseline, opt, fast, lowmem, distill's student) the network is built from the
preset's model section and timed on random clips of ``--size`` pixels and the preset's ``data.seq_len`` frames
(``--frames`` to override), batch ``--batch-size``, under the preset's precision (bf16 autocast for ``auto`` on
CUDA, fp32 on CPU): median forward+backward time after warm-up, clips/s, and peak GPU memory on CUDA.

Data: a GoPro+Spike-style dataset is simulated (``trainhub prepare vrt_spike simulate``) into a temporary folder,
then read through core's loader (``trainhub.training.data.build_loader``: the same sampler, seeding and workers as
training) for ``--epochs`` epochs in three set-ups: no cache; the LRU cache with a budget of ``--cache-frac`` of
the decoded dataset and a shuffled order; the same cache with core's grouped sampler (``loader.group_window``).
Reported: samples/s over all epochs, and the cache hit rate (share of frames served from RAM).

    python tools/bench_vrt_spike.py                                  # both parts (model on CUDA when present)
    python tools/bench_vrt_spike.py --part model --size 128 --presets baseline opt fast
    python tools/bench_vrt_spike.py --part data --workers 4 --sequences 12 --frames-per-seq 24 --size 128
    python tools/bench_vrt_spike.py --device cpu --tiny              # smoke test: small sizes, the default preset
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def preset_config(name: str, overrides: list[str]) -> Any:
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config
    from trainhub_vrt_spike.seed_config import CONFIG_DIR

    plugins = get_plugins()
    return resolve_config(plugins.recipe("vrt_spike"), plugins, CONFIG_DIR / f"{name}.yaml", overrides)


def bench_model(presets: list[str], size: int, frames: int, batch: int, device: torch.device, steps: int) -> list[dict[str, Any]]:
    from trainhub_vrt_spike.recipe import build_model

    rows = []
    for name in presets:
        cfg = preset_config(name, ["distill.teacher=null"])
        net = build_model(cfg).to(device).train()
        n = frames or cfg.data.seq_len
        amp = device.type == "cuda" and cfg.train.precision in ("auto", "bf16")
        blur = torch.rand(batch, n, 3, size, size, device=device)
        spike = torch.rand(batch, n, cfg.data.num_bins, size, size, device=device)
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = net(blur, spike)
            out.float().square().mean().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:  # warm-up
                times.append(time.perf_counter() - t0)
            net.zero_grad(set_to_none=True)
        med = statistics.median(times)
        row = {"preset": name, "depths": cfg.model.depths, "window": list(cfg.model.window()), "frames": n, "size": size,
               "batch": batch, "precision": "bf16" if amp else "fp32", "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
               "fwd_bwd_s": round(med, 4), "clips_per_s": round(batch / med, 3)}
        if device.type == "cuda":
            row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del net
    return rows


def bench_data(size: int, sequences: int, frames: int, seq_len: int, crop: int, bins: int, workers: int, epochs: int,
               cache_frac: float, window: int, batch: int) -> list[dict[str, Any]]:
    from trainhub.builtin.samplers import GroupedSampler
    from trainhub.config import LoaderConfig
    from trainhub.training.data import build_loader
    from trainhub_vrt_spike import simulate as sim
    from trainhub_vrt_spike.data import SpikeDeblurDataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vrt_spike_") as tmp:
        root = sim.generate(Path(tmp), sim.SimSettings(size=size, frames=frames), sequences, 0, seed=0, progress=False)
        frame_bytes = 2 * 3 * size * size + 2 * bins * size * size  # blur + sharp uint8, float16 voxels
        budget = int(cache_frac * sequences * frames * frame_bytes)
        for mode in ("no cache", "cache, shuffled", f"cache, grouped (window {window})"):
            cache = 0 if mode == "no cache" else budget
            ds = SpikeDeblurDataset(root, "train", seq_len, num_bins=bins, crop=crop, flips=True, cache_bytes=cache, workers=workers)
            lc = LoaderConfig(num_workers=workers, persistent_workers=workers > 0)
            grouped = GroupedSampler(ds.sample_groups, window, shuffle=True, seed=0) if "grouped" in mode else None
            loader, sampler = build_loader(ds, batch, lc, seed=0, rank=0, world=1, pin_memory=False, sampler=grouped)
            hits, samples = 0.0, 0
            t0 = time.perf_counter()
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for b in loader:
                    samples += b["blur"].shape[0]
                    if "cache_hit" in b:
                        hits += float(b["cache_hit"].sum())
            dt = time.perf_counter() - t0
            row = {"mode": mode, "workers": workers, "clips": len(ds), "epochs": epochs, "samples_per_s": round(samples / dt, 2),
                   "hit_rate": round(hits / samples, 3) if cache else None,
                   "cache_MiB": round(cache / 2**20, 1), "dataset_MiB": round(sequences * frames * frame_bytes / 2**20, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["model", "data", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", nargs="+", default=["baseline", "opt", "fast", "lowmem", "distill"])
    p.add_argument("--size", type=int, default=128, help="model part: frame side")
    p.add_argument("--frames", type=int, default=0, help="model part: frames per clip (0: the preset's data.seq_len)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--data-size", type=int, default=96, help="data part: simulated frame side")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames-per-seq", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=6)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache-frac", type=float, default=0.25, help="cache budget as a share of the decoded dataset")
    p.add_argument("--window", type=int, default=4, help="grouped sampler window (clips of one sequence in a row)")
    p.add_argument("--tiny", action="store_true", help="smoke test: default preset at 32 px, a small data set")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.tiny:
        a.presets, a.size, a.steps = ["default"], 32, 2
        a.data_size, a.sequences, a.frames_per_seq, a.seq_len, a.crop, a.bins, a.epochs = 32, 3, 6, 2, 16, 8, 2
    out: dict[str, Any] = {"device": a.device, "torch": torch.__version__}
    if a.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    else:
        out["threads"] = torch.get_num_threads()
    if a.part in ("model", "both"):
        out["model"] = bench_model(a.presets, a.size, a.frames, a.batch_size, torch.device(a.device), a.steps)
    if a.part in ("data", "both"):
        out["data"] = bench_data(a.data_size, a.sequences, a.frames_per_seq, a.seq_len, a.crop, a.bins, a.workers, a.epochs,
                                 a.cache_frac, a.window, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
