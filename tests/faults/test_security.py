"""What a job's container is given: never the broker's or storage's credentials."""
from __future__ import annotations

from pathlib import Path

from tests.projects import graph_workflow_project
from tests.services import Cluster


def test_containers_get_no_broker_or_storage_credentials(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", [{"commands": ["env"]}]))
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    assert run["status"] == "done", run
    printed = "\n".join(fleet.job_logs(run_name)["w.0"])
    assert "RUN_NAME=" in printed
    for name in ("AWS_", "DSTACK_BROKER_URL", "DSTACK_STORAGE_URL"):
        assert name not in printed
    assert fleet.broker_url not in printed and "guest:guest" not in printed
