"""The LRU RAM cache, the dataset and the DataLoader worker rule."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from trainhub import UserError
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config
from trainhub.training import data as core_data
from trainhub_vrt_spike import simulate as sim
from trainhub_vrt_spike import spike as S
from trainhub_vrt_spike.cache import LRUCache
from trainhub_vrt_spike.config import total_workers
from trainhub_vrt_spike.data import SpikeDeblurDataset, read_image
from trainhub_vrt_spike.recipe import dataset_kwargs, describe_loader, loader_workers


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gopro_spike")
    return sim.generate(root, sim.SimSettings(size=24, frames=5, subframes=8), 3, 1, seed=0, voxel_bins=4, progress=False)


def resolve(overrides):
    plugins = get_plugins()
    return resolve_config(plugins.recipe("vrt_spike"), plugins, None, overrides)


def small_dataset(path, frames=2):
    """One val sequence of 16x16 frames with 4 spike frames per exposure."""
    root = sim.generate(path, sim.SimSettings(size=16, frames=frames, subframes=4), 0, 1, seed=0, progress=False)
    return root, next((root / "val").iterdir())


def arrays(n_bytes: int) -> tuple[np.ndarray, ...]:
    return (np.zeros(n_bytes, dtype=np.uint8),)


def test_lru_evicts_least_recently_used_and_returns_copies():
    c = LRUCache(300)
    assert c.budget_bytes == 300
    for k in "abc":
        assert c.put(k, arrays(100))
    c.get("a")  # a is now the most recent: b goes first
    c.put("d", arrays(100))
    assert c.get("b") is None and c.get("a") is not None and len(c) == 3
    got = c.get("a")[0]
    got[:] = 7  # modifying a copy leaves the cache alone
    assert c.get("a")[0].max() == 0
    assert not c.put("huge", arrays(301)) and c.get("huge") is None  # larger than the budget: not stored
    s = c.stats()
    assert s["bytes_used"] == 300 and s["items"] == 3 and s["budget_bytes"] == 300
    assert s["hits"] == 4 and s["misses"] == 2 and s["hit_rate"] == pytest.approx(4 / 6)
    region = (slice(0, 1), slice(1, 3))
    c.put("img", (np.arange(12).reshape(1, 3, 4),))
    np.testing.assert_array_equal(c.get("img", region)[0], [[[1, 2]]])


def test_lru_never_exceeds_budget_under_random_puts():
    rng = np.random.default_rng(0)
    c = LRUCache(10_000)
    for _ in range(2000):
        k = int(rng.integers(0, 50))
        if c.get(k) is None:
            c.put(k, arrays(int(rng.integers(1, 4000))))
        assert c.stats()["bytes_used"] <= 10_000


class Probe(Dataset):
    """Loads a sample, then reports this worker's cache numbers."""

    def __init__(self, ds: SpikeDeblurDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.ds[i]
        s = self.ds.cache_stats()
        return torch.tensor([os.getpid(), s["bytes_used"], s["budget_bytes"], s["items"], s["hits"]], dtype=torch.float64)


def test_cache_stays_within_budget_with_workers(dataset_root):
    h = w = 24
    frame = 2 * 3 * h * w + 2 * 4 * h * w  # blur + sharp uint8, 4 float16 voxel bins
    total = 6 * frame  # 3 frames per worker with 2 workers; the dataset has 20 frames
    ds = SpikeDeblurDataset(dataset_root, "train", seq_len=2, num_bins=4, crop=16, flips=True, cache_bytes=total, workers=2)
    ds[0]
    assert ds.cache_stats()["budget_bytes"] == 0  # the main process leaves the budget to the workers
    loader = DataLoader(Probe(ds), batch_size=None, num_workers=2,
                        sampler=RandomSampler(Probe(ds), replacement=True, num_samples=120, generator=torch.Generator().manual_seed(0)))
    rows = torch.stack(list(loader))
    pids = rows[:, 0].unique()
    assert len(pids) == 2
    assert torch.all(rows[:, 1] <= rows[:, 2])  # never above the per-worker budget
    assert torch.all(rows[:, 2] == total // 2)  # workers split the budget: together never above it
    assert rows[:, 3].max() == 3  # evictions happened: each worker holds at most 3 of the 20 frames
    assert rows[:, 4].max() > 0  # and the cache served hits


def test_dataset_items_and_precomputed_voxels(dataset_root):
    ds = SpikeDeblurDataset(dataset_root, "train", seq_len=3, num_bins=4, crop=16, flips=True, cache_bytes=2**24)
    np.random.seed(0)
    item = ds[1]
    assert item["blur"].shape == (3, 3, 16, 16) and item["sharp"].shape == (3, 3, 16, 16) and item["spike"].shape == (3, 4, 16, 16)
    assert 0 <= item["blur"].min() and item["blur"].max() <= 1 and item["cache_hit"] == 0.0
    assert ds[1]["cache_hit"] == 1.0
    assert len(ds) == 3 * (5 - 3 + 1) and list(ds.sample_groups) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    full = SpikeDeblurDataset(dataset_root, "train", seq_len=2, num_bins=4)
    pre = SpikeDeblurDataset(dataset_root, "train", seq_len=2, num_bins=4, use_precomputed_voxels=True)
    torch.testing.assert_close(full[0]["spike"], pre[0]["spike"], atol=1e-3, rtol=0)
    raw = SpikeDeblurDataset(dataset_root, "train", seq_len=2, spike_input="raw")
    spikes = raw[0]["spike"]
    assert spikes.shape == (2, 8, 24, 24) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    seq = sorted((dataset_root / "train").iterdir())[0]
    np.testing.assert_array_equal(spikes[0].numpy(), S.read_dat(seq / "spike" / "000000.dat", 24, 24))
    with pytest.raises(UserError, match="num_bins=16 exceeds"):
        SpikeDeblurDataset(dataset_root, "train", seq_len=2, num_bins=16)[0]
    with pytest.raises(UserError, match="does not exist"):
        SpikeDeblurDataset(dataset_root, "test", seq_len=2)


def test_spike_format_of_meta_json_is_read_with_the_default_config(tmp_path):
    root, seq = small_dataset(tmp_path / "ds")
    streams = {f.stem: S.read_dat(f, 16, 16) for f in (seq / "spike").glob("*.dat")}
    for stem, spikes in streams.items():
        S.write_dat(seq / "spike" / f"{stem}.dat", spikes, "bytes")
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "spike_format": "bytes"}))
    cfg = resolve([f"data.root={root}", "data.num_bins=2"])
    ds = SpikeDeblurDataset(root, "val", 1, **dataset_kwargs(cfg))  # as the recipe builds it
    np.testing.assert_allclose(ds[0]["spike"][0].numpy(), S.voxelize(streams["000000"], 2), atol=1e-3)
    for stem, spikes in streams.items():  # an explicit data.spike_format wins over meta.json
        S.write_dat(seq / "spike" / f"{stem}.dat", spikes, "bitpacked")
    cfg = resolve([f"data.root={root}", "data.num_bins=2", "data.spike_format=bitpacked"])
    ds = SpikeDeblurDataset(root, "val", 1, **dataset_kwargs(cfg))
    np.testing.assert_allclose(ds[1]["spike"][0].numpy(), S.voxelize(streams["000001"], 2), atol=1e-3)


