"""Datasets: embedded classes, custom folder, class-per-subfolder, COCO; crop, size, subset, flips; config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainhub import UserError
from trainhub.resolve import resolve_config
from trainhub_dit.data import EmbeddedShapes, center_crop_image, coco, custom_folder, image_folder
from trainhub_dit.recipe import DiTRecipe


def write_image(path, w: int, h: int, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = color
    arr[:, : w // 4] = 255  # a white band on the left, to see flips
    Image.fromarray(arr).save(path)


def test_embedded_classes_differ_by_shape_not_colour() -> None:
    ds = EmbeddedShapes(120, 32, hflip=False)
    assert ds.classes == ("stripes", "square", "disc", "cross", "ring", "triangle")
    items = [ds[i] for i in range(120)]
    assert [int(it["y"]) for it in items[:8]] == [0, 1, 2, 3, 4, 5, 0, 1]
    assert items[0]["x"].shape == (3, 32, 32) and -1 <= items[0]["x"].min() and items[0]["x"].max() <= 1
    assert torch.equal(ds[5]["x"], items[5]["x"])
    assert not torch.equal(EmbeddedShapes(8, 32, "val", hflip=False)[0]["x"], items[0]["x"])
    fill: dict[int, list[float]] = {}
    for it in items:
        c, x = int(it["y"]), (it["x"] + 1) / 2
        fg = x.max(0).values > 0.52  # the shape is bright (max channel >= 0.7), the background dark (<= 0.35)
        rows, cols = fg.any(1).nonzero().flatten(), fg.any(0).nonzero().flatten()
        box = fg[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        fill.setdefault(c, []).append(float(box.float().mean()))
        if c == 4:  # a ring's middle is background
            cy, cx = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
            assert not fg[cy, cx]
        if c == 0:  # stripes cross the whole image in several bands
            assert fg.all(1).sum() >= 4 and int((fg[1:, 0] != fg[:-1, 0]).sum()) >= 3
    mean = {c: sum(v) / len(v) for c, v in fill.items()}
    assert mean[1] > 0.9 and 0.7 < mean[2] < 0.85 and max(mean[3], mean[4], mean[5]) < 0.65  # bounding-box fill
    # colour does not give the class away: every class comes in several dominant hues
    for c in range(6):
        hues = set()
        for it in items[c::6]:
            x = (it["x"] + 1) / 2
            hues.add(int(x[:, x.max(0).values > 0.52].mean(1).argmax()))
        assert len(hues) >= 2, ds.classes[c]
    assert EmbeddedShapes(4, 16, num_classes=3).classes == ("stripes", "square", "disc")
    with pytest.raises(UserError, match="model.num_classes=7 must be 1..6"):
        EmbeddedShapes(4, 16, num_classes=7)


def test_center_crop_keeps_the_middle_at_the_size() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))  # the middle third is white
    out = center_crop_image(img, 32)
    assert out.size == (32, 32) and np.asarray(out).mean() > 250


def test_folders_and_coco(tmp_path) -> None:
    for i, (name, color) in enumerate([("cat", (200, 0, 0)), ("dog", (0, 200, 0))]):
        for j in range(3):
            write_image(tmp_path / "folder" / name / f"{j}.png", 40 + j, 30, color)
    write_image(tmp_path / "folder" / "notes" / "x.txt.png", 10, 10, (0, 0, 0))
    ds = image_folder(tmp_path / "folder", image_size=16, center_crop=True, hflip=False)
    assert ds.classes == ("cat", "dog", "notes") and list(ds.labels) == [0, 0, 0, 1, 1, 1, 2]
    x = ds[0]["x"]
    assert x.shape == (3, 16, 16) and x[0, 8, 8] > 0.5 and x[1, 8, 8] < -0.9
    assert len(image_folder(tmp_path / "folder", image_size=16, num_samples=4)) == 4
    assert set(custom_folder(tmp_path / "folder", image_size=8).labels) == {0}

    ann = {"images": [{"id": 1, "file_name": "cat/0.png"}, {"id": 2, "file_name": "dog/1.png"}, {"id": 3, "file_name": "dog/2.png"}],
           "annotations": [{"image_id": 1, "category_id": 17, "area": 5.0}, {"image_id": 1, "category_id": 3, "area": 50.0},
                           {"image_id": 2, "category_id": 17, "area": 9.0}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    c = coco(tmp_path / "folder", tmp_path / "ann.json", image_size=16, hflip=False)
    assert c.classes == ("cat", "dog") and list(c.labels) == [0, 1] and len(c) == 2  # image 3 has no annotation
    assert len(coco(tmp_path / "folder", tmp_path / "ann.json", "none", image_size=16)) == 3


def test_flips_follow_the_global_rng(tmp_path) -> None:
    write_image(tmp_path / "a" / "0.png", 16, 16, (0, 0, 0))
    ds = custom_folder(tmp_path / "a", image_size=16, hflip=True)
    seen = set()
    for s in range(20):
        torch.manual_seed(s)
        seen.add(float(ds[0]["x"][0, 0, 0]))
    assert seen == {1.0, -1.0}


def test_config_mistakes_are_one_line_errors(tmp_path) -> None:
    from trainhub.plugins import get_plugins

    recipe = DiTRecipe()
    plugins = get_plugins()
    with pytest.raises(UserError, match="needs data.root"):
        recipe.build_data(resolve_config(recipe, plugins, None, ["data.source=imagefolder"]))
    write_image(tmp_path / "f" / "a" / "0.png", 8, 8, (1, 2, 3))
    write_image(tmp_path / "f" / "b" / "0.png", 8, 8, (1, 2, 3))
    cfg = resolve_config(recipe, plugins, None, ["data.source=imagefolder", f"data.root={tmp_path / 'f'}", "model.num_classes=1"])
    with pytest.raises(UserError, match="set model.num_classes=2"):
        recipe.build_data(cfg)
    with pytest.raises(UserError, match="not divisible by the patch size"):
        recipe.build_models(resolve_config(recipe, plugins, None, ["data.image_size=30"]))
    with pytest.raises(UserError, match="needs data.annotations"):
        recipe.build_data(resolve_config(recipe, plugins, None, ["data.source=coco", f"data.root={tmp_path}"]))


def test_data_paths_the_source_does_not_read_are_refused_before_training(tmp_path, capsys) -> None:
    """data.root / data.val_root with the built-in shapes (and COCO annotations with another source) would be ignored:
    the config is refused in one line, a dry run included, naming the key and the sources that read it."""
    from trainhub import ConfigError
    from trainhub.cli import main
    from trainhub.plugins import get_plugins

    assert main(["run", "dit", "--dry-run", "--data.root", str(tmp_path / "photos"), "loader.num_workers=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"data.root={tmp_path / 'photos'} is not read by data.source=embedded" in err
    assert "custom, imagefolder, coco, latents" in err
    recipe, plugins = DiTRecipe(), get_plugins()
    with pytest.raises(ConfigError, match="data.val_root=v is not read by data.source=embedded"):
        resolve_config(recipe, plugins, None, ["data.val_root=v"])
    with pytest.raises(ConfigError, match="data.annotations=a.json is not read by data.source=imagefolder; it is read "
                                          "by data.source=coco"):
        resolve_config(recipe, plugins, None, ["data.source=imagefolder", "data.root=r", "data.annotations=a.json"])
    resolve_config(recipe, plugins, None, ["data.source=latents", "data.root=r", "data.val_root=v"])  # read: accepted


def test_latent_subset_is_the_same_random_subset_as_for_images(tmp_path) -> None:
    """data.num_samples on precomputed latents written in class order (as precompute-latents writes an imagefolder)
    takes the fixed random subset the image datasets take, so it holds every class, not the first few."""
    from safetensors.torch import save_file

    from trainhub_dit.data import subsample
    from trainhub_dit.latents import FORMAT, LatentShards

    labels = torch.arange(10).repeat_interleave(20)  # 10 classes of 20, sorted by class, in two shards
    for k, part in enumerate(labels.split(120)):
        n = len(part)
        save_file({"mean": torch.arange(n * 2 * 4, dtype=torch.float16).view(n, 2, 4, 1, 1) + 120 * 8 * k,
                   "std": torch.zeros(n, 2, 4, 1, 1).half(), "label": part.clone()}, str(tmp_path / f"shard-{k:05d}.safetensors"))
    (tmp_path / "index.json").write_text(json.dumps({
        "format": FORMAT, "version": 1, "num_samples": 200, "channels": 4, "size": 1, "scale": 1.0, "image_size": 8,
        "flips": 2, "shards": [{"file": "shard-00000.safetensors", "count": 120}, {"file": "shard-00001.safetensors", "count": 80}]}))
    ds = LatentShards(tmp_path, hflip=False, num_samples=50)
    items = [ds[i] for i in range(len(ds))]
    assert len(ds) == 50 and sorted({int(it["y"]) for it in items}) == list(range(10))
    # the items are the latents at the image datasets' subset indices, across the shard boundary
    assert [int(it["x"][0, 0, 0]) // 8 for it in items] == subsample(200, 50).tolist()
    assert len(LatentShards(tmp_path, hflip=False)) == len(LatentShards(tmp_path, num_samples=500)) == 200


def test_unreadable_images_are_skipped_or_stop_the_run(tmp_path, capsys) -> None:
    write_image(tmp_path / "a" / "0.png", 8, 8, (255, 0, 0))
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    write_image(tmp_path / "a" / "2.png", 8, 8, (0, 255, 0))
    ds = custom_folder(tmp_path / "a", image_size=8, hflip=False)
    assert torch.equal(ds[1]["x"], ds[2]["x"])  # replaced by the next readable image, the same one every time
    assert torch.equal(ds[1]["x"], ds[2]["x"])
    err = capsys.readouterr().err
    assert err.count("skipping an unreadable image") == 1 and "1.png" in err
    strict = custom_folder(tmp_path / "a", image_size=8, on_error="stop")
    with pytest.raises(UserError, match=r"cannot read image .*1\.png \(UnidentifiedImageError\)$"):
        strict[1]
