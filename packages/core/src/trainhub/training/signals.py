"""SIGINT/SIGTERM for the life of a run: abort a start-up, save-and-exit during training, stop at once on a
second request.

During start-up (plugins, config, models, data: nothing written yet) the first signal raises
:class:`Interrupted`; the CLI prints one line and exits 0. Once the loop runs (:meth:`StopSignals.arm`), the
first signal only sets :attr:`StopSignals.requested`: the trainer saves after the step and exits 0. A
second signal stops at once, except while a checkpoint is being written.

One keypress often arrives more than once: the terminal sends SIGINT to every process of the foreground
group (torchrun's launcher included, which then forwards it to its workers a few milliseconds later), and
forked DataLoader workers inherit the handler. So signals within :data:`SAME_REQUEST_S` of the first count
as the same request, and only the process that installed the handler acts on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType
from typing import Iterator, Optional

#: Signals this close to the first one are the same request delivered twice (a launcher's forward takes
#: milliseconds); a person pressing Ctrl-C again takes longer.
SAME_REQUEST_S = 1.0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal arrived before training started. A KeyboardInterrupt, so that ``except Exception`` in recipe
    code does not swallow it and a program calling :func:`trainhub.train` sees what it expects of Ctrl-C."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class StopSignals:
    """The process's SIGINT/SIGTERM handler while a run starts and trains (see the module docstring)."""

    def __init__(self) -> None:
        self.requested: Optional[str] = None  # name of the first signal, once one arrived in the loop
        self.armed = False  # False: start-up (raise Interrupted); True: training (set requested)
        self.saving = False  # a checkpoint is being written: a second signal waits for it
        self.announce = True  # print the one "received" line (the trainer sets False on ranks other than 0)
        self._first = 0.0
        self._pid = os.getpid()
        self._old: dict[int, object] = {}

    def install(self) -> "StopSignals":
        try:
            for sig in _SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals to the caller
            self._old = {}
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old = {}

    def arm(self) -> None:
        """Training has started: from now on a signal means save after this step and exit."""
        self.armed, self.requested = True, None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.requested is not None:
            if now - self._first < SAME_REQUEST_S or self.saving:
                return  # the same request delivered again, or a save that must complete
            if self.armed:
                raise KeyboardInterrupt  # a second, separate request outside a save: stop at once
        self.requested, self._first = name, now
        if not self.armed:
            raise Interrupted(name)
        if self.announce:
            print(f"trainhub: received {name}; saving a checkpoint after this step (press Ctrl-C again to stop at once)",
                  file=sys.stdout, flush=True)


_active: Optional[StopSignals] = None


def active() -> Optional[StopSignals]:
    """The handler installed by :func:`installed`, if any."""
    return _active


@contextlib.contextmanager
def installed() -> Iterator[StopSignals]:
    """Install a :class:`StopSignals` for the block, or reuse the one an outer block installed (the CLI installs
    it before the slow imports; :func:`trainhub.training.run.train` then finds it)."""
    global _active
    if _active is not None:
        yield _active
        return
    _active = StopSignals().install()
    try:
        yield _active
    finally:
        _active.restore()
        _active = None


def ignore_until_exit() -> None:
    """The run answered a signal and the process is about to exit: ignore SIGINT/SIGTERM from here on.

    A keypress often arrives twice within milliseconds (see the module docstring); a small run saves and ends
    faster than that, and the repeat would otherwise land in the interpreter's shutdown as a KeyboardInterrupt
    traceback. Only for a process that exits next (the CLI), never inside a library call."""
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, signal.SIG_IGN)

