"""Retry policies and time limits, from the workflow file and from the SDK's Job, through the
real scheduler, worker and Docker."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.projects import graph_workflow_project
from tests.services import Cluster

pytestmark = pytest.mark.integration


def run_to_end(cluster: Cluster, project: Path) -> dict:
    run_name = cluster.submit(project)
    return cluster.wait_status(run_name, ("done", "failed", "stopped"), timeout=120)


def test_a_failing_job_runs_again_until_it_succeeds(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": ['echo "attempt $JOB_ATTEMPT"', 'test "$JOB_ATTEMPT" -ge 3 || exit 7']},
            {"commands": ["true"], "depends_on": [0]}]
    project = graph_workflow_project(tmp_path / "project", jobs, retry={"limit": 3, "backoff": "1s"})
    run = run_to_end(fleet, project)
    assert run["status"] == "done", run
    flaky = run["jobs"][1]
    assert (flaky["job_id"], flaky["attempt"], flaky["status"]) == ("w.0", 3, "done")
    logs = fleet.job_logs(run["run_name"])["w.0"]
    assert [line for line in logs if line.startswith("attempt")] == ["attempt 1", "attempt 2", "attempt 3"]
    assert any("retry 1 of 3 in 1 s" in line or "exit code 7" in line for line in logs)


def test_retries_run_out(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": ["exit 5"], "retry": 1}]  # the job's own policy (SDK: Job(retry=Retry(1)))
    run = run_to_end(fleet, graph_workflow_project(tmp_path / "project", jobs, retry={"limit": 4, "backoff": 1}))
    failed = run["jobs"][1]
    assert (run["status"], failed["status"], failed["attempt"], failed["exit_code"]) == ("failed", "failed", 2, 5)
    assert failed["reason"].startswith("exit code 5")


def test_a_job_past_its_time_limit_is_stopped_and_not_retried(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": ["sleep 60"], "retry": 2},
            {"commands": ["sleep 1"], "max_duration": "30s"}]
    run = run_to_end(fleet, graph_workflow_project(tmp_path / "project", jobs, max_duration="2s"))
    slow, quick = run["jobs"][1], run["jobs"][2]
    assert (slow["status"], slow["attempt"]) == ("failed", 1)
    assert slow["reason"] == "ran longer than its max_duration of 2 s; stopped"
    assert slow["finished_at"] - slow["started_at"] < 15  # stopped, not waited for
    assert quick["status"] == "done"  # its own limit wins over the workflow's
    assert run["status"] == "failed" and run["reason"].startswith("w.0: ran longer than")
