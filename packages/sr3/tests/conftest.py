from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

# a UNet small enough for CPU tests: 16 -> 32 doubling levels, one attention level
TINY = ["model.unet.inner_channel=16", "model.unet.norm_groups=4", "model.unet.channel_multiplier=[1,2]",
        "model.unet.attn_res=[8]", "model.unet.image_size=16", "model.unet.res_blocks=1",
        "data.l_resolution=4", "data.r_resolution=16", "model.eval_steps=4", "data.val_len=4",
        "model.beta_schedule.train.n_timestep=100", "train.batch_size=4",
        "loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=5"]


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def photos(folder, n=3, size=(40, 48), seed=0):
    """``n`` random RGB images (size = width, height) in ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(name="photos")
def photos_fixture():
    """``photos(folder, n=3, size=(w, h), seed=0)``: random RGB images written into ``folder``."""
    return photos


@pytest.fixture
def prepared(tmp_path):
    """``prepared(kind, l_res, r_res, n=2)``: a dataset prepared by ``trainhub prepare sr3`` in tmp_path (``img``
    folders or ``lmdb``), made once per kind and sizes."""
    from trainhub_sr3.data import prepare

    def make(kind, l_res, r_res, n=2):
        out = tmp_path / f"{kind}_{l_res}_{r_res}"
        if not out.exists():
            src = photos(tmp_path / f"src_{n}", n, size=(r_res + 8, r_res + 3))
            prepare(src, out, l_res, r_res, progress=False, lmdb=kind == "lmdb")
        return out

    return make
