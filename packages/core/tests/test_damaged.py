"""A damaged, truncated or missing checkpoint file given to ``run --resume``, ``eval`` or ``sample`` is one line
naming it and the way on, exit 2, and the run directory is left as it was."""

from __future__ import annotations

import shutil

import pytest
import torch

from trainhub.cli import main
from trainhub.training.run import train

Q = ["loader.num_workers=0", "loggers.console.progress_bar=false"]
NOT_SAFETENSORS = {"truncated": "not a complete safetensors file (incomplete metadata, file not fully covered)",
                   "empty": "not a complete safetensors file (header too small)"}
NOT_TORCH = {"truncated": "not a complete torch file (truncated or damaged: OSError)",
             "empty": "not a complete torch file (truncated or damaged: EOFError)",
             "missing": "missing (eval, sample and export do not need it, resuming training does)"}
CASES = [  # (file, damage, commands that must refuse it, the reason they give)
    *[("model.safetensors", d, ("resume", "eval --no-ema"), r) for d, r in NOT_SAFETENSORS.items()],
    *[("ema.safetensors", d, ("resume", "eval", "sample"), r) for d, r in NOT_SAFETENSORS.items()],
    *[("rng_state_rank0.safetensors", d, ("resume",), r) for d, r in NOT_SAFETENSORS.items()],
    ("rng_state_rank0.safetensors", "missing", ("resume",), "missing (the random streams of an exact resume are in it)"),
    *[("optimizer.pt", d, ("resume",), r) for d, r in NOT_TORCH.items()],
    ("training_state.json", "truncated", ("resume", "eval", "sample"),
     "not readable as JSON (Expecting property name enclosed in double quotes: line 3 column 1 (char 15))"),
    ("training_state.json", "empty", ("resume", "eval", "sample"), "not readable as JSON (Expecting value: line 1 column 1 (char 0))"),
    ("training_state.json", "missing", ("resume", "eval", "sample"), "missing: not a complete trainhub checkpoint"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    train("tiny", overrides=Q + ["train.max_steps=4", "train.checkpoint_every=2"], run_dir=run)
    return run


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != "trainhub.lock"}


def _damage(f, how):
    if how == "missing":
        f.unlink()
    elif how == "empty":
        f.write_bytes(b"")
    elif f.suffix == ".json":
        f.write_bytes(f.read_bytes()[: f.read_bytes().index(b'"step"') + 11])  # '{\n  "step": 4,' and the rest cut off
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _argv(command, ck, tmp_path):
    if command == "resume":
        return ["run", "tiny", "--resume", str(ck), "train.max_steps=6", *Q]
    name, *flags = command.split()
    out = ["--out", str(tmp_path / "samples")] if name == "sample" else []
    return [name, "tiny", "--checkpoint", str(ck), *flags, *out]


@pytest.mark.parametrize("file, how, commands, reason", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(base, tmp_path, capsys, file, how, commands, reason):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    ck, other = run / "checkpoints" / "checkpoint-4", run / "checkpoints" / "checkpoint-2"
    _damage(ck / file, how)
    before = _files(run)
    for command in commands:
        capsys.readouterr()
        assert main(_argv(command, ck, tmp_path)) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"trainhub: error: {ck / file}: {reason}; use another checkpoint (the newest other one is {other}) " \
                          f"or delete {ck}", command
        assert "Traceback" not in "\n".join(err)
        assert _files(run) == before, f"{command} changed the run directory"


def test_eval_needs_neither_the_optimizer_nor_the_rng_state(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    ck = run / "checkpoints" / "checkpoint-4"
    (ck / "optimizer.pt").unlink()
    (ck / "rng_state_rank0.safetensors").write_bytes(b"")
    assert main(["eval", "tiny", "--checkpoint", str(ck)]) == 0
    assert '"val_mse"' in capsys.readouterr().out


class _Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_an_optimizer_file_that_needs_unpickling_is_refused_unexecuted(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    ck = run / "checkpoints" / "checkpoint-4"
    torch.save({"optimizers": _Payload()}, ck / "optimizer.pt")
    assert main(["run", "tiny", "--resume", str(ck), "train.max_steps=6", *Q]) == 2
    captured = capsys.readouterr()
    assert "payload ran" not in captured.out + captured.err
    assert f"{ck / 'optimizer.pt'}: it holds objects other than tensors and plain data, which are never unpickled" in captured.err


def test_the_newest_checkpoint_damaged_is_named_not_passed_over(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    state = run / "checkpoints" / "checkpoint-4" / "training_state.json"
    state.write_text("{")
    for argv in (["eval", "tiny", "--checkpoint", str(run)], ["run", "tiny", "--resume", "auto", "--run-dir", str(run), *Q]):
        capsys.readouterr()
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"trainhub: error: {state}: not readable as JSON")
