"""Storage failing while a job's artifacts are uploaded, through a proxy in front of the real S3
server that drops every connection while it is broken: a short outage is ridden out with retries
and backoff; a long one fails the job for that reason, and no partial upload is shown as complete."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.projects import graph_workflow_project
from tests.s3server import MotoServer
from tests.services import Cluster, FileServer, FlakyProxy, wait_for

pytestmark = pytest.mark.integration

JOBS = [{"commands": ["mkdir -p out", "head -c 100000 /dev/urandom > out/a.bin", "echo b > out/b.txt",
                      "curl -s $FILES/ending", "sleep 1"], "artifacts": ["out"]}]


@pytest.fixture
def proxy(s3: MotoServer) -> Iterator[FlakyProxy]:
    yield FlakyProxy(s3.port)


def start(fleet: Cluster, proxy: FlakyProxy, files: FileServer, tmp_path: Path) -> str:
    """A worker that reaches storage through the proxy; the job's files are written, then it ends."""
    fleet.start_reporting_worker("worker-a", AWS_ENDPOINT_URL_S3=proxy.url)
    jobs = [{**JOBS[0], "environment": {"FILES": files.url}}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: files.hits.get("/ending"), 60, "the job to reach its end")
    proxy.break_()
    return run_name


def test_a_short_storage_outage_is_ridden_out(fleet: Cluster, proxy: FlakyProxy, files: FileServer,
                                              tmp_path: Path) -> None:
    run_name = start(fleet, proxy, files, tmp_path)
    wait_for(lambda: "trying again in" in fleet.logs(), 30, "the worker to try again")
    proxy.heal()
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=120)
    assert run["status"] == "done", run
    out = tmp_path / "out"
    assert fleet.dstack("artifacts", "download", run_name, "-o", str(out)).returncode == 0
    assert (out / "w.0/out/a.bin").stat().st_size == 100000 and (out / "w.0/out/b.txt").read_text() == "b\n"


def test_a_long_storage_outage_fails_the_job_and_shows_no_artifacts(
        fleet: Cluster, proxy: FlakyProxy, files: FileServer, tmp_path: Path) -> None:
    run_name = start(fleet, proxy, files, tmp_path)
    # the artifacts and the last log lines are given up after about a minute; the end is reported all the same
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=240)
    proxy.heal()
    job = run["jobs"][-1]
    assert (run["status"], job["status"]) == ("failed", "failed")
    assert job["reason"].startswith("uploading artifacts failed: uploading out/a.bin failed 7 times over")
    assert "storing its logs failed" in job["reason"]
    listing = fleet.dstack("artifacts", "list", run_name)
    assert listing.returncode == 1 and "no artifacts stored" in listing.stderr  # no manifest, nothing shown
