"""The protocol's promises: no delivery held for the life of a job, and redeliveries do nothing twice."""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.broker import make_broker, send
from dstack.messages import JobSpec, JobTask
from dstack.names import task_queue
from tests.harness import start_cluster
from tests.projects import graph_project
from tests.services import Cluster, FileServer, PrivateRabbitMQ, run_name_of, wait_for, write_project

pytestmark = pytest.mark.integration


def test_job_outliving_the_consumer_timeout_runs_exactly_once(tmp_path: Path, files: FileServer, s3: object,
                                                               docker_engine: object) -> None:
    """RabbitMQ closes the channel of a consumer that keeps a delivery past consumer_timeout and
    redelivers it; it enforces this once a minute, so the job runs for 75 s."""
    broker = PrivateRabbitMQ(config="consumer_timeout = 5000")
    s3.create_bucket("dstack-timeout")  # type: ignore[attr-defined]
    storage_env = {**s3.env(), "DSTACK_STORAGE_URL": "s3://dstack-timeout/dstack"}  # type: ignore[attr-defined]
    cluster = start_cluster(tmp_path / "cluster", broker.url, storage_env)
    try:
        jobs = [{"commands": [f"curl -s {files.url}/job-started", "sleep 75"]}]
        project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
        result = cluster.dstack("run", "w", cwd=project, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
        assert files.hits["/job-started"] == 1
        run = cluster.status(run_name_of(result))
        assert [(j["job_id"], j["status"], j["attempt"]) for j in run["jobs"]] == [
            ("w.provider", "done", 1), ("w.0", "done", 1)]
    finally:
        cluster.stop()
        broker.stop()


def test_redelivered_task_starts_no_second_container(cluster: Cluster, tmp_path: Path, files: FileServer) -> None:
    jobs = [{"commands": [f"curl -s {files.url}/original", "sleep 4"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
    result = cluster.dstack("run", "w", "-d", cwd=project)
    run_name = run_name_of(result)
    wait_for(lambda: files.hits.get("/original"), 60, "the job to start")
    duplicate = JobTask(run_name=run_name, attempt=1, snapshot_id="unused",
                        job=JobSpec(job_id="w.0", image="python:3.9", commands=[f"curl -s {files.url}/duplicate"]))
    broker = make_broker(cluster.broker_url)
    send(broker, task_queue(), "run_task", duplicate)  # while the original runs
    final = cluster.wait_status(run_name, ("done", "failed"))
    send(broker, task_queue(), "run_task", duplicate)  # after it is done
    probe = cluster.dstack("run", "w", cwd=project)  # a later task goes through the same queue
    assert probe.returncode == 0
    broker.close()
    assert final["status"] == "done"
    assert files.hits["/original"] == 2 and "/duplicate" not in files.hits
    assert [j["job_id"] for j in cluster.status(run_name)["jobs"]] == ["w.provider", "w.0"]
