"""Presets, the shipped default, seed-style uppercase configs, and the worker rule applied to the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainhub import UserError
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config
from trainhub_vrt_spike.seed_config import CONFIG_DIR

DATA = Path(__file__).parent / "data"


def resolve(file=None, overrides=None):
    plugins = get_plugins()
    return resolve_config(plugins.recipe("vrt_spike"), plugins, file, overrides)


def test_schema_and_shipped_default_match_the_builtin_defaults(check_config_schema):
    check_config_schema("vrt_spike", files=sorted(CONFIG_DIR.glob("*.yaml")))
    shipped, builtin = resolve(CONFIG_DIR / "default.yaml"), resolve()
    for section in ("model", "data", "train", "loader"):
        assert getattr(shipped, section) == getattr(builtin, section), section


def test_presets(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    base = resolve(CONFIG_DIR / "baseline.yaml")
    assert base.model.depths == [8, 8, 8, 8, 4, 4, 4, 8] and base.model.window() == (6, 8, 8) and base.train.precision == "fp32"
    opt = resolve(CONFIG_DIR / "opt.yaml")
    assert opt.model.depths == [8, 7, 8, 8, 4, 4, 4, 6] and opt.model.window() == (6, 7, 7) and opt.train.precision == "auto"
    assert opt.model.fuse.chunk_size == 80 and opt.model.fuse.heads == 4  # merged over baseline's fuse section
    assert opt.model.embed_dims == base.model.embed_dims and opt.data.cache_size_gb == 50.0
    fast = resolve(CONFIG_DIR / "fast.yaml")
    assert fast.model.depths == [8, 6, 6, 8, 4, 4, 4, 4] and fast.model.window() == (6, 6, 6) and fast.data.train_crop_size == 128
    low = resolve(CONFIG_DIR / "lowmem.yaml")
    assert low.data.cache_size_gb == 20.0 and low.data.total_workers == 8 and low.train.gradient_accumulation_steps == 4
    assert low.model.depths == opt.model.depths and low.model.window() == (6, 7, 7)
    from trainhub_vrt_spike.config import cpu_count

    assert low.loader.num_workers == min(8, cpu_count())  # total_workers decides loader.num_workers (one process here)
    prog = resolve(CONFIG_DIR / "progressive.yaml")
    phase = prog.train.data_schedule[0]
    assert (phase.from_epoch, phase.data, phase.batch_size) == (6, {"train_crop_size": 48}, 1) and prog.data.train_crop_size == 32
    dist = resolve(CONFIG_DIR / "distill.yaml")
    assert dist.model.depths == [4, 4, 4, 4, 2, 2, 2, 2] and dist.model.embed_dims == base.model.embed_dims
    assert dist.distill.teacher and dist.distill.init_from_teacher and dist.distill.output_weight == dist.distill.feature_weight == 0.0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve(CONFIG_DIR / "lowmem.yaml").loader.num_workers == min(4, cpu_count() // 2)


def test_distill_preset_student_starts_from_every_other_baseline_layer():
    from trainhub_vrt_spike.recipe import build_model, init_student

    teacher = build_model(resolve(CONFIG_DIR / "baseline.yaml"))
    student = build_model(resolve(CONFIG_DIR / "distill.yaml", ["distill.teacher=null"]))
    picks = init_student(student, teacher)
    # stages 1-4: 8 layers = 6 mutual + 2 self -> 3 + 1; stages 5-7: 3 + 1 -> 1 + 1; stage 8: 8 -> 2 (shift parity kept)
    assert all(picks[f"stages.{i}.mutual"] == [0, 3, 4] and picks[f"stages.{i}.self_attn"] == [0] for i in range(4))
    assert all(picks[f"stages.{i}.mutual"] == [0] and picks[f"stages.{i}.self_attn"] == [0] for i in range(4, 7))
    assert picks["stage8.0"] == [0, 5]
    assert sum(p.numel() for p in student.parameters()) < 0.7 * sum(p.numel() for p in teacher.parameters())


def test_seed_style_uppercase_config_is_mapped():
    with pytest.warns(UserWarning, match="VAL_PREFETCH_FACTOR.*AMP_OPT_LEVEL"):
        cfg = resolve(DATA / "seed_opt.yaml")
    m, d, t = cfg.model, cfg.data, cfg.train
    assert m.depths == [8, 7, 8, 8, 4, 4, 4, 6] and m.window_size == 7
    assert (m.fuse.heads, m.fuse.adaptive_chunk, m.fuse.max_batch_tokens, m.fuse.chunk_size, m.fuse.chunk_shape) == (4, True, 65536, 80, "square")
    assert d.root == "data/processed/gopro_spike_unified" and d.train_crop_size == 256 and d.seq_len == 5 and d.num_bins == 32
    assert d.use_ram_cache and d.cache_size_gb == 50.0 and d.total_workers == 12 and not d.use_precomputed_voxels
    assert cfg.loader.prefetch_factor == 4 and cfg.loader.pin_memory is True and cfg.loader.persistent_workers
    assert t.precision == "auto" and t.batch_size == 1 and t.gradient_accumulation_steps == 4 and t.compile is False
    assert t.lr == 2e-4 and t.max_grad_norm == 1.0 and t.seed == 123
    assert t.log_every == 25  # lowercase sections in the same file are read as the schema


def test_unknown_seed_keys_are_one_error_listing_them(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("MODEL:\n  VRT_DEPTHS: [8, 8, 8, 8, 4, 4, 4, 8]\n  FUSE: {HEADZ: 4}\nDATA:\n  CACHE_GB: 3\n")
    with pytest.raises(UserError, match=r"unknown seed-style config keys DATA\.CACHE_GB, MODEL\.FUSE\.HEADZ"):
        resolve(f)
    r = subprocess.run([sys.executable, "-m", "trainhub", "run", "vrt_spike", "--config", str(f), "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "MODEL.FUSE.HEADZ" in r.stderr and "Traceback" not in r.stderr


def test_base_and_value_errors(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: fast\nmodel: {window_size: 4}\n")
    cfg = resolve(f)
    assert cfg.model.depths == [8, 6, 6, 8, 4, 4, 4, 4] and cfg.model.window_size == 4
    f.write_text("base: nosuchpreset\n")
    with pytest.raises(UserError, match="neither a shipped preset"):
        resolve(f)
    with pytest.raises(UserError, match="total_workers"):
        resolve(overrides=["data.total_workers=many"])
    f.write_text("DATA: {K: 32, NUM_VOXEL_BINS: 5}\n")
    with pytest.raises(UserError, match="both set data.num_bins"):
        resolve(f)


@pytest.mark.parametrize("overrides,message", [
    (["model.window_size=0"], "model.window_size=0: use one number >= 1 or [frames, height, width]"),
    (["model.window_size=[2,0,4]"], "model.window_size=[2, 0, 4]: use one number >= 1"),
    (["model.window_size=[4,4]"], "model.window_size=[4, 4]: use one number >= 1 or [frames, height, width]"),
    (["model.depths=[2,2,2,2,1,1,1,2,2]", "model.embed_dims=[16,16,16,16,16,16,16,24,32]"],
     "model.embed_dims=[16, 16, 16, 16, 16, 16, 16, 24, 32]: entries 8 onward (the stage-8 groups of model.depths) share one width"),
])
def test_shapes_the_network_cannot_take_are_one_line_config_errors(capsys, overrides, message):
    from trainhub.cli import main

    assert main(["run", "vrt_spike", *overrides, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
