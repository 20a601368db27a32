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
