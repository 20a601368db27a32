"""System readings, the memory watchdog and the memory diagnosis of ``trainhub doctor``."""

from __future__ import annotations

import pytest
import torch

from trainhub.cli import main as cli_main
from trainhub.errors import UserError
from trainhub.observe import doctor, system


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


def test_training_on_the_cpu_gives_the_step_the_cores(monkeypatch):
    """A 2-core machine loads in-process and runs the step on both cores; 16 cores keep 4 workers and 12 threads; a
    GPU run keeps one core per process for the step and gives the rest to workers."""
    import torch

    from trainhub.training import data
    from trainhub.training.devices import set_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        for cpus, procs, cpu_workers, threads, gpu_workers in ((2, 1, 0, 2, 1), (16, 1, 4, 12, 8), (16, 2, 2, 6, 7), (1, 1, 0, 1, 0)):
            monkeypatch.setattr(data, "cpu_count", lambda cpus=cpus: cpus)
            assert data.auto_workers(procs, cpu_training=True) == cpu_workers
            assert data.auto_workers(procs) == gpu_workers
            assert set_cpu_threads("auto", "auto", procs) == threads == torch.get_num_threads()
        assert set_cpu_threads("auto", 1, 1) == 1  # 1 core left beside an explicit worker
        assert set_cpu_threads(3, "auto", 1) == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert set_cpu_threads("auto", "auto", 1) == 1  # the user's OMP_NUM_THREADS stays
    finally:
        torch.set_num_threads(before)


def test_a_run_on_an_oversubscribed_cpu_says_so(tmp_path, monkeypatch):
    import json
    import os

    from trainhub.training.run import train

    monkeypatch.setattr(os, "getloadavg", lambda: (37.0, 30.0, 20.0))
    train("tiny", overrides=["loader.num_workers=0", "loggers.console.progress_bar=false", "train.max_steps=1"],
          run_dir=tmp_path / "r")
    warnings = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"warning"' in x]
    assert [w["warning"] for w in warnings] == ["cpu"] and warnings[0]["load_average"] == 37.0
    assert warnings[0]["message"].startswith("load average 37.0 on ") and "trainhub doctor" in warnings[0]["message"]
