"""The run directory: one writer at a time, a new run never over an old one's checkpoints, and nothing
written before the run is accepted (its config valid, its resume checked, its models and data built).

Only rank 0 of a torchrun job takes the lock and writes here; the other ranks learn the outcome from it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from trainhub.errors import UserError
from trainhub.training import storage

LOCK_FILE = "trainhub.lock"

_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not hold its parent's lock: a flock belongs to the open file,
    which the child shares, and orphaned workers outlive a killed parent by seconds."""
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive ``flock`` on ``<run>/trainhub.lock`` for the life of the run.

    The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a lock file left
    behind by a dead run is harmless: the next run simply takes it. Forked children close their copy of the
    descriptor (:func:`_close_in_child`), so only the run's own process holds it. The file records the
    holder's pid and host, for the one-line refusal a second writer gets.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        import fcntl

        while True:
            with storage.writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._holder()
                who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
                raise UserError(f"run directory {self.path.parent} is in use by another trainhub run ({who}); wait for "
                                f"it to end, or choose another --run-dir or run_name") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed (a refused run cleaning up) between our open and our lock: again
        with storage.writing(self.path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self.fd = fd
        _held.add(fd)

    def _holder(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.fd is not None:
            _held.discard(self.fd)
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every checkpoint directory in the run, complete or not (temporary ``.tmp`` ones aside)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and "." not in p.name)


def check_target(run_dir: Path, resume_from: Optional[Path]) -> list[Path]:
    """Refuse to write where another run's checkpoints would mix with this one's; returns the checkpoints of
    this run that are newer than ``resume_from`` (its replaced future, see :meth:`RunDir.accept`).

    A new run needs a directory without checkpoints (pruning by step number would otherwise delete the new
    run's checkpoints and leave the old run's for ``--resume auto``). A resumed run continues in its own
    directory, or in one without checkpoints.
    """
    from trainhub.training import checkpoint as ckpt

    existing = checkpoint_dirs(run_dir)
    if not existing:
        return []
    if resume_from is None:
        raise UserError(f"run directory {run_dir} already holds checkpoints of an earlier run (newest: {existing[-1].name}); "
                        f"continue it with --resume auto, or choose another --run-dir or run_name")
    if resume_from.resolve().parent != (run_dir / "checkpoints").resolve():
        raise UserError(f"run directory {run_dir} already holds checkpoints of another run; resume {resume_from} into "
                        f"an empty --run-dir")
    step = ckpt.read_state(resume_from)["step"]
    return [p for s, p in ckpt.list_checkpoints(run_dir / "checkpoints") if s > step]


class RunDir:
    """The run directory as rank 0 holds it: checked and locked first, its files written once accepted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path)
        self.created = False
        self.accepted = False
        self.newer: list[Path] = []  # checkpoints after the one resumed from: the future this run replaces

    def open(self, resume_from: Optional[Path]) -> None:
        check_target(self.path, resume_from)
        self.created = not self.path.exists()
        with storage.writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self.newer = check_target(self.path, resume_from)  # again under the lock: another run may have written meanwhile

    def write_text(self, name: str, text: str) -> None:
        """Write ``<run>/<name>`` atomically (temporary name, fsync, rename)."""
        path = self.path / name
        tmp = path.with_name(path.name + ".tmp")
        with storage.writing(path, partial=tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def accept(self, step: int) -> None:
        """The run starts at ``step``: what it writes from now on stays.

        Resumed from an earlier checkpoint than the newest, it replaces what came after: the newer checkpoints
        move to ``checkpoints/replaced-<time>/``, out of reach of ``--resume auto`` and of pruning (which would
        otherwise mix the two histories) but not deleted, and ``best.json`` no longer names one of them."""
        if self.newer:
            aside = self.path / "checkpoints" / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            with storage.writing(aside):
                aside.mkdir()
                for p in self.newer:
                    os.replace(p, aside / p.name)
            best = self.path / "best.json"
            try:
                named = json.loads(best.read_text()).get("checkpoint") if best.is_file() else None
            except (OSError, ValueError):
                named = None
            if named in {p.name for p in self.newer}:
                storage.remove(best)  # written again at the next best eval
            print(f"trainhub: resuming at step {step} replaces what this run did after it: "
                  f"{', '.join(p.name for p in self.newer[-3:])}{', ...' if len(self.newer) > 3 else ''} moved to {aside}",
                  flush=True)
        self.accepted = True

    def close(self) -> None:
        """Release the lock; a run that never started leaves no directory it created behind."""
        discard = self.created and not self.accepted
        if discard and self.lock.fd is not None:
            storage.remove(self.lock.path)  # while holding it: a waiting run that opened it retries (RunLock.acquire)
        self.lock.release()
        if discard:
            try:
                self.path.rmdir()
            except OSError:  # not empty: something else is in it now
                pass
