"""Progress bars for loops a person waits on: eval batches, sampling steps (tqdm on stderr)."""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional


def no_progress(iterable: Iterable[Any], desc: str = "", total: Optional[int] = None) -> Iterable[Any]:
    return iterable


def console_progress(iterable: Iterable[Any], desc: str = "", total: Optional[int] = None) -> Iterable[Any]:
    """A transient bar (gone when the loop ends) where stderr is a terminal; the plain iterable elsewhere (logs, CI)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)
