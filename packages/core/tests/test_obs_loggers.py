"""wandb (offline) and TensorBoard loggers against their real libraries, read back from disk."""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import pytest
import torch

from trainhub import hookimpl
from trainhub.builtin.tiny import TinyRecipe
from trainhub.training.run import train

KEY = "sekret-0123456789abcdef0123456789abcdef01234567"


class WithMedia(TinyRecipe):
    """The tiny recipe plus an image and a sound written by every eval."""

    def evaluate(self, ctx):
        ctx.media.image("ramp", torch.linspace(-1, 1, 16 * 16 * 3).view(3, 16, 16), caption="a ramp")
        t = torch.arange(800) / 8000
        ctx.media.audio("tone", 0.5 * torch.sin(2 * math.pi * 440 * t), 8000, caption="440 Hz")
        return super().evaluate(ctx)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb writes only under tmp_path: run files in the run dir, staging/cache/config beside it."""
    pytest.importorskip("wandb")
    for var, sub in (("WANDB_DATA_DIR", "wb-data"), ("WANDB_CACHE_DIR", "wb-cache"), ("WANDB_CONFIG_DIR", "wb-config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables wandb for everyone else
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a real key
    return tmp_path


def read_wandb(path: Path) -> list:
    """Records of a .wandb file: a 7-byte ':W&B' header, then LevelDB-log framed protobuf Records
    (32 KiB blocks; each chunk has a 7-byte header: crc32, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records) -> list[dict]:
    return [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in h.item} for h in of_type(records, "history")]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_offline_logs_metrics_media_config_artifact_and_resumes_the_same_run(wandb_env, quiet, monkeypatch, stop_at):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    rd = wandb_env / "r"
    ov = quiet + ["loggers.wandb.enabled=true", "loggers.wandb.mode=offline", "loggers.wandb.project=proj",
                  "loggers.wandb.tags=[a,b]", "loggers.wandb.log_eval=true", "loggers.wandb.log_checkpoints=true",
                  "train.eval_every=5", "train.max_steps=15", "data.num_samples=256", "data.val_samples=32"]
    stop_at(10)
    res = train(WithMedia(), overrides=ov, run_dir=rd)
    assert res.status == "interrupted" and res.step == 10
    (first,) = offline_runs(rd)
    run_id = json.loads((res.last_checkpoint / "training_state.json").read_text())["run_id"]
    assert first.name.endswith(run_id)
    recs = read_wandb(next(first.glob("run-*.wandb")))
    run_rec = of_type(recs, "run")[0]
    assert run_rec.run_id == run_id and run_rec.project == "proj" and list(run_rec.tags) == ["a", "b"]
    cfg = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    assert cfg["train"]["lr"] == 1e-2 and cfg["loggers"]["wandb"]["project"] == "proj"
    assert cfg["system"]["recipe"] == "tiny" and cfg["system"]["run_id"] == run_id and "torch" in cfg["system"]
    rows = history(recs)
    steps = [row["_step"] for row in rows]
    assert steps == sorted(steps) and set(steps) == {5, 10}
    assert all(row["trainer/step"] == row["_step"] for row in rows)
    assert any("train/loss" in row and "train/samples_per_sec" in row for row in rows)
    assert any("eval/val_mse" in row for row in rows)
    assert any(row.get("media/ramp/_type") == "image-file" for row in rows)
    assert any(row.get("media/tone/_type") == "audio-file" for row in rows)
    assert any(row.get("eval/table/_type") == "table-file" for row in rows)
    assert any(row.get("eval/samples/_type") == "table-file" for row in rows)
    assert list((first / "files" / "media" / "images").glob("media/ramp_*.png"))
    models = [a for a in of_type(recs, "artifact") if a.type == "model"]  # (eval tables are artifacts too)
    assert len(models) == 2  # val_mse improved at both evals
    assert {"best", "step-5"} <= set(models[0].aliases) and {"best", "step-10"} <= set(models[1].aliases)
    assert {f.path for f in models[0].manifest.contents} >= {"model.safetensors", "ema.safetensors", "training_state.json"}

    # resume: the same wandb run id; the new records start after the checkpoint we resumed from
    train(WithMedia(), overrides=ov, run_dir=rd, resume="auto")
    runs = offline_runs(rd)
    assert len(runs) == 2 and all(p.name.endswith(run_id) for p in runs)
    later = history(read_wandb(next(runs[1].glob("run-*.wandb"))))
    assert [row["_step"] for row in later] == [15]
    blob = b"".join(p.read_bytes() for p in rd.rglob("*") if p.is_file())
    assert KEY.encode() not in blob  # the API key is never written


