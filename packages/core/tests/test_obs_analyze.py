"""``trainhub analyze``: report, plots and diagnosis from a recorded run and from hand-written metrics."""

from __future__ import annotations

import json

import pytest

from trainhub.builtin.tiny import TinyRecipe
from trainhub.cli import main as cli_main
from trainhub.errors import UserError
from trainhub.observe import analyze
from trainhub.observe.watch import LossRange
from trainhub.training.run import train


class Watched(TinyRecipe):
    """The tiny recipe declaring a loss range it cannot meet, so the run records a loss-range warning."""

    def loss_ranges(self, config):
        return [LossRange("loss", high=1e-3, phase="impossible")]


def test_analyze_a_recorded_run(tmp_path, quiet, capsys):
    rd = tmp_path / "r"
    train(Watched(), overrides=quiet + ["train.max_steps=12", "train.log_every=2"], run_dir=rd)
    assert cli_main(["analyze", str(rd)]) == 0
    printed = capsys.readouterr().out
    report = (rd / "analysis" / "report.md").read_text()
    assert printed.startswith(report.strip()[:200])
    for section in ("## Throughput", "## Step-time breakdown", "## Memory", "## Loss terms", "## Evaluation", "## Diagnosis",
                    "## Warnings", "## Plots"):
        assert section in report
    assert "against the 10 ms target" in report
    for check in ("data-loading bound", "compute bound", "memory pressure", "unstable loss"):
        assert f"| {check} |" in report
    assert "| loss_range | loss=" in report and "impossible" in report
    assert {p.name for p in (rd / "analysis").glob("*.png")} == {"throughput.png", "step_time.png", "loss.png", "memory.png"}
    a = analyze.analyze(rd)
    assert a.numbers["steps"] == 12 and len(a.train) == 6 and len(a.steady) == 5  # first window dropped as warm-up
    assert a.numbers["samples_per_sec"] > 0 and a.numbers["rss_mb_max"] > 0


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "step": 9')  # a line cut by a crash


def test_diagnosis_names_the_bottlenecks_and_config_changes(tmp_path):
    rd = tmp_path / "slow"
    rd.mkdir()
    (rd / "config.yaml").write_text("train:\n  lr: 0.001\n  precision: fp32\n  warmup_steps: 0\nloader:\n  num_workers: 0\n")
    recs = []
    for i in range(1, 21):
        loss = 0.5 if i not in (12, 13) else 9.0  # two spikes
        recs.append({"kind": "train", "step": i * 10, "time": 1000.0 + i, "loss": loss, "l1": loss / 2, "grad_norm": 1.0,
                     "lr": 1e-3, "step_time": 0.100, "data_time": 0.060, "samples_per_sec": 320.0, "time/forward_ms": 25.0,
                     "rss_mb": 1000.0 + 100 * i, "sys_mem_percent": 80.0 + i * 0.6, "cuda_max_alloc_mb": 79000.0,
                     "cuda_total_mb": 81000.0, "nonfinite_skipped": 0.0})
    recs.append({"kind": "warning", "step": 120, "warning": "memory", "message": "system memory at 91.0%"})
    recs.append({"kind": "train", "step": 200, "time": 1021.0, **{k: v for k, v in recs[-2].items() if k not in ("kind", "step", "time")}})
    _write(rd / "metrics.jsonl", recs)
    a = analyze.analyze(rd)
    rows = {r.check: r for r in a.rows}
    assert rows["data-loading bound"].verdict == "yes" and "60.0 ms/step = 60%" in rows["data-loading bound"].evidence
    assert any(c.startswith("loader.num_workers=") for c in rows["data-loading bound"].changes)
    assert rows["compute bound"].verdict == "no"
    assert rows["memory pressure"].verdict == "yes" and "train.activation_checkpointing=true" in rows["memory pressure"].changes
    assert rows["unstable loss"].verdict == "yes" and "train.lr=0.0005 (now 0.001)" in rows["unstable loss"].changes
    assert a.stages == {"forward": 25.0} and a.bad_lines == 1 and a.numbers["steps"] == 200
    assert set(a.losses) == {"loss", "l1"}
    text = analyze.render(a, [])
    assert "| stage forward | 25.00 |" in text and "| data wait | 60.00 | 60% |" in text and "**OVER**" in text
    assert "1 unreadable line(s)" in text and "| 120 | memory | system memory at 91.0% |" in text


def test_bad_run_dirs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="is not a directory"):
        analyze.main([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        analyze.main([str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval", "step": 1, "psnr": 20}\n')
    with pytest.raises(UserError, match="no training records"):
        analyze.main([str(tmp_path)])
    assert cli_main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing is not a directory" in err
