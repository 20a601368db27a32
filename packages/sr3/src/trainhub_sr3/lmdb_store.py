"""The reference's LMDB dataset layout (``datatype: lmdb``), read and written.

One LMDB environment (a folder holding ``data.mdb``) per dataset. Every image is a PNG file's bytes under
an ASCII key naming its kind, resolution(s) and 5-digit index, and ``length`` holds the image count as a
decimal string::

    hr_128_00000      the HR image (128 x 128)
    sr_16_128_00000   the LR image upsampled back to 128 (the network's input)
    lr_16_00000       the LR image (16 x 16)
    length            b"70000"

The reference's loader reads indices 0 .. length-1 (``data_len`` caps it); so do we. An index whose
``hr_``/``sr_`` pair is missing is skipped (the reference substitutes a random other index).
"""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from trainhub import UserError


def keys(l_res: int, r_res: int, i: int) -> dict[str, bytes]:
    """The keys of image ``i``: ``{"hr": b"hr_128_00000", "sr": b"sr_16_128_00000", "lr": b"lr_16_00000"}``."""
    n = str(i).zfill(5)
    return {"hr": f"hr_{r_res}_{n}".encode(), "sr": f"sr_{l_res}_{r_res}_{n}".encode(), "lr": f"lr_{l_res}_{n}".encode()}


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def is_lmdb(path: Path) -> bool:
    return (path / "data.mdb").is_file()


_READERS: dict[tuple[str, int], Any] = {}  # one read-only handle per database and process: lmdb refuses a second


