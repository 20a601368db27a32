"""FID through torchmetrics from a local Inception weights file (here a randomly initialised one: nothing is downloaded)."""

from __future__ import annotations

import json
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
