"""The commands of the README and of every package's README run as written (training commands with
--dry-run appended: one real step, nothing written). Commands that need files made elsewhere (a
checkpoint, cfg.yaml, photos) are exercised by the packages' own tests.

Each README's first command runs as a user types it, in a new ``trainhub`` process; the rest run through the same
entry point (``trainhub.cli.main``) one after another in this process, which also checks that commands leave no
state behind for the next one. A new process costs ~5 s of imports (torch, and torch._dynamo that torch's optimizers
load), which across ~45 commands was most of this test's time."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE_READMES = sorted(ROOT.glob("packages/*/README.md"))
TRAINHUB = str(Path(sys.executable).with_name("trainhub"))  # the console script the packages install


def readme_commands(readme: Path = README) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():  # join backslash-continued lines
            line = line.split("  #")[0].strip()
            if line.startswith("trainhub "):
                cmds.append(line)
    return cmds


NEEDS_FILES = ("--checkpoint", "--config", "--resume", "<", "--data.root", "--nproc-per-node", "--path", "--input",
               "/path/to", "tokenizer.json", "distill.teacher=")


@pytest.mark.parametrize("readme", [README, *PACKAGE_READMES], ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_commands_run_in_order(readme, tmp_path, monkeypatch, capsys):
    """Each README's commands, top to bottom in one folder (a later one may read what an earlier one wrote)."""
    from trainhub.cli import main

    monkeypatch.chdir(tmp_path)
    cmds = [c for c in readme_commands(readme) if not any(t in c for t in NEEDS_FILES)]
    for i, cmd in enumerate(cmds):
        args = shlex.split(cmd)[1:]
        if args[0] == "run":
            args.append("--dry-run")
        if ">" in args:
            args = args[: args.index(">")]
        if i == 0:
            r = subprocess.run([TRAINHUB, *args], capture_output=True, text=True, timeout=300)
            code, err = r.returncode, r.stderr
        else:
            code, err = main(args), capsys.readouterr().err
        assert code == 0, f"{readme}: {cmd}\n{err[-2000:]}"
    assert not list(tmp_path.glob("runs/*/*/checkpoints"))  # dry runs write nothing


def test_readme_lists_commands():
    assert len(readme_commands()) >= 8
