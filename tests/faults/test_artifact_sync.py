"""Artifacts synced while a job runs, and restarts that continue from them, through the real services: a job
writes a checkpoint every second and prints, when it starts, the highest checkpoint it found in place. Its
container is killed (``docker kill``), or its worker is killed with it; what was synced is in the S3 server,
and ``dstack restart`` continues from the last checkpoint stored (``--clear``: from nothing). A retry of a
failed attempt continues from that attempt's artifacts."""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import boto3
import docker
import pytest

from dstack.names import container_name
from tests.projects import graph_workflow_project
from tests.services import Cluster, wait_for

pytestmark = pytest.mark.integration

JOB = "w.0"

#: The job: resumes from the highest checkpoint in place, then writes one a second (MODE=forever), or
#: (MODE=fail-first) fails after 3 on its first attempt and ends after 2 more on a later one.
CHECKPOINTS = '''
import os, pathlib, sys, time
folder = pathlib.Path("checkpoints")
start = max((int(p.name.split("-")[1]) for p in folder.glob("step-*")), default=0)
print(f"resumed from {start}", flush=True)
first = os.environ["JOB_ATTEMPT"] == "1"
steps = {"forever": 10**6, "fail-first": 3 if first else 2}[os.environ["MODE"]]
for n in range(start + 1, start + steps + 1):
    time.sleep(1)
    (folder / f"step-{n}").write_text(str(n))
    print(f"wrote step-{n}", flush=True)
sys.exit(1 if first and os.environ["MODE"] == "fail-first" else 0)
'''

SYNC = {"DSTACK_ARTIFACT_SYNC_INTERVAL": "1"}


class Stored:
    """What the S3 server holds of a run's job ``w.0``."""

    def __init__(self, cluster: Cluster) -> None:
        self.bucket, _, self.prefix = cluster.env["DSTACK_STORAGE_URL"].removeprefix("s3://").partition("/")
        env = cluster.env
        self.s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                               aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def steps(self, run_name: str) -> set[int]:
        """The checkpoints stored as objects."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/runs/{run_name}/artifacts/{JOB}/checkpoints/")
        return {int(item["Key"].rsplit("-", 1)[1]) for page in pages for item in page.get("Contents", [])}

    def manifest(self, run_name: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/runs/{run_name}/manifests/{JOB}.json")
        return json.loads(body["Body"].read())

    def listed_steps(self, run_name: str) -> set[int]:
        """The checkpoints the job's manifest lists; each of them must be stored."""
        listed = {int(f["path"].rsplit("-", 1)[1]) for f in self.manifest(run_name)["files"]}
        assert listed <= self.steps(run_name), "the manifest lists a file that is not stored"
        return listed


def project(tmp_path: Path, mode: str, **job: Any) -> Path:
    root = graph_workflow_project(tmp_path / mode, [{"commands": ["python3 checkpoints.py"],
                                                     "artifacts": ["checkpoints"], "environment": {"MODE": mode},
                                                     **job}])
    (root / "checkpoints.py").write_text(CHECKPOINTS)
    return root


def resumed_from(cluster: Cluster, run_name: str) -> list[int]:
    """What each attempt of the job printed when it started, in order."""
    return [int(m.group(1)) for line in cluster.job_lines(run_name, JOB)
            if (m := re.fullmatch(r"resumed from (\d+)", line))]


def attempt_resumed(cluster: Cluster, run_name: str, attempts: int) -> int:
    """Wait for the ``attempts``-th attempt to print where it resumed; returns that."""
    return wait_for(lambda: (lambda seen: seen[attempts - 1] + 1 if len(seen) >= attempts else 0)(
        resumed_from(cluster, run_name)), 90, f"attempt {attempts} to start") - 1


def job_of(run: dict[str, Any]) -> dict[str, Any]:
    return next(job for job in run["jobs"] if job["job_id"] == JOB)


def kill(engine: docker.DockerClient, name: str) -> None:
    try:
        engine.containers.get(name).kill()
    except docker.errors.NotFound:
        pass  # gone already
    except docker.errors.APIError:
        pass  # ended meanwhile


def test_a_killed_container_keeps_its_synced_checkpoints_and_a_restart_or_a_retry_continues(
        fleet: Cluster, tmp_path: Path, docker_engine: docker.DockerClient) -> None:
    fleet.start_reporting_worker("worker-a", **SYNC)
    stored = Stored(fleet)
    run_name = fleet.submit(project(tmp_path, "forever"))
    retried = fleet.submit(project(tmp_path, "fail-first", retry={"limit": 1, "backoff": "1s"}))

    wait_for(lambda: len(stored.steps(run_name)) >= 3, 90, "3 checkpoints synced while the job runs")
    assert stored.manifest(run_name)["complete"] is False
    kill(docker_engine, container_name(run_name, JOB, 1))  # SIGKILL: the job itself saves nothing
    run = fleet.wait_status(run_name, ("failed",), timeout=60)
    assert job_of(run)["artifacts_size"] > 0
    written = {int(line.rsplit("-", 1)[1]) for line in fleet.job_lines(run_name, JOB) if line.startswith("wrote")}
    last = max(stored.listed_steps(run_name))
    assert stored.manifest(run_name)["complete"] is True and written <= stored.listed_steps(run_name)

    assert fleet.dstack("restart", run_name, "-d").returncode == 0
    assert attempt_resumed(fleet, run_name, 2) == last
    assert fleet.dstack("stop", run_name).returncode == 0
    fleet.wait_status(run_name, ("stopped",), timeout=60)

    run = fleet.wait_status(retried, ("done", "failed"), timeout=90)
    assert run["status"] == "done", run
    assert resumed_from(fleet, retried) == [0, 3]  # the retry continued from the failed attempt's checkpoints
    assert stored.listed_steps(retried) == {1, 2, 3, 4, 5} and stored.manifest(retried)["complete"] is True


def test_a_lost_worker_keeps_the_synced_checkpoints_and_clear_starts_from_nothing(
        fleet: Cluster, tmp_path: Path, docker_engine: docker.DockerClient) -> None:
    fleet.start_reporting_worker("worker-a", **SYNC)
    stored = Stored(fleet)
    run_name = fleet.submit(project(tmp_path, "forever"))
    wait_for(lambda: len(stored.steps(run_name)) >= 3, 90, "3 checkpoints synced while the job runs")

    fleet.signal("worker-a", signal.SIGKILL)  # no final sync can happen
    kill(docker_engine, container_name(run_name, JOB, 1))
    run = fleet.wait_status(run_name, ("failed",), timeout=60)
    assert job_of(run)["reason"].startswith("worker lost")
    synced = stored.listed_steps(run_name)
    assert stored.manifest(run_name)["complete"] is False
    assert synced == set(range(1, max(synced) + 1)) and max(synced) >= 3  # every checkpoint up to the last synced

    fleet.start_reporting_worker("worker-b", **SYNC)
    assert fleet.dstack("restart", run_name, "-d").returncode == 0
    assert attempt_resumed(fleet, run_name, 2) >= max(synced)
    assert fleet.dstack("stop", run_name).returncode == 0
    fleet.wait_status(run_name, ("stopped",), timeout=60)

    assert fleet.dstack("restart", run_name, "--clear", "-d").returncode == 0
    assert attempt_resumed(fleet, run_name, 3) == 0
    assert fleet.dstack("stop", run_name).returncode == 0
    fleet.wait_status(run_name, ("stopped",), timeout=60)
    assert stored.listed_steps(run_name) == stored.steps(run_name)  # no file of an earlier attempt is left over
    assert stored.manifest(run_name)["complete"] is True
