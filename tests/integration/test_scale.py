"""A provider that creates 1,000 jobs in a fan-out and fan-in shape completes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.projects import graph_project
from tests.services import Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

JOBS = 1000


def test_thousand_jobs_fan_out_and_fan_in(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [{"commands": ["true"]} for _ in range(JOBS - 1)]
    jobs.append({"commands": ["echo fan-in"], "depends_on": list(range(JOBS - 1))})
    project = write_project(tmp_path / "project", graph_project([{"name": "wide", "jobs": jobs}]))

    result = cluster.dstack("run", "wide", cwd=project, timeout=900)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wide.{JOBS - 1} | fan-in" in result.stdout
    run = cluster.status(run_name_of(result))
    by_id = {j["job_id"]: j for j in run["jobs"]}
    assert len(by_id) == JOBS + 1 and all(j["status"] == "done" for j in by_id.values())
    last_of_fan_out = max(by_id[f"wide.{i}"]["finished_at"] for i in range(JOBS - 1))
    assert by_id[f"wide.{JOBS - 1}"]["started_at"] >= last_of_fan_out
    # the services' connections do not grow with the number of tasks they handled
    vhost = cluster.broker_url.rsplit("/", 1)[1]
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "vhost"], capture_output=True, text=True)
    assert sum(line.strip() == vhost for line in listed.stdout.splitlines()) < 30
