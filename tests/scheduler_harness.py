"""A Scheduler over a real SqliteStateStore with recording fakes for sending and notifying:
the harness of the scheduler's unit tests (``tests/unit/test_scheduler_*.py``).

What ``send`` received is decoded back into typed messages to assert on. Replies and updates are
kept in their plain form (what goes on the wire, and what ``dstack status --json`` prints).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from dstack.messages import (
    ClaimTask,
    Endpoint,
    JobSpec,
    JobTask,
    ProviderSpec,
    SubmitRun,
    TaskFinished,
    TaskStarted,
    WorkflowSpec,
    from_payload,
    plain,
    unpack,
)
from dstack.names import task_queue
from dstack.scheduler.flow import TASK_ACTOR
from dstack.scheduler.model import Kind, RunRecord, Status, TaskRecord
from dstack.scheduler.service import Scheduler
from dstack.scheduler.store import SqliteStateStore

PROVIDER = ProviderSpec(name="graph", image="python:3.11-slim", commands=["python3 providers/graph/main.py"])
RUN = "witty-otter-1234"
WF = "train"
PROVIDER_TASK = "train.provider"


def spec(job_id: str, depends_on: Sequence[str] = (), master: Optional[str] = None, **fields: Any) -> JobSpec:
    fields.setdefault("commands", [f"echo {job_id}"])
    return JobSpec(job_id=job_id, image="alpine", depends_on=list(depends_on), master=master, **fields)


class WireScheduler(Scheduler):
    """The scheduler as its clients see it: replies in their plain form, as RpcServer sends them."""

    def handle_request(self, request: Any, sender: Optional[str] = None) -> Any:
        return plain(super().handle_request(request, sender))


class Harness:
    def __init__(self, path: Path, **options: Any) -> None:
        """``options``: more arguments of :class:`Scheduler` (``visibility``, ``grants``, ...)."""
        self.store = SqliteStateStore(path)
        self.sent: list[tuple[str, str, bytes]] = []
        self.notified: list[tuple[str, dict[str, Any]]] = []
        self.fail_send = False
        self.scheduler = WireScheduler(self.store, self._send,
                                       lambda run, update: self.notified.append((run, plain(update))), **options)

    def _send(self, queue: str, actor: str, payload: bytes) -> None:
        if self.fail_send:
            raise ConnectionError("broker down")
        self.sent.append((queue, actor, payload))

    # -------------------------------------------------------------- reading

    def messages(self, since: int = 0) -> list[tuple[str, str, Any]]:
        return [(queue, actor, from_payload(unpack(payload))) for queue, actor, payload in self.sent[since:]]

    def job_tasks(self, since: int = 0) -> list[JobTask]:
        found = []
        for queue, actor, message in self.messages(since):
            if isinstance(message, JobTask):
                assert (queue, actor) == (task_queue(), TASK_ACTOR)
                found.append(message)
        return found

    def task(self, task_id: str, run: str = RUN) -> TaskRecord:
        with self.store.transaction():
            task = self.store.get_task(run, task_id)
        assert task is not None, task_id
        return task

    def tasks(self, run: str = RUN) -> dict[str, TaskRecord]:
        """The run's providers and jobs, in creation order (not its workflow records)."""
        return {task_id: t for task_id, t in self.records(run).items() if t.kind is not Kind.WORKFLOW}

    def records(self, run: str = RUN) -> dict[str, TaskRecord]:
        """Every task record of the run, workflow records included."""
        with self.store.transaction():
            return {t.task_id: t for t in self.store.tasks_of(run)}

    def run(self, run: str = RUN) -> RunRecord:
        with self.store.transaction():
            record = self.store.get_run(run)
        assert record is not None
        return record

    def outbox(self) -> list[tuple[int, str, str, bytes]]:
        with self.store.transaction():
            return self.store.outbox()

    # -------------------------------------------------------------- acting

    def submit(self, run: str = RUN, workflow: str = WF, snapshot: str = "snap-1",
               submitted_at: float = 1700000000.0, sender: Optional[str] = None) -> Any:
        return self.scheduler.handle_request(SubmitRun(
            run_name=run, workflow=workflow,
            workflows=[WorkflowSpec(name=workflow, data={"jobs": 2}, provider=PROVIDER)],
            snapshot_id=snapshot, submitted_at=submitted_at, project="/p"), sender)

    def claim(self, task_id: str, worker: str = "w1", attempt: int = 1, run: str = RUN) -> dict[str, Any]:
        return self.scheduler.handle_request(ClaimTask(run_name=run, task_id=task_id, attempt=attempt,
                                                       worker_id=worker))

    def start(self, task_id: str, worker: str = "w1", hostname: str = "host-1", ports: Sequence[int] = (),
              run: str = RUN) -> None:
        assert self.claim(task_id, worker, run=run)["granted"]
        self.scheduler.handle_event(TaskStarted(run_name=run, task_id=task_id, attempt=1, worker_id=worker,
                                                endpoint=Endpoint(hostname=hostname, ports=list(ports))))

    def finish(self, task_id: str, status: str = "done", jobs: Optional[list[JobSpec]] = None,
               exit_code: Optional[int] = 0, reason: str = "", run: str = RUN) -> None:
        self.scheduler.handle_event(TaskFinished(run_name=run, task_id=task_id, attempt=1, status=Status(status),
                                                 exit_code=exit_code, reason=reason, jobs=jobs))

    def provider_creates(self, jobs: list[JobSpec]) -> None:
        """Submit, run the provider, and have it create ``jobs``."""
        self.submit()
        self.start(PROVIDER_TASK, worker="w-provider")
        self.finish(PROVIDER_TASK, jobs=jobs)
