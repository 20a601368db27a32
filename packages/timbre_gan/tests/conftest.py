from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# 16 kHz, 0.5 s segments; 6 synthesised one-second pieces -> 8 train pairs, 4 val pairs; tiny networks
TINY_DATA = ["data.synth.num_files=6", "data.synth.seconds=1.0", "data.val_every=3"]
TINY_MODEL = ["model.generator.channels=4", "model.generator.strides=[4]", "model.generator.bottleneck_dilations=[1,3]",
              "model.discriminator.channels=4", "model.discriminator.strides=[[2,2],[2,2]]",
              "model.discriminator.resolutions=[[512,128,512]]", "loss.stft_resolutions=[[512,128,512],[256,64,256]]"]
FAST = ["train.batch_size=4", "loader.num_workers=0", "loggers.console.progress_bar=false", "train.log_every=1",
        "train.measure_flops=false", "eval.media_examples=1"]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the session: the tiny dataset is prepared by the first run that needs it."""
    return tmp_path_factory.mktemp("timbre_cache")


@pytest.fixture(scope="session")
def tiny(tiny_cache: Path) -> list[str]:
    return TINY_DATA + TINY_MODEL + FAST + [f"data.cache_dir={tiny_cache}"]


@pytest.fixture
def tiny_data():
    """A small data section for preparation tests: ``tiny_data(num_files=..)``."""
    from trainhub_timbre_gan.config import SynthConfig, TimbreData

    def make(num_files: int = 6, **kw):
        return TimbreData(synth=SynthConfig(num_files=num_files, seconds=1.0), val_every=3, **kw)

    return make
