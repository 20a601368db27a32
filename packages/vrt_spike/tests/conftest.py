from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

# a network and a simulated dataset small enough for CPU tests (stage 1 keeps one mutual-attention layer)
TINY_MODEL = ["model.depths=[2,1,1,1,1,1,1,1]", "model.embed_dims=[8,8,8,8,8,8,8,8]", "model.num_heads=1",
              "model.window_size=4", "model.window_frames=2", "model.flow_width=4", "model.spike_dim=8",
              "model.spike_segments=2", "model.spike_encoder_blocks=1", "model.fuse.heads=1", "model.spike_tsa.heads=1",
              "model.fuse_stages=[1,4]"]
TINY_DATA = ["data.seq_len=2", "data.train_crop_size=16", "data.num_bins=8", "data.val_max_clips=1",
             "data.embedded.size=32", "data.embedded.frames=3", "data.embedded.train_sequences=2",
             "data.embedded.val_sequences=1", "data.embedded.subframes=8"]
FAST = ["train.batch_size=1", "loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=1",
        "train.measure_flops=false", "train.memory_log_every=0", "train.warmup_steps=0"]


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One folder for the generated embedded datasets of the whole session."""
    return str(tmp_path_factory.mktemp("vrt_spike_cache"))


@pytest.fixture(scope="session")
def tiny(embedded_dir: str) -> list[str]:
    return TINY_MODEL + TINY_DATA + FAST + [f"data.embedded.dir={embedded_dir}"]
