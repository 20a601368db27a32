"""Training through the shared trainer: the GAN start switch, exact resume across it, monitoring."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from trainhub.cli import main
from trainhub.plugins import get_plugins
from trainhub.resolve import resolve_config
from trainhub.testing import read_metrics_file
from trainhub.training.run import train
from trainhub_timbre_gan.recipe import prepared_dir

# 8 train pairs / batch 4 = 2 steps per epoch: epochs 0-1 (steps 1-4) reconstruction only, epoch 2 (steps 5-6) GAN
SCHEDULE = ["train.epochs=3", "train.lr=2e-4", "gan.gan_start_epoch=2", "gan.warmup_epochs=2", "train.checkpoint_every=4",
            "train.eval_every=0", "train.eval_at_end=false", "train.ema.decay=0.5", "gan.explode_limit=1e-6"]


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    return train("timbre_gan", overrides=tiny + SCHEDULE, run_dir=tmp_path_factory.mktemp("full"))


def initial_models(run_dir):
    """The models exactly as the trainer built them (it seeds with train.seed before build_models)."""
    recipe = get_plugins().recipe("timbre_gan")
    config = resolve_config(recipe, get_plugins(), run_dir / "config.yaml")
    torch.manual_seed(config.train.seed)
    return recipe.build_models(config)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_discriminator_untouched_before_gan_start_then_trained(full_run):
    assert full_run.status == "completed" and full_run.step == 6
    ckpts = full_run.run_dir / "checkpoints"
    init = {n: {k: v for k, v in m.state_dict().items()} for n, m in initial_models(full_run.run_dir).items()}
    before = torch.load(ckpts / "checkpoint-4" / "optimizer.pt", weights_only=True)
    after = torch.load(ckpts / "checkpoint-6" / "optimizer.pt", weights_only=True)
    # epoch 1 ends at step 4: the discriminator, its optimizer state and its lr schedule have not moved
    assert same(load_file(str(ckpts / "checkpoint-4" / "discriminator.safetensors")), init["discriminator"])
    assert before["optimizers"]["d"]["state"] == {}
    assert before["schedulers"]["d"]["last_epoch"] == 0
    assert not same(load_file(str(ckpts / "checkpoint-4" / "generator.safetensors")), init["generator"])
    # after the GAN start it trains: two steps
    assert not same(load_file(str(ckpts / "checkpoint-6" / "discriminator.safetensors")), init["discriminator"])
    assert {int(s["step"]) for s in after["optimizers"]["d"]["state"].values()} == {2}
    assert after["schedulers"]["d"]["last_epoch"] == 2


def test_metrics_show_the_switch_the_warmup_and_a_discriminator_warning(full_run):
    train_rows = read_metrics_file(full_run.run_dir, "train")
    by_step = {r["step"]: r for r in train_rows}
    for step in (1, 2, 3, 4):
        r = by_step[step]
        assert r["gan_active"] == 0.0 and "loss_d" not in r and "adv_g" not in r
        assert {"l1", "stft_sc", "stft_mag", "loss_g"} <= set(r)
    for step in (5, 6):
        assert by_step[step]["gan_active"] == 1.0
        assert {"loss_d", "D_real", "D_fake", "adv_g", "fm", "loss_g"} <= set(by_step[step])
    # gan.warmup_epochs=2 -> 4 warm-up steps; the discriminator's warm-up starts with its first step
    assert [round(by_step[s]["lr_g"] / 2e-4, 4) for s in (1, 2, 3, 4, 5)] == [0.5, 0.75, 1.0, 1.0, 1.0]
    assert [round(by_step[s]["lr_d"] / 2e-4, 4) for s in (1, 4, 5, 6)] == [0.25, 0.25, 0.5, 0.75]
    warnings = [w for w in read_metrics_file(full_run.run_dir, "warning") if w["warning"] != "cpu"]  # cpu: a loaded test machine
    assert [w["warning"] for w in warnings] == ["discriminator_explode"] and warnings[0]["step"] == 5


def test_resume_across_the_gan_start_is_exact(tiny, full_run, tmp_path, interrupt_and_resume):
    res = interrupt_and_resume("timbre_gan", tiny + SCHEDULE, tmp_path / "cut", at=3)
    assert res.status == "completed" and res.step == 6
    for name in ("generator", "discriminator", "ema_generator"):
        a = load_file(str(full_run.last_checkpoint / f"{name}.safetensors"))
        b = load_file(str(res.last_checkpoint / f"{name}.safetensors"))
        assert same(a, b), name


def test_a_saved_config_derives_the_warmup_again_from_its_own_data(tiny, full_run, tmp_path):
    """train.warmup_steps derived from gan.warmup_epochs is saved in config.yaml but is not a user setting: eval on
    another prepared folder and a new run from the saved config derive it again (12 pairs / batch 4 = 3 steps per
    epoch: 6 warm-up steps, not the saved 4)."""
    from trainhub_timbre_gan.data import read_pair_list
    from trainhub_timbre_gan.prepare import prepare

    recipe, plugins = get_plugins().recipe("timbre_gan"), get_plugins()
    saved = full_run.run_dir / "config.yaml"
    assert resolve_config(recipe, plugins, saved).train.warmup_steps == 4
    other = tmp_path / "other"
    prepare(resolve_config(recipe, plugins, None, tiny + ["data.synth.num_files=9"]).data, other, progress=False)
    assert len(read_pair_list(other / "train.txt")) == 12
    assert main(["eval", "timbre_gan", "--checkpoint", str(full_run.run_dir), f"data.root={other}"]) == 0
    run_dir = tmp_path / "again"
    assert main(["run", "timbre_gan", "--config", str(saved), "--run-dir", str(run_dir), f"data.root={other}", "train.epochs=1"]) == 0
    lrs = [round(r["lr_g"] / 2e-4, 4) for r in read_metrics_file(run_dir, "train")]
    assert lrs == [0.3333, 0.5, 0.6667]  # a 6-step warm-up
    again = resolve_config(recipe, plugins, run_dir / "config.yaml")
    assert (again.train.warmup_steps, again.gan.derived_warmup_steps) == (6, 6)


def test_sample_on_a_folder_skips_sub_folders_and_refuses_two_inputs_with_one_output(full_run, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "a_session.wav").mkdir(parents=True)  # a folder named like audio, sorted first
    sf.write(str(src / "take.wav"), 0.3 * np.sin(np.arange(16000) / 3), 16000)
    ckpt = ["sample", "timbre_gan", "--checkpoint", str(full_run.run_dir), "--device", "cpu", "--input", str(src)]
    assert main([*ckpt, "--out", str(tmp_path / "a")]) == 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["take_restored.wav"]
    assert sf.info(str(tmp_path / "a" / "take_restored.wav")).frames == 16000

    sf.write(str(src / "take.flac"), 0.3 * np.sin(np.arange(32000) / 9), 16000)  # would write take_restored.wav too
    capsys.readouterr()
    assert main([*ckpt, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1] == (f"trainhub: error: --input {src}: {src / 'take.flac'} and {src / 'take.wav'} would both be restored to "
                       f"{tmp_path / 'b' / 'take_restored.wav'}; rename one of them")
    assert not list((tmp_path / "b").iterdir())  # refused before anything is written


def test_a_short_cpu_run_of_the_default_problem_learns_through_the_gan_start_and_samples(tiny, tmp_path, capsys):
    """The default degradation chain, lr, EMA and losses on the tiny data and networks, shortened to 40 steps with
    the GAN on for the last 6: the restored validation audio moves toward the clean one from eval to eval and
    ends closer to it than the degraded input (STFT distance and SI-SDR); eval writes the wavs and the picture;
    the sample command works."""
    ov = tiny + ["train.epochs=20", "gan.gan_start_epoch=17", "train.eval_every=10", "train.log_every=10"]
    res = train("timbre_gan", overrides=ov, run_dir=tmp_path / "run")
    evals = read_metrics_file(res.run_dir, "eval")
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    first, m = evals[0], res.eval_metrics
    # measured: STFT distance 4.05 (input) -> 4.02, 3.90, 3.54, 3.20 at steps 10-40; SI-SDR 6.0 -> 8.0 dB
    assert m["mrstft_restored"] < first["mrstft_restored"] - 0.3, (first, m)
    assert m["mrstft_restored"] < m["mrstft_degraded"] - 0.3, m
    assert m["sisdr_restored"] > m["sisdr_degraded"] and m["lsd_restored"] < m["lsd_degraded"], m
    train_rows = {r["step"]: r for r in read_metrics_file(res.run_dir, "train")}
    # logged every 10 steps, averaged: steps 21-30 without the GAN, 6 of steps 31-40 (35-40) with it
    assert train_rows[30]["gan_active"] == 0.0 and train_rows[40]["gan_active"] == pytest.approx(0.6) and "loss_d" in train_rows[40]
    step_dir = res.run_dir / "samples" / f"step_{res.step:07d}"
    assert {p.name for p in step_dir.iterdir()} == {"example0_degraded.wav", "example0_restored.wav", "example0_clean.wav",
                                                     "spectrograms.png"}
    assert sf.info(str(step_dir / "example0_restored.wav")).frames == 8000

    # `trainhub sample` on the run's own degraded files (a folder)
    config = resolve_config(get_plugins().recipe("timbre_gan"), get_plugins(), res.run_dir / "config.yaml")
    src = prepared_dir(config.data) / "degraded"
    out = tmp_path / "restored"
    assert main(["sample", "timbre_gan", "--checkpoint", str(res.run_dir), "--input", str(src), "--out", str(out), "--device", "cpu"]) == 0
    files = sorted(out.iterdir())
    assert len(files) == len(list(src.glob("*.wav"))) and files[0].name.endswith("_restored.wav")
    assert sf.info(str(files[0])).frames == sf.info(str(sorted(src.glob("*.wav"))[0])).frames
    assert "_restored.wav" in capsys.readouterr().out


def test_training_on_a_folder_of_wav_files(tiny, tmp_path, run_recipe, read_metrics, capsys):
    """data.source_dir: a folder of clean recordings (22.05 kHz stereo here) is prepared into the cache on first use;
    an unreadable file is reported by path and left out."""
    from trainhub_timbre_gan.synth import synth_piece

    src = tmp_path / "recordings"
    src.mkdir()
    for i in range(3):
        mono = synth_piece(i, 1, 1.0, 22050)
        sf.write(str(src / f"take{i}.wav"), np.stack([mono, 0.5 * mono], axis=1), 22050)
    (src / "broken.wav").write_bytes(b"RIFF, but not audio")
    ov = [o for o in tiny if not o.startswith("data.cache_dir")] + [f"data.source_dir={src}", f"data.cache_dir={tmp_path / 'cache'}",
                                                                    "gan.gan_start_epoch=0", "gan.warmup_epochs=0"]
    res = run_recipe("timbre_gan", steps=2, overrides=ov)
    assert res.status == "completed" and res.step == 2
    prepared = next((tmp_path / "cache" / "timbre_gan").iterdir())
    # sorted: broken, take0, take1 (validation: every 3rd), take2 -> takes 0 and 2, two 0.5 s segments each
    assert len((prepared / "train.txt").read_text().splitlines()) == 4
    assert "problem: " + str(src / "broken.wav") in capsys.readouterr().err
    info = sf.info(str(next((prepared / "clean").glob("take0*.wav"))))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 8000)
    rows = read_metrics(res.run_dir, "train")
    assert rows[-1]["gan_active"] == 1.0 and "loss_d" in rows[-1]
    assert {"lsd_degraded", "lsd_restored"} <= set(read_metrics(res.run_dir, "eval")[-1])


def test_two_process_ddp_run_switches_on_the_gan(tiny, tmp_path):
    """torchrun with 2 CPU processes (gloo): the same two-phase step under DDP, the discriminator untouched until the
    GAN start and trained after it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    ov = tiny + ["train.batch_size=2", "train.max_steps=4", "gan.gan_start_epoch=1", "gan.warmup_epochs=0",
                 "train.checkpoint_every=2", "train.eval_every=0", "train.eval_at_end=false", "train.device=cpu"]
    r = subprocess.run([sys.executable, "-m", "trainhub", "run", "timbre_gan", "--nproc-per-node", "2", "--run-dir",
                        str(tmp_path / "ddp"), *ov], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {x["step"]: x for x in read_metrics_file(tmp_path / "ddp", "train")}
    assert rows[2]["gan_active"] == 0.0 and "loss_d" not in rows[2]  # 8 pairs / (2 ranks x 2) = 2 steps per epoch
    assert rows[4]["gan_active"] == 1.0 and {"loss_d", "D_real", "D_fake", "adv_g", "fm"} <= set(rows[4])
    ckpts = tmp_path / "ddp" / "checkpoints"
    init = initial_models(tmp_path / "ddp")["discriminator"].state_dict()
    assert same(load_file(str(ckpts / "checkpoint-2" / "discriminator.safetensors")), init)
    assert not same(load_file(str(ckpts / "checkpoint-4" / "discriminator.safetensors")), init)


def test_a_damaged_wav_in_a_prepared_folder_is_one_line_naming_it(tiny, tmp_path, capsys):
    from trainhub_timbre_gan.data import read_pair_list
    from trainhub_timbre_gan.prepare import prepare

    config = resolve_config(get_plugins().recipe("timbre_gan"), get_plugins(), None, tiny)
    folder = tmp_path / "prepared"
    prepare(config.data, folder, progress=False)
    bad = folder / read_pair_list(folder / "train.txt")[1][0]
    bad.write_bytes(bad.read_bytes()[:30])  # a degraded wav cut off after preparation
    capsys.readouterr()
    assert main(["run", "timbre_gan", "--run-dir", str(tmp_path / "r"), *tiny, f"data.root={folder}", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"trainhub: error: {bad}: not readable audio (")
    assert err[-1].endswith(f"the prepared folder is damaged: prepare it again (trainhub prepare timbre_gan --config CFG "
                            f"--out {folder}) or remove the pair from {folder / 'train.txt'}; saved "
                            f"{tmp_path / 'r' / 'checkpoints' / 'checkpoint-1'} first; resume with --resume auto")  # met in step 2
