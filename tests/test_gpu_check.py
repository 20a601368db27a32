"""tools/gpu_check.py's smoke test: every check at toy sizes on CPU passes, and the report has its structure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("tiny", "dit", "sr3", "tokenimage", "vrt_spike", "timbre_gan")


@pytest.mark.slow
def test_gpu_check_on_cpu_passes_every_check(tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--device", "cpu", "--tiny", "--budget", "480",
                        "--out", str(out)], capture_output=True, text=True, timeout=560)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert {"tool", "started", "wall_s", "plan", "host", "counts", "checks"} <= set(report)
    assert report["plan"] == {"device": "cpu", "tiny": True, "steps": 4, "jobs": 2, "budget_s": 480.0}
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"env", "resume", "torchrun:ddp", "torchrun:fsdp", "bench:DiT-Ti/4-b4", "bench:SR3-4to16-b4", "first-step",
                           *(f"train:{r}:bf16" for r in RECIPES), "train:tiny:fp16", "train:timbre_gan:fp16"}
    failed = {n: (c["summary"], c["error"]) for n, c in checks.items() if c["status"] != "pass"}
    assert not failed, failed
    assert report["counts"] == {"pass": len(checks), "fail": 0, "skip": 0}

    assert sorted(checks["env"]["details"]["recipes"]) == sorted(RECIPES)
    for name in (n for n in checks if n.startswith("train:")):
        d = checks[name]["details"]
        assert d["steps"] == 4 and d["steps_per_s"] > 0 and d["compile"] is False
        assert d["loss"] and all(math.isfinite(v) for v in d["loss"].values())
    assert checks["resume"]["details"]["identical"] and checks["resume"]["details"]["stopped_after"] == 2
    for s in ("ddp", "fsdp"):
        assert checks[f"torchrun:{s}"]["details"]["world_size"] == 1
    for b in ("bench:DiT-Ti/4-b4", "bench:SR3-4to16-b4"):
        d = checks[b]["details"]
        assert d["plain_img_s"] > 0 and d["trainhub_img_s"] > 0 and d["ratio"] > 0 and d["targets_met"] is None
    first = checks["first-step"]["details"]
    for side in ("true", "false", "plain_loop"):
        assert first[side]["first_s"] > 0 and first[side]["later_s"] > 0 and first[side]["memory_ratio"] > 0
        assert first[side]["time_ratio"] == pytest.approx(first[side]["first_s"] / first[side]["later_s"], rel=0.05, abs=0.01)
    assert first["vs_plain_first"] == pytest.approx(first["true"]["first_s"] / first["plain_loop"]["first_s"])
    assert first["targets_met"] is None

    table = (out / "report.md").read_text()
    assert "| check | status | s | result |" in table and "| benchmark | plain img/s |" in table
    assert all(f"| {name} | pass |" in table for name in checks)
    assert "==== resume: pass" in (out / "gpu_check.log").read_text()
