"""Workers that die or are told to stop, with real processes and real signals: the scheduler
notices a silent worker within its timeout, runs its jobs again by their retry policy or fails
them "worker lost", and never lets two copies of a job run at once; a worker sent SIGTERM
drains."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import docker
import pytest

from dstack.names import container_name
from tests.harness import WORKER_TIMEOUT
from tests.projects import graph_workflow_project
from tests.services import Cluster, FileServer, queue_consumers, wait_for

pytestmark = pytest.mark.integration


def job_of(run: dict, job_id: str = "w.0") -> dict:
    return next(job for job in run["jobs"] if job["job_id"] == job_id)


def container_state(engine: docker.DockerClient, name: str) -> str:
    try:
        return engine.containers.get(name).status
    except docker.errors.NotFound:
        return "gone"


def test_a_killed_worker_is_lost_and_its_job_runs_again_elsewhere_once(
        fleet: Cluster, tmp_path: Path, files: FileServer, docker_engine: docker.DockerClient) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": [f"curl -s {files.url}/started", "sleep 12", f"curl -s {files.url}/finished"],
             "retry": {"limit": 1, "backoff": "1s"}}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: files.hits.get("/started"), 60, "the job to start")
    assert job_of(fleet.status(run_name))["worker"] == "worker-a"
    fleet.start_reporting_worker("worker-b")

    fleet.signal("worker-a", signal.SIGKILL)
    killed_at = time.monotonic()
    first = container_name(run_name, "w.0", 1)
    # the worker's death ends its job at once (its container's input closes): no second copy runs on
    wait_for(lambda: container_state(docker_engine, first) != "running", 10, "the first attempt to end")
    retried = wait_for(lambda: (lambda j: j if j["attempt"] == 2 and j["status"] == "running" else None)(
        job_of(fleet.status(run_name))), 60, "the job to run again")
    assert retried["worker"] == "worker-b"
    assert time.monotonic() - killed_at < WORKER_TIMEOUT + 10
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=90)
    assert run["status"] == "done", run
    assert files.hits["/started"] == 2 and files.hits["/finished"] == 1  # the first copy never went on

    fleet.start_worker("worker-a")  # back: it removes what its earlier life left
    wait_for(lambda: container_state(docker_engine, first) == "gone", 30, "the leftover container to go")
    assert job_of(fleet.status(run_name))["attempt"] == 2  # its report of the lost task changed nothing


def test_a_lost_worker_fails_a_job_without_retries(fleet: Cluster, tmp_path: Path, files: FileServer) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": [f"curl -s {files.url}/started", "sleep 60"]},
            {"commands": ["true"], "depends_on": [0]}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: files.hits.get("/started"), 60, "the job to start")
    fleet.signal("worker-a", signal.SIGKILL)
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=WORKER_TIMEOUT + 30)
    assert run["status"] == "failed"
    lost = job_of(run)
    assert lost["status"] == "failed" and lost["reason"].startswith("worker lost: worker-a stopped reporting")
    assert job_of(run, "w.1")["reason"] == "dependency w.0 failed"
    assert run["reason"].startswith("w.0: worker lost")
    assert "worker-a" not in {w["worker_id"] for w in fleet.workers()}


def test_a_worker_told_to_stop_drains(fleet: Cluster, tmp_path: Path, files: FileServer) -> None:
    fleet.start_reporting_worker("worker-a", DSTACK_DRAIN_PERIOD="4")
    jobs = [{"commands": [f"curl -s {files.url}/short", "sleep 2"]},
            {"commands": [f"curl -s {files.url}/long", "sleep 60"]}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: files.hits.get("/short") and files.hits.get("/long"), 60, "both jobs to start")

    fleet.signal("worker-a", signal.SIGTERM)
    wait_for(lambda: queue_consumers(fleet.broker_url, "dstack.tasks.cpu") == 0, 10, "the worker to take no more")
    later = fleet.submit(graph_workflow_project(tmp_path / "later", [{"commands": ["true"]}]))
    assert fleet.processes["worker-a"].wait(40) == 0
    run = fleet.status(run_name)
    assert job_of(run, "w.0")["status"] == "done"  # ended within the drain period
    stopped = job_of(run, "w.1")
    assert stopped["status"] == "failed"
    assert stopped["reason"] == "worker worker-a shut down; the task did not end within its 4 s drain period"
    assert "worker-a" not in {w["worker_id"] for w in fleet.workers()}  # it said it left
    assert fleet.status(later)["status"] in ("queued", "submitted")  # it took nothing after SIGTERM
    fleet.start_reporting_worker("worker-b")
    assert fleet.wait_status(later, ("done", "failed"), timeout=60)["status"] == "done"
