"""The reference's LMDB layout (datatype: lmdb): what `trainhub prepare sr3 --lmdb` writes and what is read.

The layout, from the reference's data/prepare_data.py and data/LRHR_dataset.py: one LMDB environment, PNG bytes
under the keys hr_<R>_<5-digit index>, sr_<r>_<R>_<index> and lr_<r>_<index>, and b"length" holding the count
as a decimal string."""

from __future__ import annotations

import io
import subprocess
import sys

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from trainhub import UserError
from trainhub_sr3.data import prepare, to_tensor
from trainhub_sr3.lmdb_store import LMDBPairs


def _published_resize_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision's resize(img, size) (shorter side to size, the other int(size * long / short)) then
    center_crop(size) (offsets int(round((side - size) / 2))), bicubic, as the reference's prepare script calls them."""
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _read_all(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor().iternext())
    env.close()
    return items


def test_prepare_lmdb_writes_the_reference_layout(tmp_path, photos):
    src = photos(tmp_path / "src", 3, size=(45, 37))
    r = subprocess.run([sys.executable, "-m", "trainhub", "prepare", "sr3", "--path", str(src), "--out", str(tmp_path / "db"),
                        "--sizes", "8,32", "--lmdb"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "prepared 3 images" in r.stdout
    items = _read_all(tmp_path / "db")
    expected = {f"{k}_{i:05d}".encode() for i in range(3) for k in ("hr_32", "sr_8_32", "lr_8")} | {b"length"}
    assert set(items) == expected and items[b"length"] == b"3"
    prepare(src, tmp_path / "folders", 8, 32, progress=False)
    for i, name in enumerate(sorted(src.iterdir())):
        original = Image.open(name).convert("RGB")
        lr = _published_resize_crop(original, 8)  # the LR comes from the source image, not from the HR crop
        want = {"hr_32": _published_resize_crop(original, 32), "lr_8": lr, "sr_8_32": lr.resize((32, 32), Image.BICUBIC)}
        for kind, img in want.items():
            value = items[f"{kind}_{i:05d}".encode()]
            assert value.startswith(b"\x89PNG\r\n\x1a\n")
            got = np.asarray(Image.open(io.BytesIO(value)))
            assert np.array_equal(got, np.asarray(img)), (kind, i)
            folder = {"hr_32": "hr_32", "lr_8": "lr_8", "sr_8_32": "sr_8_32"}[kind]
            assert np.array_equal(got, np.asarray(Image.open(tmp_path / "folders" / folder / f"{i:05d}.png")))


def test_a_second_prepare_continues_after_the_images_already_written(tmp_path, photos):
    src = photos(tmp_path / "src", 2)
    assert prepare(src, tmp_path / "db", 8, 32, progress=False, lmdb=True) == 2
    before = _read_all(tmp_path / "db")
    photos(tmp_path / "more", 3, seed=1)
    (tmp_path / "more" / "img2.png").rename(src / "img2.png")  # sorts after the two already in the database
    assert prepare(src, tmp_path / "db", 8, 32, progress=False, lmdb=True) == 3
    after = _read_all(tmp_path / "db")
    assert after[b"length"] == b"3" and all(after[k] == v for k, v in before.items() if k != b"length")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(after[b"hr_32_00002"]))),
                          np.asarray(_published_resize_crop(Image.open(src / "img2.png").convert("RGB"), 32)))
    with pytest.raises(UserError, match=r"already an LMDB of other sizes \(hr_32, lr_8, sr_8_32\)"):
        prepare(src, tmp_path / "db", 16, 64, progress=False, lmdb=True)


def _reference_db(path, images, l_res, r_res, length=None, skip=()):
    """An LMDB written here the way the reference's prepare script writes it (key format, PNG bytes, length)."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (lr, hr, sr) in enumerate(images):
            if i in skip:
                continue
            for key, img in ((f"lr_{l_res}_{str(i).zfill(5)}", lr), (f"hr_{r_res}_{str(i).zfill(5)}", hr),
                             (f"sr_{l_res}_{r_res}_{str(i).zfill(5)}", sr)):
                buf = io.BytesIO()
                img.save(buf, format="png")
                txn.put(key.encode("utf-8"), buf.getvalue())
        txn.put("length".encode("utf-8"), str(len(images) if length is None else length).encode("utf-8"))
    env.close()


def _triples(n, l_res=4, r_res=16):
    rng = np.random.default_rng(3)
    return [tuple(Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)) for s in (l_res, r_res, r_res)) for _ in range(n)]


def test_reads_an_lmdb_in_the_reference_layout(tmp_path):
    imgs = _triples(4)
    _reference_db(tmp_path / "db", imgs, 4, 16, skip={2})
    with pytest.warns(UserWarning, match=r"1 of indices 0..3 have no hr/sr pair and are skipped"):
        ds = LMDBPairs(tmp_path / "db", 4, 16)
    assert len(ds) == 3
    item = ds[2]  # index 3: index 2 has no images
    for key, k in (("lr", 0), ("hr", 1), ("sr", 2)):
        torch.testing.assert_close(item[key], to_tensor(imgs[3][k]), rtol=0, atol=0)
    assert len(LMDBPairs(tmp_path / "db", 4, 16, limit=2)) == 2  # data_len: the first indices only
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)))  # a worker opens its own handle
    torch.testing.assert_close(batch["hr"][2], to_tensor(imgs[3][1]), rtol=0, atol=0)


def test_lmdb_errors_name_what_is_wrong(tmp_path):
    _reference_db(tmp_path / "db", _triples(2), 4, 16)
    with pytest.raises(UserError, match=r"has no hr_32_\*/sr_8_32_\* images \(it holds hr_16, lr_4, sr_4_16\): set data.l_resolution"):
        LMDBPairs(tmp_path / "db", 8, 32)
    bad = _triples(2)
    bad[1] = (bad[1][0], bad[1][1].resize((16, 12)), bad[1][2])
    _reference_db(tmp_path / "odd", bad, 4, 16)
    with pytest.raises(UserError, match=r"image hr_16_00001 is 16x12, expected 16x16"):
        LMDBPairs(tmp_path / "odd", 4, 16)[1]
    with pytest.raises(UserError, match=r"not an LMDB database \(no data.mdb"):
        LMDBPairs(tmp_path, 4, 16)
