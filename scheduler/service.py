"""The scheduler's logic: runs and tasks move through their statuses here, and only here.

Inputs are typed messages: requests from the CLI and workers (answered), and events from
workers (handled once, in order). Every handler is idempotent: a redelivered message finds
its change already made and does nothing. Jobs are released by the completion events of
what they depend on; the work per event is proportional to the job's dependents, never to
the size of the run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List

from dstack.errors import RequestRejected
from dstack.jobgraph import check_job_graph
from dstack.messages import (ClaimTask, Endpoint, GetRuns, JobSpec, JobTask, ProviderSpec, ProviderTask, StopRun,
                             StopTask, SubmitRun, TaskFinished, TaskStarted, encode, from_dict)
from dstack.names import is_valid_name, job_id as make_job_id, provider_task_id, task_queue, worker_queue
from scheduler.model import Kind, RunRecord, Status, TaskRecord
from scheduler.store import StateStore

log = logging.getLogger(__name__)

#: Dramatiq actor names, on the worker side.
TASK_ACTOR = "run_task"
CONTROL_ACTOR = "control"


class Scheduler:
    """Applies requests and events to the state store.

    Args:
        store: the state.
        send: ``send(queue, actor, payload_bytes)`` publishes a message (from the outbox).
        notify: ``notify(run_name, update)`` tells live followers about a change.
    """

    def __init__(self, store: StateStore, send: Callable[[str, str, bytes], None],
                 notify: Callable[[str, Dict[str, Any]], None]) -> None:
        self._store = store
        self._send = send
        self._notify = notify
        self._changed: Dict[str, Dict[str, TaskRecord]] = {}

    # ------------------------------------------------------------------ entry points

    def handle_request(self, request: Any) -> Any:
        """Answer a request from the CLI or a worker (see :mod:`dstack.rpc`)."""
        handlers = {SubmitRun: self.submit_run, GetRuns: self.get_runs, StopRun: self.stop_run,
                    ClaimTask: self.claim_task}
        handler = handlers.get(type(request))
        if handler is None:
            raise RequestRejected(f"the scheduler does not answer {type(request).__name__} requests")
        return self._apply(lambda: handler(request))

    def handle_event(self, event: Any) -> None:
        """Apply an event from a worker."""
        handlers = {TaskStarted: self.task_started, TaskFinished: self.task_finished}
        handler = handlers.get(type(event))
        if handler is None:
            raise RequestRejected(f"unexpected event {type(event).__name__}")
        self._apply(lambda: handler(event))

    def flush_outbox(self) -> None:
        """Send every message written to the outbox (also those left by a crash)."""
        with self._store.transaction():
            items = self._store.outbox()
        for item_id, queue, actor, payload in items:
            self._send(queue, actor, payload)
            with self._store.transaction():
                self._store.remove_outbox(item_id)

    def _apply(self, change: Callable[[], Any]) -> Any:
        self._changed = {}
        with self._store.transaction():
            result = change()
        self.flush_outbox()
        for run_name, tasks in self._changed.items():
            run = self._store_read(lambda: self._store.get_run(run_name))
            if run is not None:
                self._notify(run_name, {"run": run.view([]), "jobs": [t.view() for t in tasks.values()]})
        return result

    def _store_read(self, read: Callable[[], Any]) -> Any:
        with self._store.transaction():
            return read()

    # ------------------------------------------------------------------ requests

    def submit_run(self, request: SubmitRun) -> Dict[str, Any]:
        if not is_valid_name(request.run_name) or not is_valid_name(request.workflow):
            raise RequestRejected(f"invalid run or workflow name: {request.run_name!r}, {request.workflow!r}")
        existing = self._store.get_run(request.run_name)
        if existing is not None:
            if existing.snapshot_id == request.snapshot_id and existing.workflow == request.workflow:
                return existing.view(self._store.tasks_of(request.run_name))  # a resent request
            raise RequestRejected(f"a run named '{request.run_name}' exists already")
        run = RunRecord(run_name=request.run_name, workflow=request.workflow, status=Status.QUEUED,
                        submitted_at=request.submitted_at, snapshot_id=request.snapshot_id,
                        project=request.project)
        self._store.save_run(run)
        task_id = provider_task_id(request.workflow)
        task = TaskRecord(run_name=run.run_name, task_id=task_id, kind=Kind.PROVIDER, workflow=request.workflow,
                          status=Status.SUBMITTED, submitted_at=time.time(),
                          spec={"provider": asdict(request.provider), "data": request.data})
        self._enqueue(task)
        return run.view([task])

    def get_runs(self, request: GetRuns) -> List[Dict[str, Any]]:
        if request.run_name:
            run = self._store.get_run(request.run_name)
            if run is None:
                raise RequestRejected(f"no run named '{request.run_name}'")
            runs = [run]
        else:
            runs = self._store.list_runs(request.limit)
        return [run.view(self._store.tasks_of(run.run_name)) for run in runs]

    def stop_run(self, request: StopRun) -> Dict[str, Any]:
        run = self._store.get_run(request.run_name)
        if run is None:
            raise RequestRejected(f"no run named '{request.run_name}'")
        if not run.status.finished:
            run.stop_requested, run.abort = True, request.abort
            self._store.save_run(run)
            for task in self._store.tasks_of(run.run_name):
                self._stop_task(task, abort=request.abort)
            self._update_run(run)
        return run.view(self._store.tasks_of(run.run_name))

    def claim_task(self, request: ClaimTask) -> Dict[str, Any]:
        task = self._store.get_task(request.run_name, request.task_id)
        if task is None or task.attempt != request.attempt:
            return {"granted": False, "reason": "no such task (attempt)"}
        if task.status is not Status.QUEUED and task.worker_id != request.worker_id:
            return {"granted": False, "reason": f"the task is {task.status.value}"}
        if task.worker_id not in (None, request.worker_id):
            return {"granted": False, "reason": f"claimed by worker {task.worker_id}"}
        if task.status.finished:
            return {"granted": False, "reason": f"the task is {task.status.value}"}
        task.worker_id = request.worker_id
        self._save(task)
        return {"granted": True, "reason": ""}

    # ------------------------------------------------------------------ events

    def task_started(self, event: TaskStarted) -> None:
        task = self._store.get_task(event.run_name, event.task_id)
        if task is None or task.attempt != event.attempt or task.status.finished:
            if task is not None and task.status.finished:
                self._send_to_worker(event.worker_id, StopTask(event.run_name, event.task_id, event.attempt))
            return
        if task.status is Status.RUNNING:
            return
        task.status, task.started_at = Status.RUNNING, time.time()
        task.worker_id, task.hostname, task.ports = event.worker_id, event.endpoint.hostname, event.endpoint.ports
        self._save(task)
        run = self._store.get_run(task.run_name)
        assert run is not None
        if run.stop_requested:
            self._stop_task(task, abort=run.abort)
        if run.started_at is None:
            run.started_at = task.started_at
        self._update_run(run)
        for follower in self._store.dependents_of(task.run_name, task.task_id):
            if follower.master == task.task_id:
                self._release_if_ready(follower)

    def task_finished(self, event: TaskFinished) -> None:
        task = self._store.get_task(event.run_name, event.task_id)
        if task is None or task.attempt != event.attempt or task.status.finished:
            return
        run = self._store.get_run(task.run_name)
        assert run is not None
        status = Status(event.status)
        if task.kind is Kind.PROVIDER and status is Status.DONE:
            try:
                jobs = check_job_graph(event.jobs or [])
            except ValueError as e:
                status, event.reason = Status.FAILED, f"the provider's jobs were refused: {e}"
            else:
                if not run.stop_requested:
                    self._create_jobs(task, jobs)
        task.status, task.exit_code, task.reason = status, event.exit_code, event.reason
        task.finished_at = time.time()
        if task.started_at is None:
            task.started_at = task.finished_at
        self._save(task)
        if status is Status.DONE:
            for dependent in self._store.dependents_of(task.run_name, task.task_id):
                if task.task_id in dependent.depends_on and dependent.status is Status.SUBMITTED:
                    dependent.deps_left -= 1
                    self._save(dependent)
                    self._release_if_ready(dependent)
        self._cancel_dependents(task)
        self._update_run(run)

    # ------------------------------------------------------------------ helpers

    def _create_jobs(self, provider: TaskRecord, jobs: List[JobSpec]) -> None:
        """Record a provider's jobs all together, and enqueue those with nothing to wait for."""
        ids = {job.job_id: make_job_id(provider.workflow, i) for i, job in enumerate(jobs)}
        records = []
        for job in jobs:
            job.job_id = ids[job.job_id]
            job.depends_on = [ids[d] for d in job.depends_on]
            job.master = ids[job.master] if job.master else None
            records.append(TaskRecord(
                run_name=provider.run_name, task_id=job.job_id, kind=Kind.JOB, workflow=provider.workflow,
                status=Status.SUBMITTED, spec=asdict(job), depends_on=job.depends_on,
                deps_left=len(job.depends_on), master=job.master, submitted_at=time.time()))
        for record in records:
            self._save(record)
        for record in records:
            self._release_if_ready(record)

    def _release_if_ready(self, task: TaskRecord) -> None:
        """Enqueue ``task`` if everything it depends on is done and its master (if any) runs."""
        if task.status is not Status.SUBMITTED or task.deps_left > 0:
            return
        if task.master:
            master = self._store.get_task(task.run_name, task.master)
            if master is None or master.status is not Status.RUNNING:
                return
        self._enqueue(task)

    def _enqueue(self, task: TaskRecord) -> None:
        run = self._store.get_run(task.run_name)
        assert run is not None
        if task.kind is Kind.PROVIDER:
            message: Any = ProviderTask(
                run_name=task.run_name, task_id=task.task_id, attempt=task.attempt, workflow=task.workflow,
                provider=from_dict(ProviderSpec, task.spec["provider"]), data=task.spec["data"],
                snapshot_id=run.snapshot_id)
        else:
            master = None
            if task.master:
                record = self._store.get_task(task.run_name, task.master)
                assert record is not None and record.hostname is not None
                master = Endpoint(hostname=record.hostname, ports=record.ports)
            message = JobTask(run_name=task.run_name, attempt=task.attempt, job=from_dict(JobSpec, task.spec),
                              snapshot_id=run.snapshot_id, master=master)
        task.status = Status.QUEUED
        self._save(task)
        self._store.add_outbox(task_queue(), TASK_ACTOR, encode(message))

    def _stop_task(self, task: TaskRecord, *, abort: bool) -> None:
        if task.status.finished:
            return
        if task.worker_id is None:  # not started anywhere: it never will be
            task.status, task.reason, task.finished_at = Status.STOPPED, "stopped before it started", time.time()
            self._save(task)
            self._cancel_dependents(task)
        else:
            self._send_to_worker(task.worker_id, StopTask(task.run_name, task.task_id, task.attempt, abort))

    def _cancel_dependents(self, task: TaskRecord) -> None:
        """What can no longer start because ``task`` ended is ended too, transitively: its
        dependents if it did not finish done, its followers (jobs it is the master of) whatever
        its end."""
        pending = [task]
        while pending:
            upstream = pending.pop()
            for dependent in self._store.dependents_of(upstream.run_name, upstream.task_id):
                if dependent.status is not Status.SUBMITTED:
                    continue
                if dependent.master == upstream.task_id:
                    reason = f"master {upstream.task_id} {upstream.status.value} before this job started"
                elif upstream.status is not Status.DONE:
                    reason = f"dependency {upstream.task_id} {upstream.status.value}"
                else:
                    continue
                dependent.status = Status.STOPPED if upstream.status is Status.STOPPED else Status.FAILED
                dependent.reason, dependent.finished_at = reason, time.time()
                self._save(dependent)
                pending.append(dependent)

    def _update_run(self, run: RunRecord) -> None:
        unfinished, running = self._store.count_unfinished(run.run_name)
        if unfinished:
            status = Status.RUNNING if running else (Status.QUEUED if run.started_at is None else Status.RUNNING)
        else:
            tasks = self._store.tasks_of(run.run_name)  # once per run, at its end
            failed = [t for t in tasks if t.status is Status.FAILED]
            if failed:
                status, run.reason = Status.FAILED, f"{failed[0].task_id}: {failed[0].reason}"
            elif run.stop_requested or any(t.status is Status.STOPPED for t in tasks):
                status = Status.STOPPED
            else:
                status = Status.DONE
            run.finished_at = run.finished_at or time.time()
        if status is not run.status or not unfinished:
            run.status = status
            self._store.save_run(run)
            self._changed.setdefault(run.run_name, {})

    def _send_to_worker(self, worker_id: str, message: StopTask) -> None:
        self._store.add_outbox(worker_queue(worker_id), CONTROL_ACTOR, encode(message))

    def _save(self, task: TaskRecord) -> None:
        self._store.save_task(task)
        self._changed.setdefault(task.run_name, {})[task.task_id] = task

