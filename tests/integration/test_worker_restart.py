"""A worker that dies mid-job and comes back reports the job lost and removes its container."""
from __future__ import annotations

import signal
from pathlib import Path

import docker
import pytest

from tests.projects import graph_project
from tests.services import Cluster, FileServer, wait_for, write_project

pytestmark = pytest.mark.integration


def test_restarted_worker_reports_lost_tasks_and_removes_their_containers(
        private_cluster: Cluster, tmp_path: Path, files: FileServer, docker_engine: docker.DockerClient) -> None:
    cluster = private_cluster
    jobs = [{"commands": [f"curl -s {files.url}/started", "sleep 600"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
    run_name = cluster.dstack("run", "w", "-d", cwd=project).stdout.split()[0]
    wait_for(lambda: files.hits.get("/started"), 60, "the job to start")
    labelled = {"label": f"ai.dstack.task={run_name}/w.0/1"}
    assert len(docker_engine.containers.list(filters=labelled)) == 1

    cluster.signal("worker-1", signal.SIGKILL)
    cluster.processes["worker-1"].wait(10)
    cluster.start_worker("worker-1")

    run = cluster.wait_status(run_name, ("failed",), timeout=60)
    job = next(j for j in run["jobs"] if j["job_id"] == "w.0")
    assert job["reason"] == "worker lost: the worker restarted while the task ran"
    assert docker_engine.containers.list(all=True, filters=labelled) == []
    assert "dstack: w.0 failed: worker lost" in cluster.dstack("logs", run_name, "w.0").stdout
