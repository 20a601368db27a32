"""FID through torchmetrics from a local Inception weights file (here a randomly initialised one: nothing is downloaded)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
pytest.importorskip("torchmetrics.image.fid")

from trainhub import UserError  # noqa: E402
from trainhub.training.run import train  # noqa: E402
from trainhub_dit.metrics import fid, fid_unavailable  # noqa: E402


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """torch-fidelity's Inception-v3 with random weights, saved as a plain state dict like the released file."""
    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        mp.undo()
    for m in net.modules():  # variance-preserving init, so that the random features are not vanishingly small
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def test_fid_of_a_set_with_itself_is_smaller_than_against_another(inception_weights: str) -> None:
    assert fid_unavailable(inception_weights) is None
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    b = (torch.rand(4, 3, 16, 16, generator=g) * 0.5).clamp(-1, 1)  # darker, less varied
    same, other = fid([a], [a], inception_weights, torch.device("cpu")), fid([a], [b], inception_weights, torch.device("cpu"))
    assert abs(same) < 1e-3 and other > 1.0


def test_weights_file_with_other_objects_is_refused(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(1), "x": Fraction(1, 3)}, bad)
    with pytest.raises(UserError, match="not a plain state dict"):
        fid([torch.zeros(2, 3, 8, 8)], [torch.zeros(2, 3, 8, 8)], str(bad), torch.device("cpu"))
    assert "does not exist" in fid_unavailable(str(tmp_path / "missing.pth"))


def test_fid_is_an_eval_metric(tmp_path, micro, inception_weights) -> None:
    res = train("dit", overrides=micro + ["train.max_steps=1", f"eval.fid_inception_weights={inception_weights}",
                                          "eval.fid_num_samples=4"], run_dir=tmp_path / "run")
    evals = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1]["fid"] > 0


def fid_on_rank(weights: str, init_method: str, rank: int) -> dict:
    """One rank of a 2-process (gloo) eval: the recipe's FID of 5 generated images, with 4 real images of its own as
    its validation shard; returns the FID and the images it handed to the FID metric."""
    import contextlib
    from datetime import timedelta

    import torch.distributed as dist

    import trainhub_dit.recipe as R
    from trainhub import EvalContext
    from trainhub.plugins import get_plugins
    from trainhub.resolve import resolve_config

    recipe = get_plugins().recipe("dit")
    cfg = resolve_config(recipe, get_plugins(), None, ["model.num_classes=3", "model.diffusion_steps=10", "eval.steps=2",
                         "eval.fid_num_samples=5", f"eval.fid_inception_weights={weights}"])
    net = recipe.build_models(cfg)["model"].eval()
    real = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(10 + rank)) * 2 - 1
    seen: dict = {}

    def recording_fid(real_batches, fake_batches, *args):
        seen["real"], seen["fake"] = torch.cat(list(real_batches)), torch.cat(list(fake_batches))
        return fid([seen["real"]], [seen["fake"]], *args)

    ctx = EvalContext({"model": net}, [{"x": real[:2], "y": torch.zeros(2)}, {"x": real[2:], "y": torch.zeros(2)}],
                      torch.device("cpu"), cfg, 0, None, rank == 0, contextlib.nullcontext, None)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2, timeout=timedelta(seconds=120))
    R.fid = recording_fid
    try:
        return {"fid": recipe._fid(ctx, net), **seen}
    finally:
        R.fid = fid
        dist.destroy_process_group()


def test_fid_under_ddp_splits_the_generation_and_equals_the_fid_of_all_images(tmp_path, inception_weights) -> None:
    """Two ranks each generate their share of the 5 images of eval.fid_num_samples (2 + 3, different images) and read
    their share of real images from their shards; both return the FID of all 5 generated against all 5 real ones."""
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys, torch; sys.path.insert(0, sys.argv[1]); import test_fid; torch.set_num_threads(1); "
         "torch.save(test_fid.fid_on_rank(sys.argv[2], sys.argv[3], 1), sys.argv[4])",
         str(Path(__file__).parent), inception_weights, init, str(tmp_path / "rank1.pt")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        r0 = fid_on_rank(inception_weights, init, 0)
    except BaseException:
        other.kill()
        raise
    finally:
        _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err
    r1 = torch.load(tmp_path / "rank1.pt")
    assert (len(r0["fake"]), len(r1["fake"]), len(r0["real"]), len(r1["real"])) == (2, 3, 2, 3)
    assert not torch.equal(r0["fake"], r1["fake"][:2])  # each rank draws its own images
    whole = fid([torch.cat([r0["real"], r1["real"]])], [torch.cat([r0["fake"], r1["fake"]])], inception_weights,
                torch.device("cpu"))
    assert r0["fid"] == r1["fid"] == pytest.approx(whole, rel=1e-3)
