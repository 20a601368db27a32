"""A full disk or a read-only one is one line naming the file and what to do, exit 2; no half-written ``.tmp``
is left and the earlier checkpoints stay intact.

The writers are made to fail the way they do on a really full or read-only disk (the messages torch and
safetensors give there were taken from a 300 kB tmpfs): tests run as root, where permissions stop nothing, and
mounting a small file system needs privileges CI does not have.
"""

from __future__ import annotations

import errno
import os

import pytest
from safetensors import SafetensorError

from trainhub.builtin.tiny import TinyRecipe
from trainhub.cli import main
from trainhub.training import checkpoint as ckpt
from trainhub.training import rundir

Q = ["loader.num_workers=0", "loggers.console.progress_bar=false"]


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return rc, err


def _torch_full(obj, f, *args, **kwargs):
    """torch.save on a full disk: part of the zip written, then its writer notices the short write."""
    with open(f, "wb") as fh:
        fh.write(b"PK\x03\x04" + bytes(100))
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def _safetensors_full(tensors, filename, metadata=None):
    with open(filename, "wb") as fh:
        fh.write(bytes(8))
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer", ["torch", "safetensors"])
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_tmp(tmp_path, capsys, monkeypatch, writer):
    run, root = tmp_path / "r", tmp_path / "r" / "checkpoints"
    assert _run(capsys, "run", "tiny", "--run-dir", str(run), "train.max_steps=2", *Q)[0] == 0
    good = ckpt.latest(root)
    if writer == "torch":
        monkeypatch.setattr(ckpt.torch, "save", _torch_full)
    else:
        monkeypatch.setattr(ckpt, "save_file", _safetensors_full)
    rc, err = _run(capsys, "run", "tiny", "--run-dir", str(run), "--resume", "auto", "train.max_steps=4", *Q)
    assert rc == 2
    assert err[-1].startswith(f"trainhub: error: cannot write {root / 'checkpoint-4.tmp'}: no space left on device (")
    assert err[-1].endswith(" free there); free space on that disk or set output_dir (or --run-dir) to another one; "
                            "checkpoint checkpoint-4 was not written, the earlier ones are intact")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"] and ckpt.latest(root) == good
    monkeypatch.undo()  # space freed: the run continues from where it was
    assert _run(capsys, "run", "tiny", "--run-dir", str(run), "--resume", "auto", "train.max_steps=4", *Q)[0] == 0
    assert ckpt.read_state(ckpt.latest(root))["step"] == 4


class _OsOn:
    """``os`` as rundir sees it, with one call failing with ``code`` for the paths under ``root``."""

    def __init__(self, root, code, call):
        self.root, self.code, self.call = str(root), code, call

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, *args, **kwargs):
        if self.call == "open" and str(path).startswith(self.root):
            raise OSError(self.code, os.strerror(self.code), str(path))
        return os.open(path, *args, **kwargs)

    def fsync(self, fd):
        if self.call == "fsync":
            raise OSError(self.code, os.strerror(self.code))
        return os.fsync(fd)


def test_a_read_only_run_or_output_directory_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert _run(capsys, "run", "tiny", "--run-dir", str(run), "train.max_steps=2", *Q)[0] == 0
    monkeypatch.setattr(rundir, "os", _OsOn(run, errno.EROFS, "open"))
    rc, err = _run(capsys, "run", "tiny", "--run-dir", str(run), "--resume", "auto", "train.max_steps=4", *Q)
    assert (rc, err[-1]) == (2, f"trainhub: error: cannot write {run / 'trainhub.lock'}: read-only file system; "
                                "set output_dir (or --run-dir) to a writable place")
    real_mkdir = type(tmp_path).mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", mkdir)
    rc, err = _run(capsys, "run", "tiny", f"output_dir={tmp_path / 'ro'}", "run_name=x", *Q)
    assert (rc, err[-1]) == (2, f"trainhub: error: cannot write {tmp_path / 'ro' / 'tiny' / 'x'}: read-only file system; "
                                "set output_dir (or --run-dir) to a writable place")


def test_a_full_disk_writing_config_yaml_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    run = tmp_path / "new"
    monkeypatch.setattr(rundir, "os", _OsOn(run, errno.ENOSPC, "fsync"))
    rc, err = _run(capsys, "run", "tiny", "--run-dir", str(run), "train.max_steps=2", *Q)
    assert rc == 2 and err[-1].startswith(f"trainhub: error: cannot write {run / 'config.yaml'}: no space left on device (")
    assert not run.exists()  # the refused run removed the directory it had created


def test_any_disk_error_a_recipe_meets_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert _run(capsys, "run", "tiny", "--run-dir", str(run), "train.max_steps=2", *Q)[0] == 0

    def evaluate(self, ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "samples" / "grid.png"))

    monkeypatch.setattr(TinyRecipe, "evaluate", evaluate)
    rc, err = _run(capsys, "eval", "tiny", "--checkpoint", str(run))
    assert rc == 2 and err[-1].startswith(f"trainhub: error: cannot write {run / 'samples' / 'grid.png'}: no space left on device")


def test_export_to_a_read_only_place_names_its_option(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert _run(capsys, "run", "tiny", "--run-dir", str(run), "train.max_steps=2", *Q)[0] == 0

    def save_file(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)")

    monkeypatch.setattr("safetensors.torch.save_file", save_file)
    out = tmp_path / "w.safetensors"
    rc, err = _run(capsys, "export", "--checkpoint", str(run), "--out", str(out))
    assert (rc, err[-1]) == (2, f"trainhub: error: cannot write {out}: read-only file system; set --out to a writable place")
    assert not out.with_name("w.safetensors.tmp").exists()
