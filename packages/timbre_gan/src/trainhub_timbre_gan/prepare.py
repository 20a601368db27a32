"""``trainhub prepare timbre_gan``: clean audio (or synthesised music) -> degraded/clean pairs + lists.

Layout of the output folder::

    clean/<name>_<seg>.wav        degraded/<name>_<seg>.wav       24-bit WAV, mono, data.sample_rate; a pair is
                                                                  scaled together if the degraded one passes 1.0
    manifests/<name>.json         per source: its pairs and the degradation chain of each (written last)
    parts/part-<i>-of-<k>.tsv     per shard: its pairs, in stable order
    train.txt  val.txt            degraded<TAB>clean per line: the union of the parts
    prepared.json                 what was prepared, with which settings

Sources are listed in sorted order; shard ``i`` of ``k`` takes sources ``i, i+k, i+2k, ...`` so shards are
disjoint and their union is the unsharded job. A segment's degradation is seeded by (seed, source key, segment
index), so any shard reproduces exactly what the unsharded run writes. Every file is written under a temporary
name and renamed; a source's manifest is written after its pairs, so ``--skip_existing`` resumes an interrupted
run at the first source without one. The shard that completes the set merges the parts into train.txt/val.txt and
validates every listed pair.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import soundfile as sf
import torch

from trainhub import UserError
from trainhub_timbre_gan.data import (
    AUDIO_EXTENSIONS,
    read_audio,
    read_pair_list,
    resample,
    to_mono,
    write_audio_atomic,
    write_text_atomic,
)
from trainhub_timbre_gan.degrade import degrade, segment_rng
from trainhub_timbre_gan.synth import synth_piece

if TYPE_CHECKING:
    from trainhub_timbre_gan.config import TimbreData


@dataclass(frozen=True)
class Source:
    index: int  # position in the sorted source list
    key: str  # relative path under data.source_dir, or synth-NNNNNN
    path: Optional[str]  # None for synthesised music
    split: str  # "train" or "val"


@dataclass
class PrepareResult:
    sources: int = 0
    pairs: int = 0
    skipped_sources: int = 0  # taken from an earlier run (--skip_existing)
    problems: list[str] = field(default_factory=list)  # "path: what is wrong"
    bad_pairs: int = 0  # problems found by validating the listed pairs (the others: unreadable sources, left out)
    merged: bool = False  # train.txt/val.txt written by this call
    seconds: float = 0.0


def fingerprint(data: "TimbreData") -> str:
    """A short hash of every setting that changes the prepared files (not where they go)."""
    d = data.model_dump(mode="json", exclude={"root", "cache_dir", "val_limit"})
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def safe_name(key: str) -> str:
    """File-name stem for a source key: readable, and unique through a CRC of the key."""
    suffix = Path(key).suffix
    base = key[: -len(suffix)] if suffix.lower() in AUDIO_EXTENSIONS else key
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_")[-80:]
    return f"{stem}-{zlib.crc32(key.encode('utf-8')):08x}"


def list_sources(data: "TimbreData", max_files: Optional[int] = None) -> list[Source]:
    """Every source in stable order (sorted relative paths, or synth-000000...), the first ``max_files``."""
    if data.source_dir:
        root = Path(data.source_dir)
        if not root.is_dir():
            raise UserError(f"data.source_dir={root} is not a folder")
        keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        if not keys:
            raise UserError(f"data.source_dir={root} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        paths: list[Optional[str]] = [str(root / k) for k in keys]
    else:
        keys = [f"synth-{i:06d}" for i in range(data.synth.num_files)]
        paths = [None] * len(keys)
    if max_files is not None:
        keys, paths = keys[:max_files], paths[:max_files]
    every = data.val_every
    return [Source(i, k, p, "val" if every and i % every == every - 1 else "train") for i, (k, p) in enumerate(zip(keys, paths))]


def shard(sources: list[Source], idx: int, count: int) -> list[Source]:
    if count < 1 or not 0 <= idx < count:
        raise UserError(f"--shard-idx {idx} --shard-count {count}: need 0 <= shard-idx < shard-count")
    return sources[idx::count]


class UnusableSource(Exception):
    """A source file that reads but cannot make pairs (its message says why)."""


def load_source(src: Source, data: "TimbreData") -> np.ndarray:
    """Mono float32 at ``data.sample_rate``; a file with NaN or infinite samples raises ``UnusableSource``."""
    if src.path is None:
        return synth_piece(int(src.key.split("-")[1]), data.seed, data.synth.seconds, data.sample_rate)
    wave, sr = read_audio(src.path)
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:
        raise UnusableSource(f"{bad} non-finite samples (NaN or infinity)")
    return resample(to_mono(wave), sr, data.sample_rate).astype(np.float32)


def segments(wave: np.ndarray, data: "TimbreData") -> Iterator[tuple[int, np.ndarray]]:
    """Non-overlapping segments of ``data.segment_seconds``; near-silent ones are left out (indices keep
    counting, so a segment's name and seed do not depend on its neighbours)."""
    n = int(round(data.segment_seconds * data.sample_rate))
    kept = 0
    for i in range(len(wave) // n):
        if data.max_segments_per_file and kept >= data.max_segments_per_file:
            return
        seg = wave[i * n : (i + 1) * n]
        rms_db = 10.0 * math.log10(float(np.mean(seg.astype(np.float64) ** 2)) + 1e-12)
        if rms_db < data.min_rms_db:
            continue
        kept += 1
        yield i, seg


def process_source(src: Source, data: "TimbreData", out: Path, skip_existing: bool, tag: str) -> dict[str, Any]:
    """Write the pairs of one source and then its manifest; returns the manifest (or ``{"error": ...}``)."""
    name = safe_name(src.key)
    manifest = out / "manifests" / f"{name}.json"
    if skip_existing and manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if all((out / r[k]).is_file() for r in m["records"] for k in ("degraded", "clean")):
                m["skipped"] = True
                return m
        except (ValueError, KeyError):
            pass  # unreadable manifest: redo this source
    try:
        wave = load_source(src, data)
    except UnusableSource as exc:
        return {"key": src.key, "error": f"{src.path}: {exc}, left out"}
    except Exception as exc:  # an unreadable source is reported by path, the others go on
        return {"key": src.key, "error": f"{src.path}: cannot read ({type(exc).__name__}: {exc})"}
    records, chains = [], []
    for seg_idx, clean in segments(wave, data):
        degraded_t, chain = degrade(torch.from_numpy(clean.copy()), data.sample_rate, data.degrade, segment_rng(data.seed, src.key, seg_idx))
        degraded = degraded_t.numpy()
        peak = max(float(np.abs(clean).max()), float(np.abs(degraded).max()))
        gain = min(1.0, 0.999 / peak) if peak > 0 else 1.0  # EQ boosts can pass full scale: scale the pair together
        rel = f"{name}_{seg_idx:04d}.wav"
        write_audio_atomic(out / "clean" / rel, clean * gain, data.sample_rate, tag)
        write_audio_atomic(out / "degraded" / rel, degraded * gain, data.sample_rate, tag)
        records.append({"index": src.index, "segment": seg_idx, "split": src.split, "degraded": f"degraded/{rel}",
                        "clean": f"clean/{rel}", "gain": gain})
        chains.append(chain)
    m = {"key": src.key, "records": records, "chains": chains}
    write_text_atomic(manifest, json.dumps(m), tag)
    return m


def _worker_init() -> None:
    torch.set_num_threads(1)


def _work(args: tuple[Source, "TimbreData", Path, bool, str]) -> dict[str, Any]:
    return process_source(*args)


def validate_pairs(root: Path, pairs: list[tuple[str, str]], sample_rate: int, progress: bool = False) -> list[str]:
    """Every pair: both files readable, the expected sample rate, the same length, finite samples."""
    from tqdm import tqdm

    problems = []
    for deg, cln in tqdm(pairs, desc="validate", unit="pair", disable=not progress, leave=False):
        waves = []
        for rel in (deg, cln):
            path = root / rel
            try:
                info = sf.info(str(path))
                wave, _ = read_audio(path)
            except Exception as exc:
                problems.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")
                continue
            if info.samplerate != sample_rate:
                problems.append(f"{path}: sample rate {info.samplerate}, expected {sample_rate}")
            if not np.isfinite(wave).all():
                problems.append(f"{path}: non-finite samples")
            waves.append(wave)
        if len(waves) == 2 and waves[0].shape != waves[1].shape:
            problems.append(f"{root / deg}: {waves[0].shape[-1]} samples, its clean file {root / cln} has {waves[1].shape[-1]}")
    return problems


def _part_path(out: Path, idx: int, count: int) -> Path:
    return out / "parts" / f"part-{idx:05d}-of-{count:05d}.tsv"


def _read_part(path: Path) -> tuple[str, list[list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    job = lines[0].split(" ", 2)[2] if lines and lines[0].startswith("# job ") else ""
    return job, [line.split("\t") for line in lines[1:] if line.strip()]


def merge_parts(out: Path, count: int, job: str) -> Optional[list[tuple[str, str]]]:
    """If every part of this job exists, write train.txt and val.txt (stable order) and return all pairs."""
    rows = []
    for i in range(count):
        p = _part_path(out, i, count)
        if not p.is_file():
            return None
        pjob, prow = _read_part(p)
        if pjob != job:  # a part left by a different job (other settings or --max_files)
            return None
        rows += prow
    rows.sort(key=lambda r: (int(r[0]), int(r[1])))
    for split in ("train", "val"):
        body = "".join(f"{r[3]}\t{r[4]}\n" for r in rows if r[2] == split)
        write_text_atomic(out / f"{split}.txt", body, "merge")
    return [(r[3], r[4]) for r in rows]


def prepare(data: "TimbreData", out: Path, max_files: Optional[int] = None, skip_existing: bool = False, num_workers: int = 0,
            shard_idx: int = 0, shard_count: int = 1, progress: bool = True) -> PrepareResult:
    """Prepare one shard (by default: everything) of the dataset into ``out``; see the module docstring."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    todo = shard(list_sources(data, max_files), shard_idx, shard_count)
    tag = f"s{shard_idx}of{shard_count}"
    out = Path(out)
    for sub in ("clean", "degraded", "manifests", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob(f".*.tmp-{tag}"):  # left by an interrupted run of this shard
            stale.unlink(missing_ok=True)
    res = PrepareResult(sources=len(todo))
    rows: list[dict[str, Any]] = []
    jobs = [(s, data, out, skip_existing, tag) for s in todo]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-segment filters are tiny: extra threads only add overhead (restored below)
    bar = tqdm(total=len(todo), desc=f"prepare timbre_gan [{shard_idx + 1}/{shard_count}]", unit="file", disable=not progress)
    if num_workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
        results: Iterator[dict[str, Any]] = pool.map(_work, jobs)
    else:
        pool, results = None, map(_work, jobs)
    try:
        for m in results:
            if "error" in m:
                res.problems.append(m["error"])
            else:
                res.skipped_sources += int(m.get("skipped", False))
                rows += m["records"]
            bar.update(1)
            bar.set_postfix(pairs=len(rows), refresh=False)
    finally:
        bar.close()
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    res.pairs = len(rows)
    job = hashlib.sha1(f"{fingerprint(data)} {max_files} {shard_count}".encode()).hexdigest()[:12]
    rows.sort(key=lambda r: (r["index"], r["segment"]))
    body = f"# job {job}\n" + "".join(f"{r['index']}\t{r['segment']}\t{r['split']}\t{r['degraded']}\t{r['clean']}\n" for r in rows)
    write_text_atomic(_part_path(out, shard_idx, shard_count), body, tag)
    merged = merge_parts(out, shard_count, job)
    if merged is not None:
        res.merged = True
        bad = validate_pairs(out, merged, data.sample_rate, progress)
        res.problems += bad
        res.bad_pairs = len(bad)
        summary = {"job": job, "fingerprint": fingerprint(data), "max_files": max_files, "shard_count": shard_count,
                   "train": sum(1 for _ in read_pair_list(out / "train.txt")), "val": sum(1 for _ in read_pair_list(out / "val.txt")),
                   "sample_rate": data.sample_rate, "segment_seconds": data.segment_seconds, "problems": len(res.problems),
                   "bad_pairs": res.bad_pairs,
                   "data": data.model_dump(mode="json")}
        write_text_atomic(out / "prepared.json", json.dumps(summary, indent=2), tag)
    else:
        bad = validate_pairs(out, [(r["degraded"], r["clean"]) for r in rows], data.sample_rate, progress)
        res.problems += bad
        res.bad_pairs = len(bad)
    res.seconds = time.perf_counter() - t0
    return res


def is_prepared(out: Path) -> bool:
    return (out / "train.txt").is_file() and (out / "prepared.json").is_file()


def default_cache_root() -> Path:
    env = os.environ.get("TRAINHUB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trainhub"
