"""The config schema, the shipped config, and bad input reported as one line."""

from __future__ import annotations

import pytest

from trainhub.cli import main
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config, shipped_configs


def test_schema_and_shipped_configs(check_config_schema):
    recipe = get_plugins().recipe("timbre_gan")
    files = shipped_configs(recipe)
    assert sorted(files) == ["default", "synth_full", "wav_folder"]
    check_config_schema("timbre_gan", files=list(files.values()))
    # default.yaml is the embedded run written out: the same config as no file at all
    default = resolve_config(recipe, get_plugins(), None, [])
    assert resolve_config(recipe, get_plugins(), str(files["default"]), []).model_dump() == default.model_dump()
    # the full-scale settings: the whole degradation chain and the paper-style lr, EMA, L1 weight and schedule
    for name in ("synth_full", "wav_folder"):
        full = resolve_config(recipe, get_plugins(), str(files[name]), [])
        chain = full.data.degrade
        assert (chain.eq_max_gain_db, chain.bandlimit_prob, chain.compress_prob, chain.pink_prob, chain.snr_db) == (12.0, 0.6, 0.5, 0.5, (15.0, 40.0))
        assert (full.train.lr, full.train.ema.decay, full.loss.l1, full.gan.warmup_epochs, full.gan.gan_start_epoch) == (2e-4, 0.99, 3.0, 5, 15)
    assert resolve_config(recipe, get_plugins(), str(files["synth_full"]), []).train.max_steps == 600


@pytest.mark.parametrize("override, message", [
    ("model.generator.kernel_size=4", "model.generator.kernel_size: must be odd"),
    ("data.segment_seconds=0.01", "n_fft/2 < the segment length (160 samples)"),
    ("data.root={tmp}/nothing_here", "is not a prepared folder"),
    ("data.source_dir={tmp}/no_such_folder", "is not a folder"),
    ("data.val_every=0", "data.val_every=0 holds out no validation files"),
    ("data.val_every=3 data.synth.num_files=2 data.synth.seconds=1.0", "has no validation pairs (data.val_every=3"),
    ("train.warmup_steps=5 data.synth.num_files=3 data.synth.seconds=1.0 data.val_every=3",
     "train.warmup_steps=5 and gan.warmup_epochs=1 both set the warm-up; set one"),
])
def test_bad_input_is_one_line_error(override, message, tmp_path, capsys):
    rc = main(["run", "timbre_gan", *override.format(tmp=tmp_path).split(), f"data.cache_dir={tmp_path}/cache", "--run-dir",
               str(tmp_path / "run"), "loggers.console.progress_bar=false"])
    err = capsys.readouterr().err.strip()  # preparation's progress may come first; the error is its last line
    assert rc == 2 and "Traceback" not in err and err.count("trainhub: error") == 1, err
    assert err.splitlines()[-1].startswith("trainhub: error") and message in err.splitlines()[-1], err
