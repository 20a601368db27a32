"""What a failed write means: a full disk, a read-only file system or a permission, said in one line.

The writers report it differently: Python raises ``OSError`` with an errno, safetensors a ``SafetensorError``
whose text ends in ``(os error N)``, and ``torch.save`` only ``unexpected pos`` (its zip writer saw a short
write). :func:`writing` turns each into a :class:`DiskError` naming the path and what to do, after removing
the half-written file or directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional

from trainhub.errors import UserError

_ADVICE = {  # errno: (what it is, what to do; {where} is the setting that moves the files)
    errno.ENOSPC: ("no space left on device", "free space on that disk or set {where} to another one"),
    errno.EDQUOT: ("disk quota exceeded", "free space or set {where} to another disk"),
    errno.EROFS: ("read-only file system", "set {where} to a writable place"),
    errno.EACCES: ("permission denied", "make it writable or set {where} to a writable place"),
    errno.EPERM: ("operation not permitted", "make it writable or set {where} to a writable place"),
}
RUN_FILES = "output_dir (or --run-dir)"


class DiskError(UserError):
    """A write failed for a reason of the disk, not of the program."""


def _free(path: Path) -> Optional[str]:
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if free < 1000 or unit == "TB":
                return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
            free /= 1000
    return None


def _read_only(path: Path) -> bool:
    for p in (path, *path.parents):
        try:
            return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            continue
    return False


def disk_errno(exc: BaseException, path: Path) -> Optional[int]:
    """The errno behind a failed write, if it is one of the disk's (see :data:`_ADVICE`), else None."""
    code = getattr(exc, "errno", None)
    if code is None:
        m = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(exc))
        code = int(m.group(1) or m.group(2)) if m else None
    if code is None and "unexpected pos" in str(exc):  # torch's zip writer: a short write, the disk filled up
        code = errno.EROFS if _read_only(path) else errno.ENOSPC
    return code if code in _ADVICE else None


def explain(exc: BaseException, path: Path, where: str = RUN_FILES) -> Optional[str]:
    """``"<reason> (...); <what to do>"`` for a disk error, else None; ``where``: the option that puts the
    files elsewhere."""
    code = disk_errno(exc, path)
    if code is None:
        return None
    reason, advice = _ADVICE[code]
    advice = advice.format(where=where)
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = _free(path)
        reason += f" ({free} free there)" if free else ""
    return f"{reason}; {advice}"


def remove(path: Optional[Path]) -> None:
    """Remove a half-written file or directory, never following a link."""
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def writing(path: Path, partial: Optional[Path] = None, note: str = "", where: str = RUN_FILES) -> Iterator[None]:
    """Write ``path`` inside the block; on any failure remove ``partial`` (the half-written
    temporary file or directory), and turn a disk error into a :class:`DiskError`:
    ``cannot write <path>: no space left on device (12 kB free there); free space ...<note>``."""
    try:
        yield
    except BaseException as exc:
        remove(partial)
        reason = explain(exc, path, where) if isinstance(exc, Exception) else None
        if reason is None:
            raise
        raise DiskError(f"cannot write {path}: {reason}{note}") from None
