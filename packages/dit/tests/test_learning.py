"""Learning direction on a shortened embedded run, scored by the recipe's own eval: after a short run the generated
samples are recognised by the class probe more often than chance, and the noise prediction beats the untrained
model's (adaLN-Zero starts at a zero output, whose noise MSE is 1). The full margin belongs to the default run
(README); this only checks that the recipe learns in the right direction."""

from __future__ import annotations

import json

import pytest

from trainhub.training.run import train

# two classes (stripes, square), the default model and batch, a constant lr: about a minute on one loaded CPU core
SHORT = ["model.num_classes=2", "train.max_steps=300", "train.warmup_steps=30", "train.schedule=constant",
         "train.ema.decay=0.9", "train.eval_every=0", "train.checkpoint_every_epoch=false", "train.log_every=50",
         "eval.steps=25", "eval.val_batches=2", "eval.samples_per_class=4", "eval.probe_per_class=12",
         "eval.probe_train_images=512", "data.num_samples=2048", "loader.num_workers=0",
         "loggers.console.progress_bar=false"]


@pytest.mark.slow
def test_a_short_run_draws_recognisable_classes(tmp_path) -> None:
    res = train("dit", overrides=SHORT, run_dir=tmp_path / "run")
    assert res.status == "completed"
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "class_probe_acc" in r][-1]
    assert last["class_probe_chance"] == 0.5
    assert last["class_probe_real_acc"] > 0.9, last  # the probe itself recognises held-out real images
    assert last["class_probe_acc"] > 0.7, last  # generated samples: well above chance (0.5)
    assert last["val_mse"] < 0.5, last  # the untrained model's noise MSE is 1
    assert (res.run_dir / "samples" / "step_0000300" / "samples.png").is_file()
