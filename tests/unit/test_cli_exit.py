"""The `dstack` command leaves without the interpreter's teardown (`dstack/cli/main.py`, `_leave`): its exit
status, its output and its exit handlers are those of a normal exit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Runs `main()` as the console script does, after registering an exit handler that writes a file.
SCRIPT = """
import atexit, sys
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("ran"))
sys.argv = ["dstack", *sys.argv[2:]]
from dstack.cli.main import main
main()
"""


def dstack(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    marker = tmp_path / "atexit"
    env = {**os.environ, "DSTACK_HOME": str(tmp_path / "home"), "DSTACK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), *args], capture_output=True, text=True,
                            env=env, timeout=60, cwd=tmp_path)
    return result, marker.exists()


@pytest.mark.parametrize(("args", "code", "stream", "text"), [
    (["--version"], 0, "stdout", "version"),
    (["status", "--no-such-option"], 2, "stderr", "No such option"),
    (["status"], 1, "stderr", "RabbitMQ"),  # a DstackError: the broker cannot be reached
])
def test_exit_status_output_and_exit_handlers(tmp_path: Path, args: list[str], code: int, stream: str,
                                              text: str) -> None:
    result, handlers_ran = dstack(tmp_path, *args)
    assert result.returncode == code, result.stderr
    assert text in getattr(result, stream)
    assert handlers_ran


def test_output_to_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "DSTACK_HOME": str(tmp_path / "home")}
    shell = f"{sys.executable} -m dstack.cli.main --help | head -c 1 > /dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env,
                            timeout=60)
    assert "Traceback" not in result.stderr


def test_a_profiled_command_exits_the_usual_way_so_the_profile_is_written(tmp_path: Path) -> None:
    env = {**os.environ, "DSTACK_HOME": str(tmp_path / "home")}
    profile = tmp_path / "cli.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "dstack.cli.main",
                             "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and "version" in result.stdout
    assert profile.stat().st_size > 0
