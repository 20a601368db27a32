"""CPU time of trainhub's describing commands against ``python -c "import torch"``, in one run.

Each command runs as a fresh process (as a user types it); the commands are interleaved round by round so a change in
machine load hits all of them alike, and the median CPU time (user + system of the child) over the rounds is compared
with the median of ``import torch``. Targets: ``--help`` <= 0.2x, ``config sr3`` <= 1.0x.

    python tools/bench_startup.py               # 7 rounds
    python tools/bench_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "trainhub --help": [sys.executable, "-m", "trainhub", "--help"],
    "trainhub list": [sys.executable, "-m", "trainhub", "list"],
    "trainhub plugins": [sys.executable, "-m", "trainhub", "plugins"],
    "trainhub config sr3": [sys.executable, "-m", "trainhub", "config", "sr3"],
    "trainhub run sr3 --help": [sys.executable, "-m", "trainhub", "run", "sr3", "--help"],
}
TARGETS = {"trainhub --help": 0.2, "trainhub config sr3": 1.0}


def cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU seconds of one run of ``cmd`` (its own children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    for cmd in COMMANDS.values():  # warm the page cache and the bytecode caches once
        cpu_seconds(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            times[name].append(cpu_seconds(cmd))
    base = statistics.median(times["import torch"])
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {args.rounds} rounds, median CPU seconds\n")
    print("| command | CPU s | x import torch | target |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target} ({'met' if m / base <= target else 'MISSED'})"
        print(f"| `{name}` | {m:.3f} | {m / base:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
