"""Spike format, voxelisation, integrate-and-fire and the simulator, against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainhub_vrt_spike import simulate as sim
from trainhub_vrt_spike import spike as S


def test_voxelize_hand_computed():
    spikes = np.zeros((5, 1, 2), dtype=np.uint8)
    spikes[[0, 1, 3], 0, 0] = 1  # pixel A fires in frames 0, 1, 3
    spikes[4, 0, 1] = 1  # pixel B only in frame 4
    # 5 frames into 2 bins: bin 0 = frames {0, 1}, bin 1 = frames {2, 3, 4}; value = firing rate in the bin
    vox = S.voxelize(spikes, 2)
    np.testing.assert_allclose(vox[:, 0, 0], [2 / 2, 1 / 3])
    np.testing.assert_allclose(vox[:, 0, 1], [0.0, 1 / 3])
    assert vox.dtype == np.float32
    six = np.arange(6, dtype=np.uint8)[:, None, None] % 2  # 0 1 0 1 0 1 -> three bins of two frames
    np.testing.assert_allclose(S.voxelize(six, 3)[:, 0, 0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(S.voxelize(six, 6)[:, 0, 0], six[:, 0, 0])  # one frame per bin = the raw frames
    with pytest.raises(ValueError, match="bins"):
        S.voxelize(six, 7)


def test_dat_bit_layout_hand_computed():
    frame = np.array([[[1, 0, 0, 0], [0, 0, 0, 1]]], dtype=np.uint8)  # T=1, 2x4 pixels = one byte
    # rows stored bottom-up: [0,0,0,1, 1,0,0,0]; least significant bit first -> bits 3 and 4 -> 0b00011000
    assert S.encode(frame) == bytes([0b00011000])
    assert S.encode(frame, flipud=False) == bytes([0b10000001])
    assert S.encode(frame, fmt="bytes") == bytes([0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(S.decode(np.frombuffer(bytes([24]), np.uint8), 2, 4), frame)
    rng = np.random.default_rng(0)
    many = (rng.random((7, 8, 16)) < 0.3).astype(np.uint8)
    for fmt in ("bitpacked", "bytes"):
        raw = np.frombuffer(S.encode(many, fmt), np.uint8)
        np.testing.assert_array_equal(S.decode(raw, 8, 16, fmt), many)
    with pytest.raises(ValueError, match="whole number"):
        S.decode(np.zeros(17, np.uint8), 8, 16)


def test_integrate_and_fire_rate_and_state():
    rng = np.random.default_rng(0)
    x = np.full((400, 3, 3), 0.5)
    spikes, state = S.integrate_and_fire(x, 2.0, rng)
    assert set(np.unique(spikes)) <= {0, 1}
    counts = spikes.sum(0)
    assert np.all(np.abs(counts - 100) <= 1)  # 400 x 0.5 / 2 = 100 spikes
    assert np.all((0 <= state) & (state < 2.0))
    # continuing from the state equals one long run
    a, sa = S.integrate_and_fire(x[:150], 2.0, np.random.default_rng(1))
    b, _ = S.integrate_and_fire(x[150:], 2.0, np.random.default_rng(2), state=sa)
    full, _ = S.integrate_and_fire(x, 2.0, np.random.default_rng(1))
    np.testing.assert_array_equal(np.concatenate([a, b]), full)


def test_simulator_blur_is_the_exposure_mean(tmp_path):
    cfg = sim.SimSettings(size=16, frames=3, subframes=6, threshold=2.0)
    photo = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    seq = sim.simulate_sequence(photo, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(seq["blur"], seq["subframes"].mean(axis=1), atol=1e-6)
    assert seq["spikes"].shape == (3, 6, 16, 16)
    # integrate-and-fire bookkeeping: spikes x threshold = integrated luminance - (final - initial accumulator)
    lum = S.luminance(seq["subframes"]).sum(axis=(0, 1))
    fired = seq["spikes"].sum(axis=(0, 1)) * cfg.threshold
    assert np.all(np.abs(lum - fired) < cfg.threshold)
    sim.write_sequence(seq, tmp_path / "seq", voxel_bins=3)
    png = np.asarray(Image.open(tmp_path / "seq" / "blur" / "000001.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(png, seq["blur"][1], atol=0.5 / 255 + 1e-6)
    dat = S.read_dat(tmp_path / "seq" / "spike" / "000001.dat", 16, 16)
    np.testing.assert_array_equal(dat, seq["spikes"][1])
    vox = np.load(tmp_path / "seq" / "voxel" / "000001.npy")
    np.testing.assert_allclose(vox, S.voxelize(dat, 3), atol=1e-3)


def test_generate_and_voxelize_commands(tmp_path):
    from trainhub_vrt_spike.prepare import main

    out = tmp_path / "ds"
    main(["simulate", "--out", str(out), "--train-sequences", "1", "--val-sequences", "1", "--frames", "2", "--size", "16",
          "--subframes", "4"])
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["spike_height"], meta["spike_width"], meta["spike_frames"]) == (16, 16, 4)
    seqs = sorted((out / "train").iterdir()) + sorted((out / "val").iterdir())
    assert len(seqs) == 2 and all(len(list((s / "spike").glob("*.dat"))) == 2 for s in seqs)
    assert (seqs[0] / "spike" / "000000.dat").stat().st_size == 4 * 16 * 16 // 8
    main(["voxelize", "--root", str(out), "--bins", "2"])
    vox = np.load(seqs[1] / "voxel" / "000001.npy")
    np.testing.assert_allclose(vox, S.voxelize(S.read_dat(seqs[1] / "spike" / "000001.dat", 16, 16), 2), atol=1e-3)


def small_dataset(path):
    """One val sequence of two 16x16 frames with 4 spike frames per exposure."""
    root = sim.generate(path, sim.SimSettings(size=16, frames=2, subframes=4), 0, 1, seed=0, progress=False)
    return root, next((root / "val").iterdir())


def test_voxelize_reads_spike_format_and_flipud_from_meta_json(tmp_path):
    from trainhub.cli import main
    from trainhub_vrt_spike.data import SpikeDeblurDataset

    root, seq = small_dataset(tmp_path / "ds")
    for f in (seq / "spike").glob("*.dat"):  # rows top-down, one byte per pixel
        S.write_dat(f, S.read_dat(f, 16, 16), "bytes", flipud=False)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "spike_format": "bytes", "flipud": False}))
    assert main(["prepare", "vrt_spike", "voxelize", "--root", str(root), "--bins", "2"]) == 0
    fly = SpikeDeblurDataset(root, "val", 1, num_bins=2)
    pre = SpikeDeblurDataset(root, "val", 1, num_bins=2, use_precomputed_voxels=True)
    for i in range(2):
        np.testing.assert_allclose(pre[i]["spike"].numpy(), fly[i]["spike"].numpy(), atol=1e-3)
    assert main(["prepare", "vrt_spike", "voxelize", "--root", str(root), "--bins", "2", "--flipud"]) == 0  # a flag wins
    np.testing.assert_allclose(pre[0]["spike"].numpy(), fly[0]["spike"].flip(-2).numpy(), atol=1e-3)
    assert not np.allclose(pre[0]["spike"].numpy(), fly[0]["spike"].numpy(), atol=1e-3)


def test_voxelize_takes_the_size_from_jpg_frames_without_meta_json(tmp_path):
    from trainhub.cli import main

    root, seq = small_dataset(tmp_path / "ds")
    (root / "meta.json").unlink()
    for f in (seq / "blur").glob("*.png"):
        Image.open(f).save(f.with_suffix(".jpg"))
        f.unlink()
    assert main(["prepare", "vrt_spike", "voxelize", "--root", str(root), "--bins", "2"]) == 0
    vox = np.load(seq / "voxel" / "000001.npy")
    np.testing.assert_allclose(vox, S.voxelize(S.read_dat(seq / "spike" / "000001.dat", 16, 16), 2), atol=1e-3)


@pytest.mark.parametrize("flag,value", [("--frames", "0"), ("--subframes", "0"), ("--size", "0")])
def test_simulate_rejects_empty_settings_in_one_line(tmp_path, capsys, flag, value):
    from trainhub.cli import main

    args = {"--frames": "2", "--subframes": "4", "--size": "16", flag: value}
    assert main(["prepare", "vrt_spike", "simulate", "--out", str(tmp_path / "ds"), "--train-sequences", "1",
                 "--val-sequences", "1", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"trainhub: error: {flag} {value}: ")
    assert not (tmp_path / "ds").exists()
