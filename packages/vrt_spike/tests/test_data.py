"""The LRU RAM cache, the dataset and the DataLoader worker rule."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from trainhub import UserError
from trainhub_vrt_spike import simulate as sim
from trainhub_vrt_spike import spike as S
from trainhub_vrt_spike.cache import LRUCache
from trainhub_vrt_spike.config import total_workers
from trainhub_vrt_spike.data import SpikeDeblurDataset


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gopro_spike")
    return sim.generate(root, sim.SimSettings(size=24, frames=5, subframes=8), 3, 1, seed=0, voxel_bins=4, progress=False)


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
