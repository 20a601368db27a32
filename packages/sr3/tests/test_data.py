"""Datasets, prepare, corrupt images and mismatched pairs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from trainhub import UserError
from trainhub_sr3.data import EmbeddedPhotos, HRFolder, PairedFolder, Shapes, prepare


def _photos(folder, n=3, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_embedded_photos_are_real_and_paired():
    ds = EmbeddedPhotos(8, 32, "train")
    item = ds[0]
    assert item["hr"].shape == (3, 32, 32) and item["sr"].shape == (3, 32, 32) and item["lr"].shape == (3, 8, 8)
    assert -1 <= item["hr"].min() and item["hr"].max() <= 1 and item["hr"].std() > 0.05
    assert len(EmbeddedPhotos(8, 32, "val")) > 0


def test_shapes_are_fixed_in_validation_and_fresh_in_training():
    val = Shapes(8, 32, "val", 4)
    a, b = val[1], Shapes(8, 32, "val", 4)[1]
    assert a["hr"].shape == (3, 32, 32) and a["sr"].shape == (3, 32, 32) and a["lr"].shape == (3, 8, 8)
    assert torch.equal(a["hr"], b["hr"]) and not torch.equal(val[0]["hr"], a["hr"])
    train = Shapes(8, 32, "train")
    assert not torch.equal(train[0]["hr"], train[0]["hr"])
    # flat shapes: most of bicubic's error is at their edges, where the LR still shows where they lie
    hr, sr = a["hr"], a["sr"]
    assert hr.std() > 0.1 and (hr - sr).abs().mean() > 0.01


@pytest.mark.parametrize("source, val_len, expected", [("embedded", 3, 3), ("embedded", -1, 40), ("shapes", 5, 5),
                                                      ("shapes", -1, 32)])
def test_val_len_limits_the_embedded_validation_sets(source, val_len, expected):
    from trainhub_sr3.recipe import SR3Config, SR3Recipe

    cfg = SR3Config.model_validate({"data": {"source": source, "val_len": val_len}})
    _, val = SR3Recipe().build_data(cfg)
    assert len(val) == expected


def test_prepare_writes_the_reference_layout_and_paired_reads_it(tmp_path):
    src = _photos(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "trainhub", "prepare", "sr3", "--path", str(src), "--out", str(tmp_path / "out"),
                        "--sizes", "8,32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for d in ("hr_32", "lr_8", "sr_8_32"):
        names = sorted(p.name for p in (tmp_path / "out" / d).iterdir())
        assert names == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(tmp_path / "out" / "lr_8" / "00000.png").size == (8, 8)
    ds = PairedFolder(tmp_path / "out", 8, 32)
    assert len(ds) == 3 and ds[1]["sr"].shape == (3, 32, 32)


def test_mismatched_pairs_are_reported_before_training(tmp_path):
    prepare(_photos(tmp_path / "src"), tmp_path / "out", 8, 32, progress=False)
    (tmp_path / "out" / "sr_8_32" / "00001.png").unlink()
    with pytest.raises(UserError, match=r"1 HR images have no matching file in sr_8_32/, e.g. 00001.png"):
        PairedFolder(tmp_path / "out", 8, 32)
    with pytest.raises(UserError, match=r"missing folder hr_64/"):
        PairedFolder(tmp_path / "out", 8, 64)


def test_corrupt_image_is_skipped_with_a_warning_or_stops(tmp_path):
    folder = _photos(tmp_path / "imgs")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*broken.png \(1 skipped so far\)"):
        ds = HRFolder(folder, 8, 32, on_error="skip")
    assert len(ds) == 3 and ds.errors.skipped == [str(folder / "broken.png")]
    with pytest.raises(UserError, match=r"unreadable image .*broken.png"):
        HRFolder(folder, 8, 32, on_error="stop")


def test_bad_data_config_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainhub", "run", "sr3", "data.source=folder", f"data.root={tmp_path}/none"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "data.root=" in r.stderr and "is not a folder" in r.stderr and "Traceback" not in r.stderr


def test_a_pair_of_another_size_is_one_line_naming_the_file(tmp_path, capsys):
    from trainhub.cli import main

    out = tmp_path / "out"
    prepare(_photos(tmp_path / "src"), out, 8, 32, progress=False)
    Image.open(out / "sr_8_32" / "00001.png").resize((30, 32)).save(out / "sr_8_32" / "00001.png")
    rc = main(["run", "sr3", "data.source=paired", f"data.root={out}", "data.l_resolution=8", "data.r_resolution=32",
               "train.batch_size=3", "loader.num_workers=0", "--dry-run"])  # an exception here would be the traceback
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"trainhub: error: {out / 'sr_8_32' / '00001.png'}: 30x32 pixels, expected 32x32 like every image in sr_8_32/ "
        "(data.r_resolution=32); prepare the folder again with `trainhub prepare sr3` or remove the image")


@pytest.mark.parametrize("source", ["shapes", "embedded"])
def test_data_root_with_a_source_that_brings_its_own_pictures_is_one_line_before_training(tmp_path, tiny, capsys, source):
    from trainhub.cli import main

    rc = main(["run", "sr3", "--dry-run", f"data.source={source}", f"data.root={tmp_path}", *tiny])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        f"trainhub: error: data.root={tmp_path} is read only with data.source=paired|lmdb|folder, got data.source={source} "
        "(it brings its own pictures): add data.source=folder for a folder of images (paired or lmdb for prepared data), "
        "or leave data.root out")


@pytest.mark.parametrize("source", ["shapes", "embedded", "folder"])
def test_val_root_is_the_validation_data_whatever_source_trains(tmp_path, tiny, photos, source):
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    val_dir = photos(tmp_path / "val", n=3, size=(20, 18))
    plugins = get_plugins()
    recipe = plugins.recipe("sr3")
    root = [f"data.root={photos(tmp_path / 'train')}"] if source == "folder" else []
    config = resolve_config(recipe, plugins, None, tiny + [f"data.source={source}", f"data.val_root={val_dir}", "data.val_len=-1"] + root)
    _, val = recipe.build_data(config)
    expected = HRFolder(val_dir, 4, 16, train=False)
    assert len(val) == 3 and all(torch.equal(val[i]["hr"], expected[i]["hr"]) for i in range(3))


def test_a_target_size_the_unet_cannot_halve_is_one_line_before_training(tiny, capsys):
    """A 3-level UNet halves the target twice: 36 works, 20 works, 24 -> 12 -> 6 works, 18 -> 9 -> 4.5 does not."""
    from trainhub.cli import main

    base = [*tiny, "model.unet.channel_multiplier=[1,2,2]", "data.l_resolution=6"]
    rc = main(["run", "sr3", "--dry-run", *base, "data.r_resolution=18"])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "trainhub: error: data.r_resolution=18 must be a multiple of 4: the UNet halves it 2 times "
        "(model.unet.channel_multiplier has 3 levels)")
    assert main(["run", "sr3", "--dry-run", *base, "data.r_resolution=24"]) == 0
