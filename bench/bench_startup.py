"""CLI start-up: the wall time of ``dstack --version``, ``dstack status --help`` and ``dstack status`` (issue 14,
item 4), with ``python -c pass`` and ``python -c 'import click'`` for scale.

Run from the repository root: ``.venv/bin/python -m bench.bench_startup [--runs 20]``. The broker URL points at a
closed port, so ``dstack status`` loads its whole path (RPC client, codec, views, table) and fails at once; the
bytecode cache is on, as an installed package has it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--version"], ["status", "--help"], ["status"])


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv``, after one warm-up run."""
    subprocess.run(argv, env=env, capture_output=True)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    dstack = str(Path(sys.executable).with_name("dstack"))
    with tempfile.TemporaryDirectory(prefix="dstack-startup-") as home:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": f"{home}/pycache", "DSTACK_HOME": home,
               "DSTACK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each; wall ms")
        for command in COMMANDS:
            times = timed([dstack, *command], env, args.runs)
            print(f"dstack {' '.join(command):<14} median {statistics.median(times) * 1000:4.0f}  "
                  f"min {min(times) * 1000:4.0f}")
        for code in ("pass", "import click"):
            times = timed([sys.executable, "-c", code], env, args.runs)
            print(f"python -c {code!r:<14} median {statistics.median(times) * 1000:4.0f}")


if __name__ == "__main__":
    main()
