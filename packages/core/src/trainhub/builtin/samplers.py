"""The built-in training samplers (registered as "random" and "grouped")."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from trainhub.components import SamplerSettings
from trainhub.errors import ConfigError
from trainhub.training.data import ResumableSampler


class GroupedSampler(ResumableSampler):
    """Keeps samples of a group (frames of a video sequence) together, to raise cache hit rates.

    Each epoch shuffles the groups, cuts each group's indices (in order) into windows of ``window``
    samples and shuffles the windows within the group; ranks take contiguous blocks of that order so
    a rank's consecutive batches stay inside a sequence. Resumes mid-epoch like its parent.
    """

    def __init__(self, groups: Any, window: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True) -> None:
        super().__init__(len(groups), shuffle, seed, rank, world, drop_last)
        self.groups = np.asarray(groups)
        self.window = window

    def epoch_order(self) -> list[int]:
        g = self.generator()
        ids = np.unique(self.groups)
        order_ids = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()] if self.shuffle else list(ids)
        order: list[int] = []
        for gid in order_ids:
            members = np.flatnonzero(self.groups == gid).tolist()
            windows = [members[i : i + self.window] for i in range(0, len(members), self.window)]
            if self.shuffle:
                windows = [windows[i] for i in torch.randperm(len(windows), generator=g).tolist()]
            for w in windows:
                order.extend(w)
        return order

    def share(self, order: list[int]) -> list[int]:
        """A contiguous block per rank, so a rank's consecutive batches stay inside a sequence."""
        per = self.per_rank()
        if per * self.world > len(order):
            order = order + order[: per * self.world - len(order)]
        return order[self.rank * per : (self.rank + 1) * per]


def random(dataset: Any, s: SamplerSettings) -> ResumableSampler:
    """A fresh permutation every epoch (the dataset's order with ``loader.shuffle: false``)."""
    return ResumableSampler(len(dataset), s.shuffle, s.seed, s.rank, s.world, s.drop_last)


def grouped(dataset: Any, s: SamplerSettings, window: Optional[int] = None) -> ResumableSampler:
    """The dataset's ``sample_groups`` (one id per sample) kept together in windows of ``window`` samples (default
    ``loader.group_window``)."""
    groups = getattr(dataset, "sample_groups", None)
    window = window or s.group_window
    if groups is None:
        raise ConfigError(f"loader.sampler=grouped: the training set ({type(dataset).__name__}) has no sample_groups")
    if not window:
        raise ConfigError("loader.sampler=grouped needs loader.group_window (or loader.sampler_args.window)")
    return GroupedSampler(groups, window, s.shuffle, s.seed, s.rank, s.world, s.drop_last)


def auto(dataset: Any, s: SamplerSettings) -> ResumableSampler:
    """``grouped`` when ``loader.group_window`` is set and the dataset has ``sample_groups`` (and shuffles), else
    ``random``."""
    if s.group_window and s.shuffle and getattr(dataset, "sample_groups", None) is not None:
        return grouped(dataset, s)
    return random(dataset, s)
