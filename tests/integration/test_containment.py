"""A job is someone's code on a shared machine: its container runs with a process limit and
``no-new-privileges``, with Docker's default capabilities only, so a job that forks without end is
held at its limit while a job beside it on the same worker runs to its end."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.projects import graph_workflow_project
from tests.services import Cluster, run_name_of

pytestmark = pytest.mark.integration

FORK_BOMB = """\
import os, time
children = []
try:
    for _ in range(10000):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    print(f"started all {len(children)}", flush=True)
except OSError as e:
    print(f"held at {len(children)} processes: {e.strerror}", flush=True)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""

#: Docker's default capabilities (CapEff of a container's root process), and no more
DOCKER_DEFAULT_CAPS = "00000000a80425fb"


def test_a_fork_bomb_is_held_at_its_limit_and_its_neighbour_finishes(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    project = graph_workflow_project(tmp_path / "p", [
        {"commands": ["python3 bomb.py"], "resources": {"pids": 200}},
        {"commands": ["grep -E '^(NoNewPrivs|CapEff)' /proc/self/status", "sleep 2", "echo neighbour done"]},
    ])
    (project / "bomb.py").write_text(FORK_BOMB)
    result = cluster.dstack("run", "w", cwd=project, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = cluster.job_logs(run_name_of(result))
    held = [line for line in logs["w.0"] if line.startswith("held at ")]
    assert held and int(held[0].split()[2]) < 200, logs["w.0"]
    neighbour = logs["w.1"]
    assert "neighbour done" in neighbour
    assert any(line.split() == ["NoNewPrivs:", "1"] for line in neighbour), neighbour
    assert any(line.split() == ["CapEff:", DOCKER_DEFAULT_CAPS] for line in neighbour), neighbour
