"""RabbitMQ restarted in the middle of a run: the scheduler, the worker and a CLI following the
run's logs reconnect by themselves, and the run completes with every job run once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.harness import storage_env
from tests.projects import graph_workflow_project
from tests.s3server import MotoServer
from tests.services import Cluster, FileServer, PrivateRabbitMQ, wait_for

pytestmark = pytest.mark.integration


def test_everything_reconnects_after_a_broker_restart(tmp_path: Path, files: FileServer, s3: MotoServer,
                                                      docker_engine: docker.DockerClient) -> None:
    broker = PrivateRabbitMQ()
    cluster = Cluster(tmp_path / "cluster", broker.url, storage_env(s3, "dstack-broker-restart"))
    cluster.env["DSTACK_HEARTBEAT_INTERVAL"] = "1"
    try:
        cluster.start_scheduler()
        cluster.start_reporting_worker("worker-a")
        jobs = [{"commands": [f"curl -s {files.url}/job-{i}", "sleep 4", f"echo job {i} done"],
                 **({"depends_on": [i - 1]} if i else {})} for i in range(3)]
        project = graph_workflow_project(tmp_path / "project", jobs)
        cli = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "run", "w"], cwd=project, env=cluster.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: files.hits.get("/job-0"), 60, "the first job to start")
        broker.restart(down_for=3)
        out, err = cli.communicate(timeout=180)
        assert cli.returncode == 0, out + err + cluster.logs()
        assert all(f"w.{i} | job {i} done" in out for i in range(3)), out  # the follower printed them all
        run = cluster.status(out.split()[0])
        assert [(j["job_id"], j["status"], j["attempt"]) for j in run["jobs"][1:]] == [
            (f"w.{i}", "done", 1) for i in range(3)]
        assert all(files.hits[f"/job-{i}"] == 1 for i in range(3))
    finally:
        cluster.stop()
        broker.stop()
