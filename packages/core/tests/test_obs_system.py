"""System readings, the memory watchdog and the memory diagnosis of ``trainhub doctor``."""

from __future__ import annotations

import pytest
import torch

from trainhub.observe import doctor, system
from trainhub.cli import main as cli_main
from trainhub.errors import UserError


def test_system_metrics_on_cpu():
    m = system.system_metrics(torch.device("cpu"))
    assert set(m) == {"rss_mb", "sys_mem_percent"} and m["rss_mb"] > 10 and 0 < m["sys_mem_percent"] <= 100
    assert system.gpu_utilization(torch.device("cpu")) is None


def test_watchdog_warns_once_past_90_percent():
    w = system.MemoryWatchdog()
    assert w.check(50.0) is False
    with pytest.warns(ResourceWarning, match="system memory at 93.0%"):
        assert w.check(93.0) is True
    assert w.check(95.0) is False


def test_doctor_report_sizes_the_dataset_and_the_worker_cache_footprint(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(5):
        (data / f"{i}.png").write_bytes(b"x" * 1000)
    (data / "sub" / "a.wav").write_bytes(b"y" * 3000)
    size, files, exts, complete = doctor.dataset_size(data)
    assert (size, files, dict(exts), complete) == (8000, 6, {".png": 5, ".wav": 1}, True)
    assert doctor.dataset_size(data, max_files=2)[1:4:2] == (2, False)

    lines = doctor.doctor_report(data, cache_gb=0.5, num_workers=3, local_processes=1)
    text = "\n".join(lines)
    assert lines[0].startswith("dataset  ") and "6 files, 7.81 KiB on disk (.png 5, .wav 1)" in lines[0]
    assert "recommended loader.num_workers=" in text
    assert "3 workers x ~" in text and "+ cache 0.5 GiB in each worker" in text
    assert "the whole dataset (7.81 KiB) fits" in text and "duplicated in every worker" in text

    huge = doctor.doctor_report(None, cache_gb=10_000, num_workers=4, local_processes=1)
    assert any(line.startswith("WARNING  that footprint exceeds 80% of available memory") for line in huge)
    with pytest.raises(UserError, match="does not exist"):
        doctor.doctor_report(tmp_path / "nope")


def test_trainhub_doctor_prints_the_memory_diagnosis(tmp_path, capsys):
    (tmp_path / "x.bin").write_bytes(b"0" * 2048)
    cli_main(["doctor", "--dataset", str(tmp_path), "--cache-gb", "1", "--num-workers", "2"])
    out = capsys.readouterr().out
    assert f"dataset  {tmp_path}: 1 files, 2.00 KiB" in out and "recommended loader.num_workers=" in out
    assert "2 workers x ~" in out
