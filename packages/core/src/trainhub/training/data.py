"""Data loading the trainer owns: resumable distributed sampling, per-sample seeding, loader settings.

Exact resume needs two things from data: the order of samples (a permutation from ``seed`` and
``epoch``, sliced per rank, started at any position) and the randomness of augmentations. The
sampler yields ``(epoch, index)`` pairs and :class:`SeededDataset` seeds ``random``, ``numpy`` and
``torch`` from each batch's first pair before calling the real dataset, so a crop or flip depends
only on the batch position, not on which worker or which resumed run loaded it.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainhub.config import LoaderConfig


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing run seed, epoch and sample index (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


class SeededDataset(Dataset):
    """Wraps a dataset: fetching a batch of ``(epoch, i)`` keys seeds ``random``, ``numpy`` and the
    torch CPU generator from the batch's first key, then returns ``[inner[i] for i in ...]``.

    One seed per batch (about 10 us) rather than per sample keeps the cost invisible next to a
    training step; batches are fixed by (seed, epoch, position), so resumed runs see the same
    augmentations. In the main process (``num_workers=0``) the torch generator's previous state is
    restored afterwards so data loading never disturbs the training stream; ``random`` and ``numpy`` are
    left as loading left them, because the trainer restarts both at every step (saving and restoring
    NumPy's state costs ~0.1 ms a batch).
    """

    def __init__(self, inner: Dataset, seed: int) -> None:
        self.inner = inner
        self.seed = seed

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def _seed(self, key: tuple[int, int]) -> None:
        s = sample_seed(self.seed, key[0], key[1])
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.default_generator.manual_seed(s)  # CPU generator only: torch.manual_seed also touches CUDA (~100x slower)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """Batched fetch (used by DataLoader)."""
        if torch.utils.data.get_worker_info() is not None:
            self._seed(keys[0])
            return [self.inner[k[1]] for k in keys]
        saved = torch.default_generator.get_state()
        try:
            self._seed(keys[0])
            return [self.inner[k[1]] for k in keys]
        finally:
            torch.default_generator.set_state(saved)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]


class ResumableSampler(Sampler):
    """Distributed, epoch-seeded sampler that can start mid-epoch: the base of every training sampler.

    Each epoch's order comes from :meth:`epoch_order` (a permutation of ``(seed, epoch)``, or the plain order
    without shuffling) and :meth:`share` gives rank ``r`` of ``w`` every w-th index (the order padded or truncated
    to a multiple of ``w`` like ``DistributedSampler``). ``start`` skips that many of this rank's samples in the
    current epoch (the resume position). A sampler plugin overrides :meth:`epoch_order` (and :meth:`share` where
    ranks should take blocks): the order must depend on ``(seed, epoch)`` alone, so a resumed run continues it.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True) -> None:
        self.size, self.shuffle, self.seed, self.rank, self.world, self.drop_last = size, shuffle, seed, rank, world, drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        if self.drop_last:
            return self.size // self.world
        return (self.size + self.world - 1) // self.world

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

    def generator(self) -> torch.Generator:
        """A generator seeded from ``(seed, epoch)``: draw an epoch's randomness from it."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def epoch_order(self) -> list[int]:
        """This epoch's order of the dataset's indices, the same on every rank."""
        return torch.randperm(self.size, generator=self.generator()).tolist() if self.shuffle else list(range(self.size))

    def share(self, order: list[int]) -> list[int]:
        """This rank's indices of ``order``: every world-th one, after padding to a multiple of the world size."""
        total = self.per_rank() * self.world
        if total > len(order):
            order = order + order[: total - len(order)]
        return order[:total][self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.share(self.epoch_order())[self.start :]:
            yield (self.epoch, i)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def oversubscribed(load: float, cpus: int) -> bool:
    """A load average above the usable CPUs by more than half a process: other processes compete for the cores,
    and a run's steps go slower and unevenly (the trainer warns at start-up, ``trainhub doctor`` says so)."""
    return load > cpus + 0.5


def auto_workers(local_world_size: int = 1, cpu_training: bool = False) -> int:
    """``loader.num_workers: auto``. With a GPU: ``cpus // processes - 1``, at most 8 (one core per process runs the
    step). Training on the CPU, the step wants the cores too: no worker up to 2 cores per process (loading in-process
    beats a worker fighting the step for one of two cores), else a quarter of them, at most 8."""
    per_process = cpu_count() // max(1, local_world_size)
    if cpu_training:
        return 0 if per_process <= 2 else min(8, per_process // 4)
    return max(0, min(8, per_process - 1))


def cpu_threads(local_world_size: int, workers: int) -> int:
    """Intra-op threads for training on the CPU: this process's share of the cores less its loader workers."""
    return max(1, cpu_count() // max(1, local_world_size) - workers)


def worker_init(worker_id: int) -> None:
    """Workers get distinct, reproducible seeds; :class:`SeededDataset` reseeds per sample anyway."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        s = info.seed % (2**32)
        random.seed(s)
        np.random.seed(s)


def shm_free_bytes() -> Optional[int]:
    """Free bytes in /dev/shm, where DataLoader workers pass batches to the main process (None: no /dev/shm)."""
    import shutil

    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def batch_bytes(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(batch_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(batch_bytes(v) for v in batch)
    return 0


def workers_that_fit(workers: int, prefetch: int, per_batch: int, free: Optional[int], margin: float = 1.5) -> int:
    """How many workers' prefetched batches fit in ``free`` shared-memory bytes (with a margin)."""
    if free is None or workers == 0 or per_batch == 0:
        return workers
    return min(workers, int(free // (per_batch * prefetch * margin)))


def build_loader(
    dataset: Dataset,
    batch_size: int,
    cfg: LoaderConfig,
    seed: int,
    rank: int,
    world: int,
    pin_memory: bool,
    collate_fn: Optional[Callable[[list[Any]], Any]] = None,
    shuffle: Optional[bool] = None,
    drop_last: Optional[bool] = None,
    warn: Optional[Callable[[str, dict[str, Any]], None]] = None,
    sampler: Optional[ResumableSampler] = None,
    cpu_training: bool = False,
) -> tuple[DataLoader, ResumableSampler]:
    """A DataLoader over :class:`SeededDataset` with ``sampler`` (default: a plain :class:`ResumableSampler`).

    Before starting workers, one batch's size is measured and ``workers x prefetch_factor`` batches are
    checked against free /dev/shm (small in containers): workers are reduced with one warning (to 0,
    loading in-process, if none fit) instead of dying later with "Bus error".
    """
    shuffle = cfg.shuffle if shuffle is None else shuffle
    drop_last = cfg.drop_last if drop_last is None else drop_last
    if sampler is None:
        sampler = ResumableSampler(len(dataset), shuffle, seed, rank, world, drop_last)  # type: ignore[arg-type]
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = auto_workers(local_world, cpu_training) if cfg.num_workers == "auto" else int(cfg.num_workers)
    seeded = SeededDataset(dataset, seed)
    if workers > 0:
        n = min(batch_size, len(dataset))  # type: ignore[arg-type]
        batch = seeded.__getitems__([(0, i) for i in range(n)])  # seeded: measuring never moves the training RNG
        per_batch = batch_bytes((collate_fn or torch.utils.data.default_collate)(batch))
        free = shm_free_bytes()
        fit = workers_that_fit(workers, cfg.prefetch_factor, per_batch, free)
        if fit < workers:
            msg = (f"/dev/shm has {free / 2**20:.0f} MiB free but {workers} workers x prefetch {cfg.prefetch_factor} x "
                   f"{per_batch / 2**20:.1f} MiB batches need about {workers * cfg.prefetch_factor * per_batch * 1.5 / 2**20:.0f} MiB; "
                   f"using {fit} workers (enlarge /dev/shm, e.g. docker --shm-size, or lower loader.prefetch_factor)")
            if warn is not None:
                warn(msg, {"shm_free_mb": free / 2**20, "batch_mb": per_batch / 2**20, "workers": workers, "workers_used": fit})
            else:
                import warnings

                warnings.warn(msg, ResourceWarning, stacklevel=2)
            workers = fit
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor, worker_init_fn=worker_init)
    loader = DataLoader(
        seeded,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        **kwargs,
    )
    return loader, sampler


def close_loader(loader: Optional[DataLoader]) -> None:
    """Stop a loader's worker processes now, at the end of its run or data phase. Left to the garbage collector, a loader
    in a reference cycle could be finalised after its own queues: its workers never got the stop message and each was
    killed after a 5 s timeout, stalling whatever ran next in the process (another run, a test)."""
    it = getattr(loader, "_iterator", None)  # the persistent workers' iterator, kept by the DataLoader between epochs
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    if loader is not None:
        loader._iterator = None
