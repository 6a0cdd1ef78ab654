"""How tasks move: released when what they wait for is done, enqueued, cancelled when that
can no longer happen, and how a run's status follows from its tasks.

Every status change goes through :meth:`TaskFlow.move` (tasks) or :meth:`TaskFlow.move_run`
(runs), checked against the tables of :mod:`dstack.states`; ``move`` also keeps the counters the
store reads instead of scanning (a run's unfinished and running tasks, the tasks queued in each
queue). Every change is made inside the caller's transaction; messages go to the outbox. The work
per event is proportional to the task's direct dependents, never to the size of the run.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional

from dstack.errors import DstackError
from dstack.messages import (
    ArtifactRef,
    Endpoint,
    JobSpec,
    JobTask,
    ProviderTask,
    QueueOpened,
    Resources,
    StopTask,
    encode,
)
from dstack.names import CONTROL_ACTOR, DEFAULT_TASK_QUEUE, TASK_ACTOR, env_name, task_queue, worker_queue
from dstack.names import job_id as make_job_id
from dstack.scheduler.model import JobState, Kind, RunRecord, Status, TaskRecord
from dstack.scheduler.secrets import SecretCipher
from dstack.scheduler.store import StateStore
from dstack.states import ACTIVE, IllegalTransition, check_run_move, check_task_move

#: The longest wait before a retry, in seconds, however often the backoff has doubled.
MAX_BACKOFF_S = 600.0


def env_of(variables: dict[str, Any]) -> dict[str, str]:
    """Variables as environment variables: names as :func:`~dstack.names.env_name` makes them
    (``batch-size`` is ``BATCH_SIZE``), text values."""
    return {env_name(name): str(value) for name, value in variables.items()}


class TaskFlow:
    """The task state machine over a :class:`StateStore`; remembers what changed, per run.

    Args:
        store: the state.
        worker_timeout: seconds after its last report that a worker counts as gone.
    """

    def __init__(self, store: StateStore, worker_timeout: float, cipher: Optional[SecretCipher] = None) -> None:
        self.store = store
        self.worker_timeout = worker_timeout
        #: what opens the stored secrets (sealed at rest)
        self.cipher = cipher or SecretCipher.ephemeral()
        self.changed: dict[str, dict[str, TaskRecord]] = {}

    # ------------------------------------------------------------------ the state machine

    def create(self, task: TaskRecord) -> None:
        """Record a new task (``submitted``): one more unfinished task in its run."""
        check_task_move(None, task.status, f"task {task.run_name}/{task.task_id}")
        self.store.add_task(task)
        self.store.adjust_run_counters(task.run_name, unfinished=1)
        self._changed(task)

    def move(self, task: TaskRecord, status: Status) -> None:
        """Change the status of ``task`` (and save what else changed in it): the one way a task moves.

        The move is from the status as stored, which is the truth also for an outdated copy of the
        record; to that same status it is no move, only a save. The run's counters of unfinished and
        running tasks, and the count of tasks queued in the task's queue, follow the move.

        Raises:
            IllegalTransition: :data:`~dstack.states.TASK_MOVES` does not allow it (a bug).
        """
        stored = self.store.stored_status(task.run_name, task.task_id)
        assert stored is not None, f"task {task.run_name}/{task.task_id} is not recorded"
        before, queue = stored
        if status is not before:
            check_task_move(before, status, f"task {task.run_name}/{task.task_id}")
        task.status = status
        self.store.save_task(task)
        unfinished = int(not status.finished) - int(not before.finished)
        running = int(status in ACTIVE) - int(before in ACTIVE)
        if unfinished or running:
            self.store.adjust_run_counters(task.run_name, unfinished=unfinished, running=running)
        if before is Status.QUEUED and (status is not Status.QUEUED or queue != task.queue):
            self.store.adjust_queue(queue, -1)
        if status is Status.QUEUED and not (before is Status.QUEUED and queue == task.queue):
            self.store.adjust_queue(task.queue, +1)
        self._changed(task)

    def save(self, task: TaskRecord) -> None:
        """Save what changed in ``task`` other than its status (use :meth:`move` for that).

        Raises:
            IllegalTransition: its status differs from the stored one (a bug).
        """
        stored = self.store.stored_status(task.run_name, task.task_id)
        if stored is None or stored[0] is not task.status:
            raise IllegalTransition(f"task {task.run_name}/{task.task_id}: a status change must be a move")
        self.store.save_task(task)
        self._changed(task)

    def create_run(self, run: RunRecord) -> None:
        """Record a new run (``queued``)."""
        check_run_move(None, run.status, f"run {run.run_name}")
        self.store.save_run(run)

    def move_run(self, run: RunRecord, status: Status) -> None:
        """Change the status of ``run`` (and save what else changed in it): the one way a run moves.

        Raises:
            IllegalTransition: :data:`~dstack.states.RUN_MOVES` does not allow it (a bug).
        """
        if status is not run.status:
            check_run_move(run.status, status, f"run {run.run_name}")
        run.status = status
        self.store.save_run(run)
        self.changed.setdefault(run.run_name, {})

    def _changed(self, task: TaskRecord) -> None:
        self.changed.setdefault(task.run_name, {})[task.task_id] = task

    # ------------------------------------------------------------------ forward

    def secrets(self, owner: str) -> dict[str, str]:
        """The secrets the jobs of ``owner``'s runs get, opened: the team's, and over them ``owner``'s own.

        Raises:
            DstackError: some cannot be opened with the scheduler's key; the message names them.
        """
        # the team's first (owner ""): the owner's own of the same name win
        opened, unopened = self.cipher.open_all(self.store.secrets(owners=("", owner)))
        if unopened:
            names = ", ".join(secret.name for secret in unopened)
            raise DstackError(f"the secrets {names} were sealed under another key than the scheduler's "
                              "(DSTACK_SECRETS_KEY, scheduler/secrets.key); set them again, or delete them")
        return opened

    def release_if_ready(self, task: TaskRecord) -> None:
        """Start ``task`` if everything it depends on is done and its master (if any) runs.

        A workflow record has no container: once ready it is done, which releases what waits on it.
        """
        if task.status is not Status.SUBMITTED or task.deps_left > 0:
            return
        if task.master:
            master = self.store.get_task(task.run_name, task.master)
            if master is None or master.status is not Status.RUNNING:
                return
        if task.kind is Kind.WORKFLOW:
            task.finished_at = time.time()
            self.move(task, Status.DONE)
            self.on_done(task)
        else:
            self.enqueue(task)

    def on_done(self, task: TaskRecord) -> None:
        """``task`` is done: one dependency less for each task waiting on it."""
        for dependent, kind in self.store.dependents_of(task.run_name, task.task_id):
            if kind == "dep" and dependent.status is Status.SUBMITTED:
                dependent.deps_left = self.store.decrement_deps(task.run_name, dependent.task_id)
                self.release_if_ready(dependent)

    def end(self, task: TaskRecord, status: Status, reason: str, now: float) -> None:
        """``task`` ended with ``status``: record it, and move on what waited on it."""
        task.reason, task.finished_at = reason, now
        self.move(task, status)
        if status is Status.DONE:
            self.on_done(task)
        self.cancel_dependents(task)

    def on_started(self, task: TaskRecord) -> None:
        """``task`` runs: the jobs it is the master of may start."""
        for follower, kind in self.store.dependents_of(task.run_name, task.task_id):
            if kind == "master":
                self.release_if_ready(follower)

    def enqueue(self, task: TaskRecord) -> None:
        """Put ``task`` on the queue of tasks that need what it needs."""
        run = self.store.get_run(task.run_name)
        assert run is not None
        needs = Resources()
        if task.kind is Kind.PROVIDER:
            workflow = self.store.get_task(task.run_name, task.workflow)
            assert workflow is not None
            state = task.provider_state
            state.inputs = self.inputs_of(workflow)
            message: Any = ProviderTask(
                run_name=task.run_name, task_id=task.task_id, attempt=task.attempt, workflow=task.workflow,
                data=state.data, snapshot_id=run.snapshot_id, provider=state.provider,
                provider_repo=state.provider_repo, env=env_of(workflow.workflow_state.variables),
                inputs=list(state.inputs), args=list(state.args), owner=run.owner)
        else:
            master = None
            if task.master:
                record = self.store.get_task(task.run_name, task.master)
                assert record is not None and record.hostname is not None
                master = Endpoint(hostname=record.hostname, ports=record.ports)
            message = JobTask(run_name=task.run_name, attempt=task.attempt, job=task.job_state.job,
                              snapshot_id=run.snapshot_id, master=master, inputs=list(task.job_state.inputs),
                              cache=task.job_state.cache, resume=task.job_state.resume, owner=run.owner)
            needs = message.job.resources
        task.queue = task_queue(needs)
        if self.store.add_queue(task.queue, asdict(needs)) == 0 and task.queue != DEFAULT_TASK_QUEUE:
            for report, _ in self.live_workers():  # they take from the queues they know of
                self.send_to_worker(report["worker_id"], QueueOpened(task.queue, needs))
        task.reason = ""
        self.move(task, Status.QUEUED)
        self.store.add_outbox(task.queue, TASK_ACTOR, encode(message))

    def live_workers(self) -> list[tuple[dict[str, Any], float]]:
        """``(latest report, seen_at)`` of every worker heard from within the worker timeout."""
        since = time.time() - self.worker_timeout
        return [(report, seen_at) for report, seen_at in self.store.workers() if seen_at >= since]

    def inputs_of(self, workflow: TaskRecord) -> list[ArtifactRef]:
        """The artifacts a workflow starts with: those of the tagged runs it names, of the workflows it
        depends on (in this run, all done by now), then of the runs it names in ``runs`` (each in its
        own folder)."""
        state = workflow.workflow_state
        refs = list(state.tag_inputs)
        for upstream in state.depends_on:
            refs += [ArtifactRef(workflow.run_name, job.task_id)
                     for job in self.store.jobs_of(workflow.run_name, upstream) if job.job_state.job.artifacts]
        return refs + state.run_inputs

    def create_jobs(self, provider: TaskRecord, jobs: list[JobSpec]) -> None:
        """Record a provider's jobs all together, and start those with nothing to wait for.

        A job starts with its workflow's inputs, then the artifacts of the jobs it depends on, in
        the order it names them (early dstack's rule: the output of a job's dependencies is its
        input). They are fixed here, from the jobs in hand, so enqueueing reads nothing more and
        every attempt gets the same.
        """
        workflow = self.store.get_task(provider.run_name, provider.workflow)
        assert workflow is not None
        ids = {job.job_id: make_job_id(provider.workflow, i) for i, job in enumerate(jobs)}
        producers = {ids[job.job_id] for job in jobs if job.artifacts}
        masters = {ids[job.master] for job in jobs if job.master}  # a master and its followers run together: no caching
        defaults = workflow.workflow_state
        variables = env_of(defaults.variables)
        records = []
        for job in jobs:
            job.job_id = ids[job.job_id]
            job.depends_on = [ids[d] for d in job.depends_on]
            job.master = ids[job.master] if job.master else None
            job.env = {**variables, **job.env}
            if job.retry is None and defaults.retry:
                job.retry = defaults.retry
            if job.max_duration_s is None:
                job.max_duration_s = defaults.max_duration_s
            job.registry_auth = job.registry_auth or defaults.registry_auth
            job.pull_policy = job.pull_policy or defaults.pull_policy
            records.append(TaskRecord(
                run_name=provider.run_name, task_id=job.job_id, kind=Kind.JOB, workflow=provider.workflow,
                status=Status.SUBMITTED, spec=JobState(job=job, inputs=list(provider.provider_state.inputs) + [
                    ArtifactRef(provider.run_name, dep) for dep in dict.fromkeys(job.depends_on) if dep in producers],
                    cache=defaults.cache and job.master is None and job.job_id not in masters),
                depends_on=job.depends_on, deps_left=len(job.depends_on), master=job.master,
                submitted_at=time.time()))
        for record in records:
            self.create(record)
            self.store.add_dependency(record.run_name, record.task_id, workflow.task_id)
        for record in records:
            self.release_if_ready(record)

    # ------------------------------------------------------------------ retries

    def retry_later(self, task: TaskRecord, run: RunRecord, reason: str) -> bool:
        """If ``task``, a job of ``run`` that failed for ``reason``, may run again (it has retries
        left and the run is not being stopped), make it wait for its backoff (doubling with each
        retry) as its next attempt, and return True."""
        if task.kind is not Kind.JOB or run.stop_requested:
            return False
        state = task.job_state
        policy, retries = state.job.retry, state.retries
        if policy is None or retries >= policy.limit:
            return False
        delay = min(policy.backoff_s * 2 ** retries, MAX_BACKOFF_S)
        task.new_attempt()
        state.retries, state.retry_at = retries + 1, time.time() + delay
        state.resume = True  # from the failed attempt's synced artifacts
        task.reason = f"{reason.splitlines()[0] if reason else 'failed'}; retry {retries + 1} of {policy.limit} " \
                      f"in {delay:g} s"
        self.move(task, Status.RETRYING)
        return True

    def release_due_retries(self, now: float) -> None:
        """Start again the jobs whose backoff has passed."""
        for task in self.store.tasks_in_status(Status.RETRYING):
            retry_at = task.job_state.retry_at
            if retry_at is not None and retry_at > now:
                continue
            master = self.store.get_task(task.run_name, task.master) if task.master else None
            if master is not None and master.status.finished:  # it would wait for it forever
                self.end(task, Status.STOPPED if master.status is Status.STOPPED else Status.FAILED,
                         f"master {master.task_id} {master.status.value} before this job started again", now)
                run = self.store.get_run(task.run_name)
                assert run is not None
                self.update_run(run)
                continue
            self.move(task, Status.SUBMITTED)
            self.release_if_ready(task)

    # ------------------------------------------------------------------ backward

    def stop(self, task: TaskRecord, *, abort: bool) -> None:
        """Stop a task: at once if no worker has it, else through its worker."""
        if task.status.finished:
            return
        if task.worker_id is None:  # not started anywhere: it never will be
            self.end(task, Status.STOPPED, "stopped before it started", time.time())
        else:
            self.send_to_worker(task.worker_id, StopTask(task.run_name, task.task_id, task.attempt, abort))

    def cancel_dependents(self, task: TaskRecord) -> None:
        """What can no longer start because ``task`` ended is ended too, transitively: its
        dependents if it did not finish done, its followers (jobs it is the master of) whatever
        its end. Independent branches go on."""
        pending = [task]
        while pending:
            upstream = pending.pop()
            for dependent, kind in self.store.dependents_of(upstream.run_name, upstream.task_id):
                if dependent.status is not Status.SUBMITTED:
                    continue
                what = "workflow" if upstream.kind is Kind.WORKFLOW else "dependency"
                if kind == "master":
                    reason = f"master {upstream.task_id} {upstream.status.value} before this job started"
                elif upstream.status is not Status.DONE:
                    reason = f"{what} {upstream.task_id} {upstream.status.value}"
                else:
                    continue
                dependent.reason, dependent.finished_at = reason, time.time()
                self.move(dependent, Status.STOPPED if upstream.status is Status.STOPPED else Status.FAILED)
                pending.append(dependent)

    def update_run(self, run: RunRecord) -> None:
        """Derive the run's status from its counters (and, once at its end, from its tasks)."""
        unfinished, running = self.store.count_unfinished(run.run_name)
        if unfinished:
            status = Status.RUNNING if running or run.started_at is not None else Status.QUEUED
        else:
            tasks = self.store.tasks_of(run.run_name)  # once per run, at its end
            failed = sorted((t for t in tasks if t.status is Status.FAILED and t.kind is not Kind.WORKFLOW),
                            key=lambda t: (t.started_at is None, t.finished_at or 0))  # the root cause first
            if failed:
                status, run.reason = Status.FAILED, f"{failed[0].task_id}: {failed[0].reason}"
            elif run.stop_requested or any(t.status is Status.STOPPED for t in tasks):
                status = Status.STOPPED
            else:
                status = Status.DONE
            run.finished_at = run.finished_at or time.time()
        if status is not run.status or not unfinished:
            self.move_run(run, status)

    def send_to_worker(self, worker_id: str, message: Any) -> None:
        self.store.add_outbox(worker_queue(worker_id), CONTROL_ACTOR, encode(message))
