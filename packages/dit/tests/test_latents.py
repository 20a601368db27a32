"""Latent mode with a small randomly initialised VAE: precompute round trip, training on shards, decoding samples."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from trainhub.plugins import get_plugins  # noqa: E402
from trainhub.resolve import resolve_config
from trainhub.training.run import train  # noqa: E402
from trainhub_dit.data import EmbeddedShapes  # noqa: E402
from trainhub_dit.latents import LatentShards, encode, load_vae  # noqa: E402
from trainhub_dit.recipe import model_shape  # noqa: E402


def test_precompute_round_trip_and_training_on_shards(tmp_path, tiny_vae_dir, micro) -> None:
    recipe = get_plugins().recipe("dit")
    out = tmp_path / "latents"
    recipe.command(["precompute-latents", "--out", str(out), "--batch-size", "5", "--shard-size", "8", "--device", "cpu",
                    f"data.vae={tiny_vae_dir}", "data.image_size=16", "data.num_samples=12", "model.num_classes=4"])
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 12 and index["channels"] == 4 and index["size"] == 8 and index["flips"] == 2
    assert [s["count"] for s in index["shards"]] == [10, 2] and index["scale"] == pytest.approx(0.18215)
    assert index["classes"] == list(EmbeddedShapes.classes[:4])

    # the stored posterior is the VAE's for the image and for its mirror image
    vae = load_vae(tiny_vae_dir, torch.device("cpu"))
    img = EmbeddedShapes(12, 16, hflip=False, num_classes=4)[11]
    mean, std = encode(vae, torch.stack([img["x"], img["x"].flip(-1)]))
    ds = LatentShards(out, hflip=True)
    from safetensors import safe_open

    with safe_open(str(out / "shard-00001.safetensors"), framework="pt") as f:
        stored_mean, stored_std = f.get_tensor("mean")[1].float(), f.get_tensor("std")[1].float()
        assert int(f.get_tensor("label")[1]) == 3
    assert torch.allclose(stored_mean, mean, atol=2e-3) and torch.allclose(stored_std, std, atol=2e-3)
    # items are posterior samples times the scale, of either orientation
    torch.manual_seed(0)
    item = ds[11]
    assert item["x"].shape == (4, 8, 8) and int(item["y"]) == 3
    err = min(float(((item["x"] / 0.18215 - m) / s).abs().max()) for m, s in zip(mean, std))
    assert err < 6

    cfg = resolve_config(recipe, get_plugins(), None, micro + ["data.source=latents", f"data.root={out}"])
    assert model_shape(cfg) == (4, 8)
    res = train("dit", overrides=micro + ["data.source=latents", f"data.root={out}", "train.max_steps=2",
                                          "model.num_classes=4"], run_dir=tmp_path / "run")
    assert res.status == "completed"
    grid = res.run_dir / "samples" / "step_0000002" / "samples.png"
    assert grid.is_file()  # decoded through the VAE recorded in index.json


def test_on_the_fly_latents_and_wrong_vae_dir(tmp_path, tiny_vae_dir, micro) -> None:
    from trainhub import UserError

    res = train("dit", overrides=micro + [f"data.vae={tiny_vae_dir}", "train.max_steps=1"], run_dir=tmp_path / "run")
    assert res.status == "completed" and (res.run_dir / "samples" / "step_0000001" / "samples.png").is_file()
    with pytest.raises(UserError, match="no config.json"):
        train("dit", overrides=micro + [f"data.vae={tmp_path}", "train.max_steps=1"], run_dir=tmp_path / "bad")
