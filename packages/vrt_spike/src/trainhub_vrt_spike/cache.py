"""A least-recently-used RAM cache of decoded frames with a byte budget, safe with DataLoader workers.

How the budget is shared: every process that loads data keeps its own cache (DataLoader workers are
separate processes; a cache shared between them would need shared memory and locking). The budget
``total_bytes`` covers all of them on one machine together: each process may hold at most

    total_bytes / (local ranks x workers per rank)     when the loader has workers
    total_bytes / local ranks                          when it loads in the main process (workers = 0)

(local ranks = ``LOCAL_WORLD_SIZE``, set by torchrun; 1 otherwise). With workers, the main process
caches nothing: it only loads the sample or two core measures before starting them. A cache notices
when it finds itself in a new process (a forked worker) and starts empty there, so nothing the parent
held is counted twice. Values are tuples of numpy arrays; :meth:`LRUCache.get` always returns copies,
so callers may modify what they get.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Hashable, Optional

import numpy as np


def local_world_size() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class LRUCache:
    """Byte-budgeted LRU of ``tuple[np.ndarray, ...]`` values (see the module docstring for the budget split).

    ``workers``: the DataLoader workers per rank that will use this cache (0: loading in the main process).
    """

    def __init__(self, total_bytes: int, workers: int = 0) -> None:
        self.total_bytes = int(total_bytes)
        self.workers = int(workers)
        self._pid: Optional[int] = None
        self._store: OrderedDict[Hashable, tuple[np.ndarray, ...]] = OrderedDict()
        self._used = 0
        self._budget = 0
        self.hits = 0
        self.misses = 0

    def _process_budget(self) -> int:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        if info is not None:
            return self.total_bytes // (local_world_size() * max(1, info.num_workers))
        return 0 if self.workers > 0 else self.total_bytes // local_world_size()

    def _check_process(self) -> None:
        pid = os.getpid()
        if pid != self._pid:  # first use, or a forked worker: start empty with this process's share
            self._pid = pid
            self._store = OrderedDict()
            self._used = 0
            self.hits = self.misses = 0
            self._budget = self._process_budget()

    @property
    def budget_bytes(self) -> int:
        self._check_process()
        return self._budget

    def get(self, key: Hashable, region: Optional[tuple[slice, slice]] = None) -> Optional[tuple[np.ndarray, ...]]:
        """Copies of the cached arrays (cropped to ``region`` = (rows, cols) of the last two axes first), or None."""
        self._check_process()
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self._store.move_to_end(key)
        self.hits += 1
        if region is None:
            return tuple(a.copy() for a in value)
        return tuple(a[..., region[0], region[1]].copy() for a in value)

    def put(self, key: Hashable, value: tuple[np.ndarray, ...]) -> bool:
        """Store ``value`` (not copied: do not modify it afterwards); evicts least recently used entries
        until it fits. Returns False, storing nothing, when it is larger than the whole budget."""
        self._check_process()
        size = sum(a.nbytes for a in value)
        if key in self._store:
            self._used -= sum(a.nbytes for a in self._store.pop(key))
        if size > self._budget:
            return False
        while self._used + size > self._budget:
            _, old = self._store.popitem(last=False)
            self._used -= sum(a.nbytes for a in old)
        self._store[key] = value
        self._used += size
        return True

    def stats(self) -> dict[str, float]:
        """This process's items, bytes used, budget and hit rate."""
        self._check_process()
        total = self.hits + self.misses
        return {
            "items": float(len(self._store)),
            "bytes_used": float(self._used),
            "budget_bytes": float(self._budget),
            "hits": float(self.hits),
            "misses": float(self.misses),
            "hit_rate": self.hits / total if total else 0.0,
        }

    def __len__(self) -> int:
        return len(self._store)
