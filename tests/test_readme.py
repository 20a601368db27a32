"""The commands of the README and of every package's README run as written (training commands with
--dry-run appended: one real step, nothing written). Commands that need files made elsewhere (a
checkpoint, cfg.yaml, photos) are exercised by the packages' own tests."""

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
def test_readme_commands_run_in_order(readme, tmp_path):
    """Each README's commands, top to bottom in one folder (a later one may read what an earlier one wrote)."""
    for cmd in readme_commands(readme):
        if any(t in cmd for t in NEEDS_FILES):
            continue
        args = shlex.split(cmd)[1:]
        if args[0] == "run":
            args.append("--dry-run")
        if ">" in args:
            args = args[: args.index(">")]
        r = subprocess.run([sys.executable, "-m", "trainhub", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, f"{readme}: {cmd}\n{r.stderr[-2000:]}"
    assert not list(tmp_path.glob("runs/*/*/checkpoints"))  # dry runs write nothing


def test_readme_lists_commands():
    assert len(readme_commands()) >= 8
