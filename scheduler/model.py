"""Statuses and records of runs and tasks (a provider run or a job)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode


class Status(str, enum.Enum):
    """Status of a run or a task."""

    SUBMITTED = "submitted"  #: recorded; waiting for what it depends on
    QUEUED = "queued"        #: on a task queue, waiting for a worker
    RUNNING = "running"
    RETRYING = "retrying"    #: failed, and runs again once its backoff has passed
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.STOPPED)


class Kind(str, enum.Enum):
    """What a task record stands for."""

    PROVIDER = "provider"  #: the container that creates a workflow's jobs
    JOB = "job"            #: a job a provider created
    WORKFLOW = "workflow"  #: no container: done when its provider and all its jobs are done


@dataclass
class TaskRecord:
    """A provider run or a job, as the scheduler keeps it."""

    run_name: str
    task_id: str
    kind: Kind
    workflow: str
    status: Status
    spec: Dict[str, Any]
    attempt: int = 1
    depends_on: List[str] = field(default_factory=list)
    deps_left: int = 0
    master: Optional[str] = None
    worker_id: Optional[str] = None
    hostname: Optional[str] = None
    ports: List[int] = field(default_factory=list)
    exit_code: Optional[int] = None
    reason: str = ""
    submitted_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    #: the task queue it is (or was last) put on
    queue: str = "dstack.tasks.cpu"

    def view(self) -> Dict[str, Any]:
        """The stable, scriptable view (``dstack status --json``)."""
        if self.kind is Kind.WORKFLOW:
            return {
                "name": self.task_id, "status": self.status.value, "reason": self.reason,
                "depends_on": self.spec.get("depends_on", []),
                "tagged": [f"{t['workflow']}:{t['tag']}" for t in self.spec.get("tagged", [])],
                "variables": self.spec.get("variables", {}), "provider_commit": self.spec.get("provider_commit"),
                "submitted_at": self.submitted_at, "finished_at": self.finished_at,
            }
        return {
            "job_id": self.task_id, "kind": self.kind.value, "workflow": self.workflow,
            "status": self.status.value, "exit_code": self.exit_code, "reason": self.reason,
            "attempt": self.attempt, "worker": self.worker_id, "hostname": self.hostname,
            "ports": self.ports, "depends_on": self.depends_on, "master": self.master,
            "image": (self.spec.get("job") or self.spec.get("provider") or {}).get("image"),
            "resources": (self.spec.get("job") or {}).get("resources", {}),
            "provider_commit": self.spec.get("provider_commit"), "apps": self._apps(),
            "submitted_at": self.submitted_at, "started_at": self.started_at, "finished_at": self.finished_at,
        }

    def _apps(self) -> List[Dict[str, Any]]:
        """The job's web applications, each with its URL while the job runs (else ``None``)."""
        apps = []
        for app in (self.spec.get("job") or {}).get("apps", []):
            url = None
            if self.status is Status.RUNNING and self.hostname and app["port_index"] < len(self.ports):
                query = urlencode(app.get("url_query_params") or {})
                url = (f"http://{self.hostname}:{self.ports[app['port_index']]}{app.get('url_path') or '/'}"
                       + (f"?{query}" if query else ""))
            apps.append({"name": app["name"], "url": url})
        return apps


@dataclass
class RunRecord:
    """A run: one submission of a workflow."""

    run_name: str
    workflow: str
    status: Status
    submitted_at: float
    snapshot_id: str
    project: str = ""
    reason: str = ""
    stop_requested: bool = False
    abort: bool = False
    started_at: Optional[float] = None
    finished_at: Optional[float] = None

    def view(self, tasks: List[TaskRecord]) -> Dict[str, Any]:
        """The stable view: the run, its workflows (with the variables they got) and its jobs."""
        workflows = [t.view() for t in tasks if t.kind is Kind.WORKFLOW]
        order = {w["name"]: i for i, w in enumerate(workflows)}  # dependencies first, as submitted
        target = next((w for w in workflows if w["name"] == self.workflow), None)
        return {
            "run_name": self.run_name, "workflow": self.workflow, "status": self.status.value,
            "reason": self.reason, "project": self.project, "submitted_at": self.submitted_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "variables": target["variables"] if target else {},
            "workflows": workflows,
            "jobs": [t.view() for t in sorted((t for t in tasks if t.kind is not Kind.WORKFLOW),
                                              key=lambda t: (order.get(t.workflow, 0), t.kind is not Kind.PROVIDER))],
        }