def test_unpadded_frame_numbers_are_read_in_time_order(tmp_path):
    root, seq = small_dataset(tmp_path / "ds", frames=12)
    for sub in ("blur", "sharp", "spike"):
        for f in (seq / sub).iterdir():
            f.rename(f.with_name(f"{int(f.stem)}{f.suffix}"))  # 000009.png -> 9.png
    ds = SpikeDeblurDataset(root, "val", 2, spike_input="raw")
    assert list(ds.frame_stem) == [str(i) for i in range(12)]
    item = ds[9]  # the clip of frames 9 and 10
    for k, stem in enumerate(("9", "10")):
        np.testing.assert_array_equal((item["blur"][k] * 255).round().byte().numpy(), read_image(seq / "blur" / f"{stem}.png"))
        np.testing.assert_array_equal((item["sharp"][k] * 255).round().byte().numpy(), read_image(seq / "sharp" / f"{stem}.png"))
        np.testing.assert_array_equal(item["spike"][k].numpy(), S.read_dat(seq / "spike" / f"{stem}.dat", 16, 16))



def test_upper_case_image_suffixes_are_read(tmp_path):
    root, seq = small_dataset(tmp_path / "ds", frames=4)
    want = {sub: read_image(seq / sub / "000001.png") for sub in ("blur", "sharp")}
    for sub in ("blur", "sharp"):
        for f in (seq / sub).iterdir():
            f.rename(f.with_suffix(".PNG"))
    item = SpikeDeblurDataset(root, "val", 2, spike_input="raw")[1]
    for sub in ("blur", "sharp"):
        np.testing.assert_array_equal((item[sub][0] * 255).round().byte().numpy(), want[sub])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 16 pretended CPUs on a smaller machine
