"""Loss-range watch: a recipe declares the range each loss term should stay in per phase, the trainer
warns once per excursion (``trainhub_warning`` -> metrics.jsonl -> ``trainhub analyze``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class LossRange:
    """``term`` should stay within ``[low, high]`` (either may be None) between ``start`` and ``end``
    (optimizer steps, or epochs when ``unit="epoch"``). ``falling=True`` instead expects the term to
    end the phase below where it started (checked when the phase ends)."""

    term: str
    low: Optional[float] = None
    high: Optional[float] = None
    start: int = 0
    end: Optional[int] = None
    unit: str = "step"  # "step" or "epoch"
    falling: bool = False
    phase: str = ""  # a label for messages, e.g. "warm-up", "after GAN start"

    def active(self, step: int, epoch: int) -> bool:
        t = epoch if self.unit == "epoch" else step
        return t >= self.start and (self.end is None or t < self.end)

    def label(self) -> str:
        span = f"{self.unit}s {self.start}-{self.end if self.end is not None else 'end'}"
        return f"{self.phase} ({span})" if self.phase else span


class LossWatch:
    """Tracks the declared ranges over logged metrics; returns one warning per new excursion."""

    def __init__(self, ranges: list[LossRange]) -> None:
        self.ranges = ranges
        self.outside: set[int] = set()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.reported_trend: set[int] = set()

    def check(self, step: int, epoch: int, metrics: dict[str, float]) -> list[tuple[str, dict]]:
        out = []
        for i, r in enumerate(self.ranges):
            if r.term not in metrics:
                continue
            v = metrics[r.term]
            if r.falling:
                if r.active(step, epoch):
                    self.first.setdefault(i, v)
                    self.last[i] = v
                elif i in self.first and i not in self.reported_trend:
                    self.reported_trend.add(i)
                    if not self.last[i] < self.first[i]:
                        out.append((f"{r.term} did not fall during {r.label()}: {self.first[i]:.4g} -> {self.last[i]:.4g}",
                                    {"term": r.term, "first": self.first[i], "last": self.last[i]}))
                continue
            if not r.active(step, epoch):
                continue
            bad = (r.low is not None and v < r.low) or (r.high is not None and v > r.high)
            if bad and i not in self.outside:
                self.outside.add(i)
                out.append((f"{r.term}={v:.4g} outside [{r.low}, {r.high}] during {r.label()}",
                            {"term": r.term, "value": v, "low": r.low, "high": r.high}))
            elif not bad:
                self.outside.discard(i)
        return out