def test_wandb_without_key_or_server_falls_back_to_offline_once(wandb_env, quiet, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.warns(UserWarning, match="no API key.*logging offline") as rec:
        res = train("tiny", overrides=quiet + ["loggers.wandb.enabled=true", "loggers.wandb.mode=online", "train.max_steps=2"],
                    run_dir=wandb_env / "nokey")
    assert res.status == "completed" and len([w for w in rec if "wandb" in str(w.message)]) == 1
    assert len(offline_runs(wandb_env / "nokey")) == 1

    # a key but no reachable server: one warning, then offline
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.warns(UserWarning, match="could not reach the server.*logging offline"):
        res = train("tiny", overrides=quiet + ["loggers.wandb.enabled=true", "loggers.wandb.mode=online", "train.max_steps=2",
                                               "loggers.wandb.init_timeout=2"], run_dir=wandb_env / "noserver")
    assert res.status == "completed" and len(offline_runs(wandb_env / "noserver")) == 1


def test_wandb_errors_never_stop_training(wandb_env, quiet, trainhub_register):
    # the library refuses to start (invalid project name): one warning, training completes
    with pytest.warns(UserWarning, match="wandb logger disabled: could not start a run: UsageError"):
        res = train("tiny", overrides=quiet + ["loggers.wandb.enabled=true", "loggers.wandb.project=bad/name", "train.max_steps=2"],
                    run_dir=wandb_env / "a")
    assert res.status == "completed"

    class FinishWandbRunEarly:  # another library finishes the wandb run under us mid-training
        @hookimpl
        def trainhub_step_end(self, run, step, metrics):
            if step == 2:
                from trainhub.plugins import get_plugins

                get_plugins().pm.get_plugin("logger:wandb").run.finish()

    trainhub_register(FinishWandbRunEarly())
    with pytest.warns(UserWarning, match="wandb logger disabled after an error in log") as rec:
        res = train("tiny", overrides=quiet + ["loggers.wandb.enabled=true", "train.max_steps=6", "train.log_every=1",
                                               "plugin_errors=stop"], run_dir=wandb_env / "b")
    assert res.status == "completed" and res.step == 6
    assert len([w for w in rec if "wandb logger disabled" in str(w.message)]) == 1


def test_tensorboard_event_files(tmp_path, quiet):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(WithMedia(), overrides=quiet + ["loggers.tensorboard.enabled=true", "loggers.tensorboard.histograms=true",
                                          "loggers.tensorboard.histogram_every=5", "train.eval_every=5", "train.max_steps=10"],
          run_dir=tmp_path / "r")
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"images": 0, "audio": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10]
    assert {"train/lr", "train/grad_norm", "train/samples_per_sec", "train/rss_mb"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("eval/val_mse")] == [5, 10]
    img = acc.Images("media/ramp")[0]
    assert (img.width, img.height, img.step) == (16, 16, 5)
    aud = acc.Audio("media/tone")[0]
    assert aud.sample_rate == 8000 and aud.length_frames == 800
    assert "weights/model.net.0.weight" in tags["histograms"] and "gradients/model.net.0.weight" in tags["histograms"]
    h = acc.Histograms("weights/model.net.0.weight")
    assert [e.step for e in h] == [5, 10] and h[0].histogram_value.num == 8 * 64
    assert "config/text_summary" in tags["tensors"]


def test_wandb_media_it_cannot_encode_is_skipped_and_metrics_still_logged(monkeypatch):
    import numpy as np

    wandb = pytest.importorskip("wandb")

    from trainhub.kit.media import Media
    from trainhub.loggers.wandb import WandbConfig, WandbLogger

    class Recorder:
        def __init__(self):
            self.logged = []

        def log(self, data, step):
            self.logged.append((step, dict(data)))

    def no_audio(*a, **k):
        raise RuntimeError("Raw audio requires the soundfile package")

    monkeypatch.setattr(wandb, "Audio", no_audio)
    logger = WandbLogger(WandbConfig(enabled=True), run=None)
    logger.run = Recorder()
    media = [Media("audio", "clip", None, np.zeros(800, np.float32), sample_rate=8000),
             Media("image", "grid", None, np.zeros((4, 4, 3), np.uint8))]
    with pytest.warns(UserWarning, match=r"wandb: audio media not logged \(clip\): RuntimeError: Raw audio requires"):
        logger.trainhub_eval_end(run=None, step=5, metrics={"psnr": 20.0}, media=media)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per media kind, not at every eval
        logger.trainhub_eval_end(run=None, step=10, metrics={"psnr": 21.0}, media=media)
    assert not logger.failed
    assert [(s, d["eval/psnr"]) for s, d in logger.run.logged] == [(5, 20.0), (10, 21.0)]
    assert all("media/grid" in d and "media/clip" not in d for _, d in logger.run.logged)
