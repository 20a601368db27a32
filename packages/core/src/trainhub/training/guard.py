"""Non-finite training state: skipped steps, the stop after too many in a row, and which checkpoints are good.

A step whose loss or gradients are not finite is skipped and counted; ``train.max_nonfinite`` in a row stop the
run with a message naming the newest checkpoint known good. A checkpoint is never written from non-finite
weights, EMA or optimizer state, and pruning never removes the newest good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from trainhub.errors import TrainingStopped
from trainhub.training import checkpoint as ckpt


class NonFiniteGuard:
    """The non-finite counters a checkpoint keeps (``training_state.json``), and the policy built on them."""

    def __init__(self, max_in_row: int) -> None:
        self.max_in_row = max_in_row
        self.in_row = 0
        self.total = 0
        self.since = 0  # first step of the current run of non-finite steps: checkpoints before it are good

    def state(self) -> dict[str, int]:
        return {"nonfinite_total": self.total, "nonfinite_in_row": self.in_row, "nonfinite_since": self.since}

    def load(self, state: dict[str, Any]) -> None:
        self.total, self.in_row, self.since = (state.get(k, 0) for k in ("nonfinite_total", "nonfinite_in_row", "nonfinite_since"))

    def reset(self) -> None:
        self.in_row = self.total = 0

    def skipped(self, step: int, what: str, run_dir: Optional[Path], announce: bool) -> None:
        """Step ``step`` (of optimizer ``what``) was not finite and is skipped; raise once too many came in a row."""
        if self.in_row == 0:
            self.since = step
        self.in_row += 1
        self.total += 1
        if announce:
            print(f"trainhub: non-finite loss/gradients at step {step} ({what}); step skipped "
                  f"({self.in_row} in a row, {self.total} total)", flush=True)
        if self.in_row >= self.max_in_row:
            raise TrainingStopped(
                f"{self.in_row} non-finite steps in a row at step {step} (train.max_nonfinite={self.max_in_row}): lower "
                f"train.lr, check the data, or use precision bf16/fp32; {self.good_checkpoint_note(run_dir, step)}"
            )

    def stepped(self) -> None:
        """A finite step went through."""
        self.in_row = 0

    def good_bound(self, step: int) -> int:
        """Checkpoints of steps below this are known good: finite (checked at save) and their weights went on to
        a finite optimizer step. Inside a stretch of non-finite steps that is the stretch's first step; else the
        current one.

        Finite is not enough: with ``train.lr=1e30`` one step leaves weights near 1e30, finite but garbage, and
        every later step is non-finite; those checkpoints are finite, and bad. A finite step after them is
        the evidence the run itself gives that weights still work, at no cost. Bad data cannot be told from bad
        weights this way, so a checkpoint whose next steps were non-finite is not called good (the stop message
        lists it). Weights that grow large but keep giving finite losses are the loss-range watch's to catch."""
        return self.since if self.in_row else step

    def check_state(self, bad: dict[str, str], name: str, step: int, run_dir: Optional[Path]) -> None:
        """Refuse to write checkpoint ``name`` when ``bad`` (group -> an offending tensor) names non-finite state."""
        if bad:
            what = "; ".join(f"{g} (e.g. {t})" for g, t in bad.items())
            raise TrainingStopped(f"non-finite values at step {step} in {what}: {name} not written; lower train.lr, "
                                  f"check the data, or use precision bf16/fp32; {self.good_checkpoint_note(run_dir, step)}")

    def good_checkpoint_note(self, run_dir: Optional[Path], step: int) -> str:
        """Where to continue from: the newest checkpoint known good (:meth:`good_bound`), its files read back."""
        if run_dir is None:
            return "no checkpoint was written"
        root = run_dir / "checkpoints"
        bound = self.good_bound(step)
        after = [p.name for s, p in ckpt.list_checkpoints(root) if s >= bound]
        shown = (f" ({', '.join(after[-3:])}{', ...' if len(after) > 3 else ''} {'holds' if len(after) == 1 else 'hold'} "
                 f"the weights that gave the non-finite steps)") if after else ""
        good = ckpt.newest_before(root, bound, verify=True)
        if good is None:
            return f"no checkpoint of this run is known good{shown}; start again"
        if not after:
            return f"newest good checkpoint: {good}"
        return f"newest good checkpoint: {good}{shown}; continue from it with --resume {good}"
