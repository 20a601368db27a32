"""The README's commands run as written (training commands with --dry-run appended: one real step,
nothing written). Commands that need files made elsewhere (a checkpoint, cfg.yaml, photos) are
exercised by the packages' own tests."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("trainhub "):
                cmds.append(line)
    return cmds


NEEDS_FILES = ("--checkpoint", "--config", "--resume", "<", "--data.root", "--nproc-per-node")


@pytest.mark.parametrize("cmd", [c for c in readme_commands() if not any(t in c for t in NEEDS_FILES)])
def test_readme_command_runs(cmd, tmp_path):
    args = shlex.split(cmd)[1:]
    if args[0] == "run":
        args.append("--dry-run")
    if args[0] == "config" and ">" in args:
        args = args[: args.index(">")]
    r = subprocess.run([sys.executable, "-m", "trainhub", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
    assert not list(tmp_path.glob("runs/*/*/checkpoints"))  # dry runs write nothing


def test_readme_lists_commands():
    assert len(readme_commands()) >= 8