def _reader(path: Path):  # type: ignore[no-untyped-def]
    """The process's read-only handle on ``path`` (loader workers each open their own)."""
    import lmdb

    key = (str(path.resolve()), os.getpid())
    if key not in _READERS:
        for other in [k for k in _READERS if k[0] == key[0]]:  # inherited through fork: lmdb counts it as open here
            _READERS.pop(other).close()
        try:
            _READERS[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as exc:
            raise UserError(f"{path}: not an LMDB database ({exc})") from None
    return _READERS[key]


def _writer(path: Path, map_size: int = 1 << 30):  # type: ignore[no-untyped-def]
    import lmdb

    old = _READERS.pop((str(path.resolve()), os.getpid()), None)
    if old is not None:
        old.close()
    try:
        return lmdb.open(str(path), map_size=map_size, readahead=False, meminit=False)
    except lmdb.Error as exc:
        raise UserError(f"{path}: not an LMDB database ({exc})") from None


def _indices(txn, prefix: bytes) -> set[int]:  # type: ignore[no-untyped-def]
    """Indices of the keys ``prefix + 5 digits`` (one pass over that key range; values are not read)."""
    out, cur = set(), txn.cursor()
    if not cur.set_range(prefix):
        return out
    for k in cur.iternext(keys=True, values=False):
        if not k.startswith(prefix):
            break
        tail = k[len(prefix):]
        if tail.isdigit():
            out.add(int(tail))
    return out


def _resolutions(txn) -> list[str]:  # type: ignore[no-untyped-def]
    """The kinds present, e.g. ``['hr_128', 'lr_16', 'sr_16_128']`` (for an error message)."""
    seen: set[str] = set()
    for k in txn.cursor().iternext(keys=True, values=False):
        head, _, tail = k.decode(errors="replace").rpartition("_")
        if tail.isdigit() and head:
            seen.add(head)
    return sorted(seen)


class LMDBPairs(Dataset):
    """``datatype: lmdb``: the pairs of an LMDB written by the reference's ``prepare_data.py -l`` (or
    ``trainhub prepare sr3 --lmdb``). LR images come from the ``lr_`` keys when present, else bicubic from HR."""

    def __init__(self, root: Path, l_res: int, r_res: int, flips: bool = False, limit: int = -1) -> None:
        if not is_lmdb(root):
            raise UserError(f"{root}: not an LMDB database (no data.mdb; `trainhub prepare sr3 --lmdb` writes one)")
        self.root, self.l_res, self.r_res, self.flips = root, l_res, r_res, flips
        with _reader(root).begin() as txn:
            raw = txn.get(b"length")
            if raw is None or not raw.strip().isdigit():
                raise UserError(f"{root}: the LMDB has no 'length' key (the reference's prepare script writes one)")
            length = int(raw)
            k = keys(l_res, r_res, 0)
            hr = _indices(txn, k["hr"][:-5])
            sr = _indices(txn, k["sr"][:-5])
            self.has_lr = bool(_indices(txn, k["lr"][:-5]))
            if not hr or not sr:
                raise UserError(f"{root}: the LMDB has no {k['hr'][:-5].decode()}*/{k['sr'][:-5].decode()}* images "
                                f"(it holds {', '.join(_resolutions(txn)) or 'none'}): set data.l_resolution/r_resolution")
        wanted = range(length if limit <= 0 else min(limit, length))
        self.indices = [i for i in wanted if i in hr and i in sr]
        if len(self.indices) < len(wanted):
            warnings.warn(f"{root}: {len(wanted) - len(self.indices)} of indices 0..{len(wanted) - 1} have no hr/sr pair "
                          "and are skipped", stacklevel=2)
        if not self.indices:
            raise UserError(f"{root}: none of indices 0..{length - 1} ('length' {length}) has an hr/sr pair")

    def __len__(self) -> int:
        return len(self.indices)

    def _decode(self, data: Optional[bytes], key: bytes, size: int) -> Image.Image:
        if data is None:
            raise UserError(f"{self.root}: key {key.decode()} is missing")
        try:
            img = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as exc:
            raise UserError(f"{self.root}: key {key.decode()} is not a readable image ({type(exc).__name__})") from None
        if img.size != (size, size):
            raise UserError(f"{self.root}: image {key.decode()} is {img.size[0]}x{img.size[1]}, expected {size}x{size} "
                            "(data.l_resolution/r_resolution name the sizes the LMDB was prepared with)")
        return img

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from trainhub_sr3.data import resize, to_tensor

        k = keys(self.l_res, self.r_res, self.indices[i])
        with _reader(self.root).begin() as txn:
            hr = self._decode(txn.get(k["hr"]), k["hr"], self.r_res)
            sr = self._decode(txn.get(k["sr"]), k["sr"], self.r_res)
            lr_bytes = txn.get(k["lr"]) if self.has_lr else None
        lr = self._decode(lr_bytes, k["lr"], self.l_res) if lr_bytes is not None else resize(hr, self.l_res)
        out = [to_tensor(hr), to_tensor(sr), to_tensor(lr)]
        if self.flips and random.random() < 0.5:
            out = [t.flip(-1) for t in out]
        return {"hr": out[0], "sr": out[1], "lr": out[2]}


class LMDBWriter:
    """Writes the reference's layout. Images go in transactions of ``batch`` with ``length`` updated in the
    same transaction, so an interrupted prepare leaves a database whose ``length`` counts complete images only
    (and a second run continues after them). The map grows when full."""

    def __init__(self, out: Path, l_res: int, r_res: int, batch: int = 64) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.l_res, self.r_res, self.batch = out, l_res, r_res, batch
        self.env = _writer(out)
        with self.env.begin() as txn:
            raw = txn.get(b"length")
        self.length = int(raw) if raw is not None and raw.strip().isdigit() else 0
        if self.length:
            with self.env.begin() as txn:
                other = None if txn.get(keys(l_res, r_res, 0)["hr"]) is not None else ", ".join(_resolutions(txn))
            if other is not None:
                self.env.close()
                raise UserError(f"--out {out}: already an LMDB of other sizes ({other}); choose another folder")
        self.pending: list[tuple[bytes, bytes]] = []

    def add(self, lr: Image.Image, hr: Image.Image, sr: Image.Image) -> None:
        k = keys(self.l_res, self.r_res, self.length + len(self.pending) // 3)
        self.pending += [(k["lr"], png_bytes(lr)), (k["hr"], png_bytes(hr)), (k["sr"], png_bytes(sr))]
        if len(self.pending) >= 3 * self.batch:
            self.flush()

    def flush(self) -> None:
        import lmdb

        if not self.pending:
            return
        total = self.length + len(self.pending) // 3
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                    txn.put(b"length", str(total).encode())
                break
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self.length, self.pending = total, []

    def close(self) -> None:
        self.flush()
        self.env.close()
