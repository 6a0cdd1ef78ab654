"""The scheduler killed (SIGKILL) and restarted in the middle of a run: no event is lost, no job
runs twice, the run completes."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.projects import graph_workflow_project
from tests.services import Cluster, FileServer, wait_for

pytestmark = pytest.mark.integration


def test_a_scheduler_killed_mid_run_picks_up_where_it_was(fleet: Cluster, tmp_path: Path, files: FileServer) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": [f"curl -s {files.url}/job-{i}", "sleep 3"], **({"depends_on": [i - 1]} if i else {})}
            for i in range(4)]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: files.hits.get("/job-1"), 60, "the second job to start")

    fleet.signal("scheduler", signal.SIGKILL)
    fleet.processes["scheduler"].wait(10)
    time.sleep(5)  # the running job ends meanwhile: its events wait in RabbitMQ
    fleet.start_scheduler()

    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=120)
    assert run["status"] == "done", run
    assert [(j["job_id"], j["status"], j["attempt"]) for j in run["jobs"][1:]] == [
        (f"w.{i}", "done", 1) for i in range(4)]
    assert all(files.hits[f"/job-{i}"] == 1 for i in range(4))  # each ran once