@pytest.mark.parametrize("cpus", [2, 16])
def test_cache_is_sized_for_the_workers_core_starts(monkeypatch, cpus):
    monkeypatch.setattr(core_data, "cpu_count", lambda: cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cfg = resolve(["train.device=cpu"])
    assert cfg.loader.num_workers == "auto"
    loader, _ = core_data.build_loader([torch.zeros(2)] * 4, 2, cfg.loader, 0, 0, 1, False, cpu_training=True)
    assert loader_workers(cfg) == loader.num_workers
    assert f"{loader.num_workers} workers per process" in describe_loader(cfg)


@pytest.mark.parametrize("setting,cpus,gpus,expected", [
    ("auto", 40, 3, (30, 10)),  # 80% of 40 = 32 -> 10 per GPU
    ("auto", 64, 4, (48, 12)),
    ("auto", 8, 1, (6, 6)),
    ("auto", 8, 2, (8, 4)),  # 80% gives 3 per GPU; the machine has 4 per GPU
    ("auto", 16, 8, (8, 1)),  # not enough CPUs for 4 per GPU: stay at 80%
    ("auto", 2, 1, (1, 1)),
    ("cpu*0.9", 40, 1, (36, 36)),
    (12, 40, 3, (12, 4)),
    (64, 16, 1, (16, 16)),  # never above the CPU count
])
def test_total_workers_rule(setting, cpus, gpus, expected):
    assert total_workers(setting, cpus, gpus) == expected


def test_total_workers_rejects_nonsense():
    with pytest.raises(UserError, match="total_workers"):
        total_workers("lots", 8, 1)


def test_memory_line_warns_above_90_percent(monkeypatch, capfd):
    from collections import namedtuple

    from trainhub_vrt_spike import monitor

    vm = namedtuple("vm", "total available percent")
    monkeypatch.setattr(monitor.psutil, "virtual_memory", lambda: vm(256 * 2**30, 256 * 2**30 - int(125.4 * 2**30), 49.0))
    monitor.report(100)
    err = capfd.readouterr().err
    assert re.fullmatch(r"\[Step 100\] Memory - Process: [\d.]+MB \([\d.]+%\), System: 125\.4/256\.0GB \(49\.0%\)\n", err)
    monkeypatch.setattr(monitor.psutil, "virtual_memory", lambda: vm(256 * 2**30, 10 * 2**30, 96.1))
    monitor.report(200)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 3 and "System: 246.0/256.0GB (96.1%)" in lines[0]
    assert "critically high (96.1%)" in lines[1] and "data.cache_size_gb" in lines[2] and "workers" in lines[2]
