"""CPU training runs through the shared trainer: learning, exact resume, the LR schedule under accumulation,
eval media, the sample CLI, configs and the codec commands (CLI calls run in-process through trainhub.cli.main)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

import trainhub_tokenimage
from trainhub import UserError
from trainhub.cli import main as cli
from trainhub.testing import assert_same_weights
from trainhub.training.run import train
from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.recipe import render_text
from trainhub_tokenimage.tokenizer import ByteTokenizer
from trainhub_tokenimage.tools import load_token_png


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


@pytest.mark.slow
def test_a_short_run_reads_noisy_tokens_and_writes_words(tmp_path, tiny):
    """Learning direction on a shortened run of a smaller model, scored by the recipe's own eval (the full margin
    belongs to the measured default run, README): the one-shot reading at t = 0.5 beats decoding the noisy image
    and beats the likelihood with no context, and the generations hold more dictionary words than random streams
    with the same letter frequencies."""
    short = [x for x in tiny if not x.startswith(("model.sample_steps", "data.eval_samples", "train.log_every"))]
    res = train("tokenimage", overrides=short + ["train.lr=3e-3", "train.max_steps=250",
                                                  "train.eval_every=250", "train.log_every=50", "data.eval_samples=4"],
                run_dir=tmp_path / "run")
    assert res.status == "completed"
    m = records(res.run_dir, "eval")[-1]
    print({k: round(v, 3) for k, v in m.items() if isinstance(v, float)})
    assert m["token_acc_t10"] > 0.99  # the likelihood skip reads almost clean blocks exactly
    # reading the noisy image alone (noisy_acc_t50, the untrained model) gives 0.33 at t = 0.5, the likelihood with
    # the token frequencies about 0.61; measured here: 0.70, and words 0.20 against 0.025 for the random streams
    # (43 s on one core)
    assert m["token_acc_t50"] > m["noisy_acc_t50"] + 0.3 and m["token_acc_t50"] > 0.64
    assert m["gen_word_hit"] > m["gen_word_hit_random"] + 0.08
    assert 0 <= m["gen_unigram_tv"] <= 1 and 0 <= m["gen_bigram_hit"] <= 1
    shots = res.run_dir / "samples" / "step_0000250"
    assert {p.name for p in shots.iterdir()} >= {"denoise.png", "generated.png", "generated_text.png", "generated.txt"}
    assert Image.open(shots / "denoise.png").size[0] > 7 * 64


def test_resume_is_exact_schedule_per_optimizer_step_and_sample_cli(tmp_path, tiny, interrupt_and_resume, capsys):
    ov = tiny + ["train.max_steps=6", "train.checkpoint_every=3", "train.eval_at_end=false", "train.log_every=1",
                 "train.ema.enabled=true", "train.ema.decay=0.9", "train.ema.start_step=2",
                 "train.gradient_accumulation_steps=2", "train.schedule=cosine", "train.warmup_steps=2",
                 "train.min_lr_ratio=0.1", "train.lr=1e-3"]
    full = train("tokenimage", overrides=ov, run_dir=tmp_path / "full")
    # warmup + cosine counted in optimizer steps (6), not micro-batches (12): the last step reaches min_lr
    lrs = [r["lr"] for r in records(full.run_dir, "train")]
    assert len(lrs) == 6 and lrs[-1] == pytest.approx(1e-4)
    # the lr logged at step s is the one for the next step: warmup (s + 1) / 2, then cosine over the 4 steps left
    assert lrs[:2] == pytest.approx([1e-3, 1e-3]) and lrs[2] == pytest.approx(1e-3 * (0.55 + 0.45 * math.cos(math.pi / 4)))
    res = interrupt_and_resume("tokenimage", ov, tmp_path / "cut", at=4)
    assert res.step == 6
    assert_same_weights(full.last_checkpoint, res.last_checkpoint, ("model.safetensors", "ema.safetensors"))
    losses = {r["step"]: r["loss"] for r in records(full.run_dir, "train")}
    resumed = {r["step"]: r["loss"] for r in records(res.run_dir, "train") if r["step"] > 4}
    assert resumed and all(losses[s] == v for s, v in resumed.items())

    out = tmp_path / "out"  # sampling loads the EMA weights (the default)
    capsys.readouterr()
    assert cli(["sample", "tokenimage", "--checkpoint", str(res.run_dir), "--steps", "2", "--num", "2", "--length", "40",
                "--out", str(out)]) == 0
    assert "--- sample 1" in capsys.readouterr().out
    assert Image.open(out / "sample_0_view.png").size == (256, 256)
    # the saved token image decodes to the saved text (the mask travels as the alpha channel)
    assert cli(["tokenimage", "decode", "--specials", str(out / "sample_1.png")]) == 0
    assert capsys.readouterr().out[:-1] == (out / "sample_1.txt").read_bytes().decode("utf-8")
    assert cli(["sample", "tokenimage", "--checkpoint", str(res.run_dir), "--prompt", "hi", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("trainhub: error: --prompt needs")


def test_chat_run_and_prompted_sample(tmp_path, tiny, capsys):
    res = train("tokenimage", overrides=tiny + ["train.max_steps=3", "data.use_chat_template=true", "data.max_tokens=256",
                                                 "data.max_documents=120"], run_dir=tmp_path / "chat")
    assert res.status == "completed" and "token_acc_t50" in records(res.run_dir, "eval")[-1]
    capsys.readouterr()
    assert cli(["sample", "tokenimage", "--checkpoint", str(res.run_dir), "--prompt", "json.dumps", "--steps", "2",
                "--out", str(tmp_path / "out")]) == 0
    assert "--- sample 0" in capsys.readouterr().out
    assert (tmp_path / "out" / "sample_0.png").is_file()
    # --max-images 2: a second image, conditioned on the prompt and the first piece, unless the first had <|eos|>
    o3 = tmp_path / "o3"
    assert cli(["sample", "tokenimage", "--checkpoint", str(res.run_dir), "--prompt", "json.dumps", "--steps", "2",
                "--max-images", "2", "--out", str(o3)]) == 0
    tok = ByteTokenizer()
    codec = TokenCodec(tok.vocab_size)
    first = codec.decode(*load_token_png(o3 / "sample_0.png"))
    assert (o3 / "sample_0-1.png").is_file() == (tok.eos_id not in first)
    both = first + (codec.decode(*load_token_png(o3 / "sample_0-1.png")) if tok.eos_id not in first else [])
    # read without newline translation: a sampled "\r" stays itself
    assert (o3 / "sample_0.txt").read_bytes().decode("utf-8") == render_text(tok, both, chat=True)
    assert cli(["sample", "tokenimage", "--checkpoint", str(res.run_dir), "--steps", "2", "--out", str(tmp_path / "o2")]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_a_single_text_file_without_validation_data_is_refused_before_training(tmp_path, tiny, capsys):
    """One text file is one document: the hash split holds none out, and train.best_metric would fail at the first
    eval after training; it is refused when the data is built, in one line that names data.val_source."""
    notes = tmp_path / "notes.txt"
    notes.write_text("A single file of notes, long enough for a few images. " * 40, encoding="utf-8")
    ov = [x for x in tiny if not x.startswith("data.")] + [f"data.source={notes}", "train.max_steps=6", "train.eval_every=3"]
    capsys.readouterr()
    assert cli(["run", "tokenimage", "--run-dir", str(tmp_path / "run"), *ov]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "data.val_source" in err and "train.best_metric='val_loss'" in err and str(notes) in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    assert cli(["run", "tokenimage", "--dry-run", *ov, f"data.val_source={notes}"]) == 0
    assert cli(["run", "tokenimage", "--dry-run", *ov, "train.best_metric=null"]) == 0


CONFIGS = Path(trainhub_tokenimage.__file__).parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.iterdir()))
def test_every_shipped_config_runs(name, capsys):
    """A one-step dry run of each shipped config (smaller data and batch, no compile: a CPU test) builds its model and
    data and takes a step, so a config that cannot run fails here."""
    small = ["data.max_documents=200", "loader.num_workers=0", "train.batch_size=2", "train.gradient_accumulation_steps=1",
             "train.compile=false", "loggers.console.progress_bar=false"]
    code = cli(["run", "tokenimage", "--config", str(CONFIGS / name), "--dry-run", *small])
    assert code == 0, capsys.readouterr().err


def test_configs_and_flat_script_keys(tmp_path, check_config_schema):
    import trainhub_tokenimage
    from trainhub.plugins import get_plugins

    shipped = sorted((Path(trainhub_tokenimage.__file__).parent / "configs").iterdir())
    assert {p.name for p in shipped} >= {"default.yaml", "chat.yaml", "script_style.json"}
    check_config_schema("tokenimage", files=shipped)
    recipe = get_plugins().recipe("tokenimage")
    mapped = recipe.map_config({"use_amp": False, "learning_rate": 1e-3, "gradient_accumulation_steps": 4,
                                "model": {"depth": 2}}, tmp_path / "c.json")
    assert mapped == {"train": {"precision": "fp32", "lr": 1e-3, "gradient_accumulation_steps": 4}, "model": {"depth": 2}}
    assert recipe.map_config({"use_amp": True}, tmp_path / "c.json") == {"train": {"precision": "auto"}}
    with pytest.raises(UserError, match="fp16_opt_level"):
        recipe.map_config({"fp16_opt_level": "O2"}, tmp_path / "c.json")


def test_codec_commands(tmp_path, capsys):
    png = tmp_path / "t.png"
    assert cli(["tokenimage", "encode", "Grüße 🐍", "--out", str(png)]) == 0
    assert cli(["tokenimage", "decode", str(png)]) == 0
    assert capsys.readouterr().out.endswith("Grüße 🐍\n")
    long = tmp_path / "long.txt"
    long.write_text("abcdefghij" * 40, encoding="utf-8")  # 402 tokens with bos/eos: two images of 256
    assert cli(["tokenimage", "encode", "--file", str(long), "--out", str(tmp_path / "l.png")]) == 0
    assert cli(["tokenimage", "decode", str(tmp_path / "l-0.png"), str(tmp_path / "l-1.png")]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[-3:] == ["abcdefghij" * 25 + "abcde", "fghij" + "abcdefghij" * 14, ""]  # bos + 255 bytes, then the rest
    assert cli(["tokenimage", "info", "--block", "1", "1", "--base", "2"]) == 2
    err = capsys.readouterr().err
    assert "digits" in err and len(err.strip().splitlines()) == 1
