"""Audio files in and out (soundfile/libsndfile) and the paired dataset the recipe trains on."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from trainhub import UserError

#: What libsndfile reads (mp3 since libsndfile 1.1).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(channels x frames float32, sample_rate)``."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


def to_mono(wave: np.ndarray) -> np.ndarray:
    return wave.mean(axis=0) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio) of a 1-D or channels x frames array."""
    if orig_sr == new_sr:
        return wave
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_sr, new_sr).numpy()


def write_audio_atomic(path: Path, wave: np.ndarray, sample_rate: int, tag: str = "tmp", subtype: str = "PCM_24") -> None:
    """Write a WAV file (``frames`` or ``frames x channels``) to a hidden temporary name next to ``path``, then
    rename: a reader (or an interrupted run) never sees half a file under the final name. Encoded in memory first:
    libsndfile's close fsyncs, which costs more than the encoding on a busy disk.

    24-bit PCM by default: the same samples always give the same bytes (libsndfile stamps float WAVs with a
    time-dated PEAK chunk), and 144 dB of range is plenty; samples must lie in [-1, 1]."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sample_rate, subtype=subtype, format="WAV")
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, tag: str = "tmp") -> None:
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_pair_list(list_file: str | Path) -> list[tuple[str, str]]:
    """Lines ``degraded<TAB>clean`` (paths relative to the list's folder); ``#`` lines are comments."""
    pairs = []
    for n, line in enumerate(Path(list_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise UserError(f"{list_file}:{n}: expected 'degraded<TAB>clean', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


class TimbreRestoreDataset(Dataset):
    """``(degraded, clean)`` pairs from a list file written by ``trainhub prepare timbre_gan``; each item is two
    ``1 x T`` float tensors."""

    def __init__(self, list_file: str | Path, limit: Optional[int] = None) -> None:
        list_file = Path(list_file)
        if not list_file.is_file():
            raise UserError(f"pair list not found: {list_file}")
        pairs = read_pair_list(list_file)[: limit if limit and limit > 0 else None]
        root = list_file.parent
        self.list_file = str(list_file)
        # numpy string arrays, not lists of Python objects: loader workers share them without copy-on-read
        self.degraded = np.array([str(root / d) for d, _ in pairs])
        self.clean = np.array([str(root / c) for _, c in pairs])

    def __len__(self) -> int:
        return len(self.clean)

    def _read(self, path: str) -> np.ndarray:
        try:
            return read_audio(path)[0]
        except Exception as exc:  # LibsndfileError, a truncated or overwritten file after preparation
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{path}: not readable audio ({reason}); the prepared folder is damaged: prepare it again "
                            f"(trainhub prepare timbre_gan --config CFG --out {Path(self.list_file).parent}) or remove the "
                            f"pair from {self.list_file}") from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        degraded = self._read(self.degraded[i])
        clean = self._read(self.clean[i])
        if degraded.shape != clean.shape:
            raise UserError(f"{self.degraded[i]}: shape {degraded.shape} differs from its clean file {self.clean[i]} {clean.shape}")
        return torch.from_numpy(degraded[:1]), torch.from_numpy(clean[:1])
