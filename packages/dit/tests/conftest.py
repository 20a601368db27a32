from __future__ import annotations

from typing import Any

import pytest
import torch

from trainhub import hookimpl

torch.set_num_threads(1)


class MicroDiT:
    """A third-party plugin registering a micro DiT variant: trained by the dit recipe through ``model.name``."""

    @hookimpl
    def trainhub_register_models(self, register: Any) -> None:
        from trainhub_dit.model import DiT

        register("DiT-Micro/4", lambda **kw: DiT(depth=2, hidden_size=32, num_heads=2, patch_size=4, **kw))


# 16x16 embedded images of 4 classes, a 2-block DiT, short schedules, no class probe: a few seconds per run on one
# CPU core
MICRO = ["model.name=DiT-Micro/4", "model.num_classes=4", "data.image_size=16", "eval.probe_per_class=0", "data.num_samples=64", "model.diffusion_steps=100",
         "eval.steps=4", "eval.samples_per_class=2", "eval.val_batches=1", "train.batch_size=4",
         "train.gradient_accumulation_steps=2", "train.warmup_steps=2", "train.lr=1e-3", "train.ema.decay=0.9",
         "train.eval_every=0", "train.checkpoint_every=0", "train.checkpoint_every_epoch=false", "train.log_every=2",
         "loader.num_workers=0", "loggers.console.progress_bar=false"]


@pytest.fixture
def micro(trainhub_register: Any) -> list[str]:
    trainhub_register(MicroDiT())
    return list(MICRO)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A randomly initialised 2-level AutoencoderKL (downsampling 2, 4 latent channels) saved with save_pretrained."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4, sample_size=16)
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d)
    return d
