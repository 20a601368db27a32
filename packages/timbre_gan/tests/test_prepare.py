"""Dataset preparation: shards, resumption, interruption, validation, real audio folders."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainhub import UserError
from trainhub_timbre_gan.data import TimbreRestoreDataset, read_pair_list
from trainhub_timbre_gan.prepare import list_sources, prepare, shard, validate_pairs


def tree(root: Path) -> dict[str, bytes]:
    """Every visible file under clean/ and degraded/ with its bytes, plus the lists."""
    out = {p.relative_to(root).as_posix(): p.read_bytes() for sub in ("clean", "degraded") for p in (root / sub).iterdir()
           if not p.name.startswith(".")}
    for name in ("train.txt", "val.txt"):
        out[name] = (root / name).read_bytes()
    return out


def test_shards_are_disjoint_and_their_union_is_the_unsharded_output(tmp_path, tiny_data):
    data = tiny_data(num_files=7)
    sources = list_sources(data)
    parts = [shard(sources, i, 3) for i in range(3)]
    keys = [{s.key for s in p} for p in parts]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1 :])
    assert set().union(*keys) == {s.key for s in sources}
    assert parts == [shard(list_sources(data), i, 3) for i in range(3)]  # stable

    whole = prepare(data, tmp_path / "whole", progress=False)
    assert whole.merged and not whole.problems and whole.pairs == 14
    results = [prepare(data, tmp_path / "sharded", shard_idx=i, shard_count=3, progress=False) for i in (2, 0, 1)]
    assert [r.merged for r in results] == [False, False, True]  # the shard that completes the set writes the lists
    assert sum(r.pairs for r in results) == whole.pairs
    assert tree(tmp_path / "whole") == tree(tmp_path / "sharded")
    train = read_pair_list(tmp_path / "whole" / "train.txt")
    assert len(train) == 10 and len(read_pair_list(tmp_path / "whole" / "val.txt")) == 4  # sources 2 and 5 validate
    with pytest.raises(UserError, match="shard-idx"):
        prepare(data, tmp_path / "bad", shard_idx=3, shard_count=3, progress=False)


def test_max_files_and_worker_processes_give_the_same_files(tmp_path, tiny_data):
    data = tiny_data(num_files=6)
    ref = prepare(data, tmp_path / "ref", max_files=4, progress=False)
    par = prepare(data, tmp_path / "par", max_files=4, num_workers=2, progress=False)
    assert ref.sources == par.sources == 4 and tree(tmp_path / "ref") == tree(tmp_path / "par")


def test_skip_existing_keeps_finished_sources(tmp_path, tiny_data):
    data = tiny_data(num_files=4)
    first = prepare(data, tmp_path, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "clean").iterdir()}
    again = prepare(data, tmp_path, skip_existing=True, progress=False)
    assert again.skipped_sources == first.sources and again.pairs == first.pairs and not again.problems
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "clean").iterdir()} == stamp
    victim = sorted((tmp_path / "degraded").iterdir())[0]
    victim.unlink()  # a missing pair: that source is made again
    third = prepare(data, tmp_path, skip_existing=True, progress=False)
    assert third.skipped_sources == first.sources - 1 and victim.is_file()


def test_an_interrupted_run_leaves_no_partial_files_and_resumes(tmp_path, tiny_data):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "trainhub", "prepare", "timbre_gan", "--out", str(out), "--no-progress",
                             "data.synth.num_files=40", "data.synth.seconds=1.0", "data.val_every=3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "manifests").glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "preparation finished before it could be interrupted"
    assert not (out / "train.txt").exists()
    for sub in ("clean", "degraded"):  # every file under a final name is complete
        for p in (out / sub).iterdir():
            if not p.name.startswith("."):
                assert sf.info(str(p)).frames == 8000, p
    data = tiny_data(num_files=40)
    res = prepare(data, out, skip_existing=True, progress=False)
    assert res.merged and not res.problems and res.skipped_sources >= 3
    assert not [p for sub in ("clean", "degraded") for p in (out / sub).iterdir() if p.name.startswith(".")]  # no temporaries
    ref = prepare(data, tmp_path / "ref", progress=False)
    assert ref.pairs == 80 and tree(out) == tree(tmp_path / "ref")


def test_validation_names_each_bad_file(tmp_path, tiny_data):
    prepare(tiny_data(num_files=3), tmp_path, progress=False)
    pairs = read_pair_list(tmp_path / "train.txt")
    (tmp_path / pairs[0][0]).write_bytes(b"RIFF nonsense")
    sf.write(str(tmp_path / pairs[1][1]), np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(str(tmp_path / pairs[2][0]), np.zeros(7000, np.float32), 16000, subtype="FLOAT")
    problems = validate_pairs(tmp_path, pairs, 16000)
    assert len(problems) == 3
    assert problems[0].startswith(str(tmp_path / pairs[0][0])) and "unreadable" in problems[0]
    assert problems[1].startswith(str(tmp_path / pairs[1][1])) and "non-finite" in problems[1]
    assert problems[2].startswith(str(tmp_path / pairs[2][0])) and "7000" in problems[2]


def test_a_folder_of_real_audio_is_resampled_and_a_broken_file_reported(tmp_path, tiny_data):
    src = tmp_path / "music" / "album"
    src.mkdir(parents=True)
    t = np.arange(22050 * 2) / 22050
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    sf.write(str(src / "a.flac"), stereo, 22050)
    sf.write(str(src / "b.wav"), stereo[:, 0], 22050)
    (src / "broken.wav").write_bytes(b"not audio")
    data = tiny_data(source_dir=str(tmp_path / "music"))
    assert [s.key for s in list_sources(data)] == ["album/a.flac", "album/b.wav", "album/broken.wav"]
    res = prepare(data, tmp_path / "out", progress=False)
    assert len(res.problems) == 1 and "broken.wav" in res.problems[0]
    ds = TimbreRestoreDataset(tmp_path / "out" / "train.txt")
    assert len(ds) == 8  # two files x four 0.5 s segments at 16 kHz
    degraded, clean = ds[0]
    assert degraded.shape == clean.shape == (1, 8000)


def test_cli_prepares_with_overrides_and_explains_bad_arguments(tmp_path, capsys):
    from trainhub.cli import main

    with pytest.raises(SystemExit) as e:
        main(["prepare", "timbre_gan", "--help"])
    assert e.value.code == 0 and "--shard-count" in capsys.readouterr().out
    assert main(["prepare", "timbre_gan", "--bogus"]) == 2 and "--bogus" in capsys.readouterr().err
    assert main(["prepare", "timbre_gan", "--out", str(tmp_path), "--no-progress", "--max_files", "2",
                 "data.synth.seconds=1.0", "data.val_every=2"]) == 0
    assert "train.txt and val.txt written" in capsys.readouterr().out
    assert len(read_pair_list(tmp_path / "train.txt")) == 2 and len(read_pair_list(tmp_path / "val.txt")) == 2


def test_a_source_with_nan_samples_is_reported_and_left_out(tmp_path, tiny_data):
    """NaN samples would pass the silence check and become full-scale garbage in the 24-bit pairs: the file is
    reported by path, like an unreadable one, and makes no pairs."""
    src = tmp_path / "music"
    src.mkdir()
    n = np.arange(32000)
    sf.write(str(src / "a_good.wav"), 0.3 * np.sin(n / 4), 16000)
    broken = 0.3 * np.sin(n / 7)
    broken[100:200] = np.nan
    broken[300] = np.inf
    sf.write(str(src / "b_nan.wav"), broken, 16000, subtype="FLOAT")
    data = tiny_data(source_dir=str(src))  # two sources, both train (val_every 3)
    res = prepare(data, tmp_path / "out", progress=False)
    assert res.problems == [f"{src / 'b_nan.wav'}: 101 non-finite samples (NaN or infinity), left out"]
    assert res.bad_pairs == 0 and res.pairs == 4
    listed = [p for pair in read_pair_list(tmp_path / "out" / "train.txt") for p in pair]
    assert len(listed) == 8 and all(p.split("/")[1].startswith("a_good") for p in listed)
    assert not [p for sub in ("clean", "degraded") for p in (tmp_path / "out" / sub).glob("b_nan*")]
