"""The scheduler's entry points: requests from the CLI and workers, events from workers.

Every handler is idempotent: a redelivered message finds its change already made and does
nothing. The moves of tasks themselves are in :mod:`scheduler.flow`.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict
from typing import Any, Callable, Optional

from dstack import defaults
from dstack.errors import DstackError, NotAllowed, RequestRejected, RunNameTaken
from dstack.jobgraph import check_job_graph, find_cycle
from dstack.messages import (
    ROLES,
    UPLOAD_WORKFLOW,
    AddUser,
    ClaimTask,
    DeleteRuns,
    DeleteSecret,
    GetRuns,
    GetSecrets,
    GetStorage,
    GetTags,
    GetUsers,
    GetWorkers,
    Inventory,
    JobSpec,
    PresignStorage,
    RecordUpload,
    RemoveUser,
    Resources,
    RestartRun,
    SetSecret,
    StopRun,
    StopTask,
    SubmitRun,
    TagRun,
    TaskFinished,
    TaskPulling,
    TaskStarted,
    UntagRun,
    WorkerLeaving,
    WorkerReport,
    from_dict,
)
from dstack.names import is_valid_name, is_valid_tag, job_id, provider_task_id
from dstack.placement import asks_for_anything, describe_needs, fits
from dstack.scheduler import inputs
from dstack.scheduler.access import Caller, Role, service_caller
from dstack.scheduler.flow import TaskFlow
from dstack.scheduler.grants import StorageGrants
from dstack.scheduler.model import JobState, Kind, ProviderState, RunRecord, Status, TaskRecord, WorkflowState
from dstack.scheduler.secrets import SecretCipher
from dstack.scheduler.store import StateStore
from dstack.settings import VISIBILITIES
from dstack.states import ACTIVE
from dstack.views import (
    Acknowledged,
    ClaimAnswer,
    DeletedRuns,
    JobView,
    OpenQueue,
    PresignedUrls,
    ReportAnswer,
    RunUpdate,
    RunView,
    SecretAnswer,
    SecretView,
    StorageInfo,
    TagAnswer,
    TagView,
    TaskRef,
    UntagAnswer,
    UsersAnswer,
    UserView,
    WorkerView,
)

log = logging.getLogger(__name__)

_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _is_relative_path(path: str) -> bool:
    """Whether ``path`` is a relative ``/``-separated path without empty, ``.`` or ``..`` parts."""
    parts = path.split("/")
    return bool(path) and "\\" not in path and all(part not in ("", ".", "..") for part in parts)


class Scheduler:
    """Applies requests and events to the state store.

    Args:
        store: the state.
        send: ``send(queue, actor, payload_bytes)`` publishes a message (from the outbox).
        notify: ``notify(run_name, update)`` tells live followers about a change of a run.
        worker_timeout: seconds after its last report that a worker counts as gone.
        cipher: seals and opens secrets.
        account: the scheduler's own broker account: the fleet's administrator.
        visibility: who sees runs (:data:`~dstack.settings.VISIBILITIES`).
        grants: presigned URLs of the storage for users (``None``: the scheduler has no storage to hand out).
    """

    def __init__(self, store: StateStore, send: Callable[[str, str, bytes], None],
                 notify: Callable[[str, RunUpdate], None],
                 worker_timeout: float = defaults.WORKER_TIMEOUT, cipher: Optional[SecretCipher] = None,
                 account: str = "guest", visibility: str = "all", grants: Optional[StorageGrants] = None) -> None:
        if visibility not in VISIBILITIES:
            raise DstackError(f"DSTACK_VISIBILITY must be one of {', '.join(VISIBILITIES)}, not {visibility!r}")
        self._store = store
        self._send = send
        self._notify = notify
        self._flow = TaskFlow(store, worker_timeout, cipher)
        self._started_at = time.time()
        self._service = service_caller(account)
        self._visibility = visibility
        self._grants = grants

    # ------------------------------------------------------------------ entry points

    def handle_request(self, request: Any, sender: Optional[str] = None) -> Any:
        """Answer a request from the CLI or a worker (see :mod:`dstack.rpc`) sent by the broker account
        ``sender`` (``None``: the scheduler's own) with its reply (:data:`dstack.views.REPLY_TYPES`).

        Raises:
            NotAllowed: the sender is no dstack user, or may not send this request.
        """
        handlers: dict[type, Callable[[Any, Caller], Any]] = {
            SubmitRun: self.submit_run, GetRuns: self.get_runs, StopRun: self.stop_run,
            ClaimTask: self.claim_task, RestartRun: self.restart_run, TagRun: self.tag_run,
            UntagRun: self.untag_run, GetTags: self.get_tags, WorkerReport: self.worker_report,
            WorkerLeaving: self.worker_leaving, GetWorkers: self.get_workers, SetSecret: self.set_secret,
            DeleteSecret: self.delete_secret, GetSecrets: self.get_secrets, DeleteRuns: self.delete_runs,
            RecordUpload: self.record_upload, AddUser: self.add_user, RemoveUser: self.remove_user,
            GetUsers: self.get_users, GetStorage: self.get_storage, PresignStorage: self.presign_storage}
        handler = handlers.get(type(request))
        if handler is None:
            raise RequestRejected(f"the scheduler does not answer {type(request).__name__} requests")

        def answer() -> Any:
            caller = self._caller(sender)
            if not caller.may_send(request):
                raise NotAllowed(f"{caller.name} is a {caller.role.value}: it may not send {type(request).__name__}"
                                 + (" (for admins only)" if caller.role is Role.USER else ""))
            if caller.role is Role.WORKER and request.worker_id != caller.name:  # a worker speaks for itself only
                raise NotAllowed(f"the worker account {caller.name} may not speak for worker {request.worker_id}: "
                                 f"run it with DSTACK_WORKER_ID={caller.name}")
            return handler(request, caller)
        return self._apply(answer)

    def _caller(self, sender: Optional[str]) -> Caller:
        """Who sent a request: the scheduler's own account, or a dstack user."""
        if sender is None or sender == self._service.name:
            return self._service
        user = self._store.get_user(sender)
        if user is None:
            raise NotAllowed(f"the broker account '{sender}' is no dstack user: an admin adds it with "
                             f"`dstack users add {sender}`")
        return Caller(user.name, Role(user.role))

    def _owner(self, owner: str) -> str:
        """Who owns a run or tag whose record names ``owner``: that user, or, for a record from before dstack had
        users (no owner), the administrator (the scheduler's own account)."""
        return owner or self._service.name

    def _visible(self, caller: Caller, owner: str) -> bool:
        return caller.may_see(self._owner(owner), self._visibility)

    def handle_event(self, event: Any) -> None:
        """Apply an event from a worker. Events carry no sender RabbitMQ vouched for (Dramatiq sets none): one
        about a task that another worker claimed is ignored."""
        handlers: dict[type, Callable[[Any], None]] = {TaskStarted: self.task_started, TaskPulling: self.task_pulling,
                                                       TaskFinished: self.task_finished}
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
        self._flow.changed = {}
        with self._store.transaction():
            result = change()
        changed, self._flow.changed = self._flow.changed, {}
        # the tasks this change released reach the workers first (the critical path of a chain of jobs);
        # the followers' updates are built afterwards, from the same committed state
        self.flush_outbox()
        updates = []
        with self._store.transaction():
            for run_name, tasks in changed.items():
                run = self._store.get_run(run_name)
                if run is not None:
                    jobs = self._explain_waits([t.job_view() for t in tasks.values() if t.kind is not Kind.WORKFLOW])
                    updates.append((run_name, RunUpdate(run=run.view([]), jobs=jobs)))
        for run_name, update in updates:
            self._notify(run_name, update)
        return result

    # ------------------------------------------------------------------ runs

    def submit_run(self, request: SubmitRun, caller: Caller) -> RunView:
        names = [w.name for w in request.workflows]
        if not is_valid_name(request.run_name) or not all(is_valid_name(n) for n in names):
            raise RequestRejected(f"invalid run or workflow name: {request.run_name!r}, {names!r}")
        if request.workflow not in names or len(set(names)) != len(names):
            raise RequestRejected("the submission must hold its target workflow once, and each workflow once")
        existing = self._store.get_run(request.run_name)
        if existing is not None:
            # a resent request (the CLI stamps each submission once); another CLI that drew the same name
            # submits the same workflow of the same project at another time, and picks another name
            if (existing.snapshot_id, existing.workflow, existing.submitted_at) == (
                    request.snapshot_id, request.workflow, request.submitted_at):
                return existing.view(self._store.tasks_of(request.run_name))
            raise RunNameTaken(f"a run named '{request.run_name}' exists already")
        tag_inputs = {w.name: inputs.tag_inputs(self._store, w) for w in request.workflows}  # refuses first
        run_inputs = {w.name: inputs.run_inputs(self._store, w) for w in request.workflows}
        for spec in request.workflows:
            spec.depends_on = list(dict.fromkeys(spec.depends_on))
            unknown = [d for d in spec.depends_on if d not in names]
            if unknown:
                raise RequestRejected(f"workflow '{spec.name}' depends on {unknown}, which are not in the run")
        cycle = find_cycle({spec.name: spec.depends_on for spec in request.workflows})
        if cycle:
            raise RequestRejected("dependency cycle between workflows: " + " -> ".join(cycle))
        run = RunRecord(run_name=request.run_name, workflow=request.workflow, status=Status.QUEUED,
                        submitted_at=request.submitted_at, snapshot_id=request.snapshot_id, project=request.project,
                        owner=caller.name)
        self._flow.create_run(run)
        now = time.time()
        records = []
        for spec in request.workflows:
            provider = TaskRecord(
                run_name=run.run_name, task_id=provider_task_id(spec.name), kind=Kind.PROVIDER, workflow=spec.name,
                status=Status.SUBMITTED, submitted_at=now, depends_on=list(spec.depends_on),
                deps_left=len(spec.depends_on),
                spec=ProviderState(data=spec.data, provider=spec.provider, provider_repo=spec.provider_repo,
                                   args=list(spec.provider_args)))
            workflow = TaskRecord(
                run_name=run.run_name, task_id=spec.name, kind=Kind.WORKFLOW, workflow=spec.name,
                status=Status.SUBMITTED, submitted_at=now, depends_on=[provider.task_id], deps_left=1,
                spec=WorkflowState(depends_on=spec.depends_on, tagged=spec.tagged, tag_inputs=tag_inputs[spec.name],
                                   run_inputs=run_inputs[spec.name], variables=spec.variables, retry=spec.retry,
                                   max_duration_s=spec.max_duration_s, cache=spec.cache,
                                   registry_auth=spec.registry_auth, pull_policy=spec.pull_policy))
            self._flow.create(workflow)
            self._flow.create(provider)
            records.append(provider)
        for provider in records:
            self._flow.release_if_ready(provider)
        return run.view(self._store.tasks_of(run.run_name))

    def get_runs(self, request: GetRuns, caller: Caller) -> list[RunView]:
        """The run named, or the newest runs (of ``request.owner``, if set) that the caller may see."""
        if request.run_name:
            runs = [self._run(request.run_name, caller)]
        else:
            owner = request.owner
            if owner is None and not self._visible(caller, ""):  # DSTACK_VISIBILITY=own: the caller's only
                owner = caller.name
            runs = [run for run in self._store.list_runs(request.limit, owner) if self._visible(caller, run.owner)]
        views = [run.view(self._store.tasks_of(run.run_name), self._store.tags_of(run.run_name)) for run in runs]
        self._explain_waits([job for view in views for job in view.jobs])
        return views

    def _explain_waits(self, jobs: list[JobView]) -> list[JobView]:
        """Give each queued job that fits no live worker a reason saying so, and what it asks for."""
        queued = [job for job in jobs if job.status is Status.QUEUED and not job.reason]
        if queued:
            workers = [from_dict(Inventory, report["resources"]) for report, _ in self._flow.live_workers()]
            for job in queued:
                needs = job.needs
                if not workers:
                    asks = describe_needs(needs) if asks_for_anything(needs) else ""
                    job.reason = "waiting for a worker: none is live" + (f" (needs {asks})" if asks else "")
                elif not any(fits(needs, inventory) is not None for inventory in workers):
                    job.reason = f"waiting for capacity: no live worker has {describe_needs(needs)}"
        return jobs

    def _run(self, run_name: str, caller: Caller, change: bool = False) -> RunRecord:
        """The run named, if the caller may see it (and, with ``change``, change it)."""
        run = self._store.get_run(run_name)
        if run is None or not self._visible(caller, run.owner):
            raise RequestRejected(f"no run named '{run_name}'")
        if change:
            caller.check_change(self._owner(run.owner), f"run {run_name}")
        return run

    def stop_run(self, request: StopRun, caller: Caller) -> RunView:
        """Stop the run, or only ``request.workflow`` and everything downstream of it (the rest goes on)."""
        run = self._run(request.run_name, caller, change=True)
        if request.workflow is not None:
            tasks = {t.task_id: t for t in self._store.tasks_of(run.run_name)}
            self._check_workflow(run, tasks, request.workflow)
            if not run.status.finished:
                scope = self._downstream(tasks, request.workflow)
                for task in tasks.values():  # workflow records first: what waits on them ends at once
                    if task.task_id in scope:
                        self._flow.stop(task, abort=request.abort)
                self._flow.update_run(run)
        elif not run.status.finished:
            run.stop_requested, run.abort = True, request.abort
            self._store.save_run(run)
            for task in self._store.tasks_of(run.run_name):
                self._flow.stop(task, abort=request.abort)
            self._flow.update_run(run)
        return run.view(self._store.tasks_of(run.run_name))

    def _workflow_stopped(self, task: TaskRecord) -> bool:
        """Whether the workflow of ``task`` was stopped (``dstack stop RUN WORKFLOW``, or the run)."""
        workflow = self._store.get_task(task.run_name, task.workflow)
        return workflow is not None and workflow.status is Status.STOPPED

    def _check_workflow(self, run: RunRecord, tasks: dict[str, TaskRecord], workflow: str) -> None:
        if workflow not in tasks or tasks[workflow].kind is not Kind.WORKFLOW:
            known = ", ".join(sorted(t.task_id for t in tasks.values() if t.kind is Kind.WORKFLOW))
            raise RequestRejected(f"run {run.run_name} has no workflow '{workflow}' (it has: {known})")

    def restart_run(self, request: RestartRun, caller: Caller) -> RunView:
        """Run the failed and stopped parts again; what is done stays done and keeps its artifacts. Each job
        that runs again starts with its own last synced artifacts, or with none stored if ``request.clear``."""
        run = self._run(request.run_name, caller, change=True)
        if not run.status.finished:
            raise RequestRejected(f"run {run.run_name} is {run.status.value}; restart it once it has ended")
        tasks = {t.task_id: t for t in self._store.tasks_of(run.run_name)}
        if request.workflow is not None:
            self._check_workflow(run, tasks, request.workflow)
        chosen = self._restartable(tasks, request.workflow)
        if not chosen:
            raise RequestRejected(f"nothing to restart in {run.run_name}: "
                                  f"{'workflow ' + request.workflow if request.workflow else 'every part'} is done")
        chosen_ids = {t.task_id for t in chosen}
        for task in list(chosen):  # a follower needs its master running again
            master = tasks.get(task.master) if task.master else None
            if master is not None and master.task_id not in chosen_ids:
                chosen.append(master)
                chosen_ids.add(master.task_id)
        for task in chosen:
            for upstream, kind in self._store.upstream_of(run.run_name, task.task_id):
                if kind == "dep" and upstream.task_id not in chosen_ids and upstream.status is not Status.DONE:
                    raise RequestRejected(f"{task.task_id} waits on {upstream.task_id}, which is "
                                          f"{upstream.status.value} and not part of this restart; restart "
                                          f"workflow {upstream.workflow} (or the whole run) instead")
        for task in chosen:
            task.deps_left = sum(1 for up, kind in self._store.upstream_of(run.run_name, task.task_id)
                                 if kind == "dep" and (up.task_id in chosen_ids or up.status is not Status.DONE))
            task.new_attempt()
            if isinstance(task.spec, JobState):
                task.spec.retries = 0  # a restart gets its retries anew
                task.spec.resume = not request.clear  # from its last synced artifacts, or (--clear) from nothing
            self._flow.move(task, Status.SUBMITTED)
        run.reason, run.finished_at = "", None
        run.stop_requested = run.abort = False
        self._flow.move_run(run, Status.QUEUED)
        for task in chosen:
            self._flow.release_if_ready(task)
        self._flow.update_run(run)
        return run.view(self._store.tasks_of(run.run_name))

    def _restartable(self, tasks: dict[str, TaskRecord], workflow: Optional[str]) -> list[TaskRecord]:
        """The tasks that did not end done (of ``workflow`` and everything downstream of it, if set)."""
        scope = set(tasks) if workflow is None else self._downstream(tasks, workflow)
        return [t for t in tasks.values() if t.task_id in scope and t.status is not Status.DONE]

    def _downstream(self, tasks: dict[str, TaskRecord], workflow: str) -> set[str]:
        """The ids of ``workflow``'s tasks (its record, provider and jobs) and of everything that waits on them."""
        scope: set[str] = set()
        pending = [t.task_id for t in tasks.values() if t.workflow == workflow]
        while pending:
            task_id = pending.pop()
            if task_id in scope:
                continue
            scope.add(task_id)
            pending += [d.task_id for d, _ in self._store.dependents_of(tasks[task_id].run_name, task_id)]
        return scope

    def claim_task(self, request: ClaimTask, caller: Caller) -> ClaimAnswer:
        task = self._store.get_task(request.run_name, request.task_id)
        if task is None or task.attempt != request.attempt:
            return ClaimAnswer(granted=False, reason="no such task (attempt)")
        if task.worker_id not in (None, request.worker_id):
            return ClaimAnswer(granted=False, reason=f"claimed by worker {task.worker_id}")
        if task.status not in (Status.QUEUED, *ACTIVE) or (
                task.status in ACTIVE and task.worker_id != request.worker_id):
            return ClaimAnswer(granted=False, reason=f"the task is {task.status.value}")
        secrets: dict[str, str] = {}
        if task.kind is Kind.JOB:
            run = self._store.get_run(task.run_name)
            assert run is not None
            try:
                secrets = self._flow.secrets(run.owner)
            except DstackError as e:  # sealed under another key: this job cannot have them
                task.started_at = time.time()
                self._flow.end(task, Status.FAILED, f"its secrets cannot be given: {e}", task.started_at)
                self._flow.update_run(run)
                return ClaimAnswer(granted=False, reason=str(e))
        task.worker_id = request.worker_id
        self._flow.save(task)
        return ClaimAnswer(granted=True, secrets=secrets)

    def tick(self) -> None:
        """What time alone makes happen (called every second): retries whose backoff has passed
        start, and workers that stopped reporting are lost, with their tasks."""
        now = time.time()

        def change() -> None:
            self._flow.release_due_retries(now)
            self._lose_silent_workers(now)
        self._apply(change)

    def _lose_silent_workers(self, now: float) -> None:
        """A worker silent for the worker timeout is gone: each task it held runs again (by its
        retry policy) or fails, "worker lost". After the scheduler starts, every worker gets a
        full timeout to report, however long the scheduler was away."""
        timeout = self._flow.worker_timeout
        if now - self._started_at < timeout:
            return
        for report, seen_at in self._store.workers():
            if seen_at >= now - timeout:
                continue
            worker_id = report["worker_id"]
            log.warning("worker %s has not reported for %.0f s: it is lost", worker_id, now - seen_at)
            self._store.delete_worker(worker_id)
            reason = f"worker lost: {worker_id} stopped reporting ({now - seen_at:.0f} s ago)"
            for task in self._store.tasks_held_by(worker_id):
                run = self._store.get_run(task.run_name)
                assert run is not None
                if not self._flow.retry_later(task, run, reason):
                    task.started_at = task.started_at or now
                    self._flow.end(task, Status.FAILED, reason, now)
                self._flow.update_run(run)

    # ------------------------------------------------------------------ workers

    def worker_report(self, report: WorkerReport, caller: Caller) -> ReportAnswer:
        """Record a worker's report; answer with the task queues that hold tasks, and the tasks
        the worker holds that are not its own anymore (it was counted lost, or they ended): it
        stops them."""
        self._store.save_worker(report.worker_id, asdict(report), time.time())
        stale = []
        for held in report.in_use:
            task = self._store.get_task(held.run_name, held.task_id)
            if (task is None or task.attempt != held.attempt or task.status.finished
                    or task.worker_id not in (None, report.worker_id)):
                stale.append(TaskRef(run_name=held.run_name, task_id=held.task_id, attempt=held.attempt))
        queues = [OpenQueue(queue=queue, needs=from_dict(Resources, needs))
                  for queue, needs in self._store.open_queues()]
        return ReportAnswer(queues=queues, stop=stale)

    def worker_leaving(self, request: WorkerLeaving, caller: Caller) -> Acknowledged:
        self._store.delete_worker(request.worker_id)
        return Acknowledged()

    def get_workers(self, request: GetWorkers, caller: Caller) -> list[WorkerView]:
        """The live workers: their latest report, and when it came."""
        return [from_dict(WorkerView, {**report, "seen_at": seen_at})
                for report, seen_at in self._flow.live_workers()]

    # ------------------------------------------------------------------ secrets

    def set_secret(self, request: SetSecret, caller: Caller) -> SecretAnswer:
        """Keep a secret of the caller (or, from an admin, of the team); jobs of the runs of its owner (of
        everyone's, for the team's) started from now on get it. Nothing here ever repeats its value."""
        if not _SECRET_NAME.match(request.name):
            raise RequestRejected(f"secret name {request.name!r} must be an environment variable name: "
                                  "letters, digits and '_', not starting with a digit")
        owner = self._secret_owner(request.team, caller)
        self._store.set_secret(request.name, self._flow.cipher.seal(request.value), time.time(), owner)
        return SecretAnswer(name=request.name)

    def delete_secret(self, request: DeleteSecret, caller: Caller) -> SecretAnswer:
        owner = self._secret_owner(request.team, caller)
        if not self._store.delete_secret(request.name, owner):
            whose = "the team" if request.team else caller.name
            raise RequestRejected(f"{whose} has no secret named '{request.name}'")
        return SecretAnswer(name=request.name)

    def _secret_owner(self, team: bool, caller: Caller) -> str:
        if team and not caller.is_admin:
            raise NotAllowed(f"{caller.name} is no admin: only admins set or delete the team's secrets")
        return "" if team else caller.name

    def get_secrets(self, request: GetSecrets, caller: Caller) -> list[SecretView]:
        """The names of the team's secrets and the caller's (an admin's: everyone's), never their values."""
        owners = None if caller.is_admin else ("", caller.name)
        return [SecretView(name=s.name, updated_at=s.updated_at, owner=s.owner) for s in self._store.secrets(owners)]

    # ------------------------------------------------------------------ tags

    def tag_run(self, request: TagRun, caller: Caller) -> TagAnswer:
        if not is_valid_tag(request.tag):
            raise RequestRejected(f"tag {request.tag!r} must be letters, digits, '.', '-' or '_'")
        run = self._run(request.run_name, caller, change=True)
        current = self._store.get_tag(request.tag)
        if current is not None and current.run_name != run.run_name:
            raise RequestRejected(f"tag '{request.tag}' names run {current.run_name} already; "
                                  f"`dstack untag {request.tag}` first")
        self._store.set_tag(request.tag, run.run_name, time.time(), caller.name)
        return TagAnswer(tag=request.tag, run_name=run.run_name)

    def untag_run(self, request: UntagRun, caller: Caller) -> UntagAnswer:
        """Remove a tag: its owner, the owner of the run it names, or an admin may."""
        tag = self._store.get_tag(request.tag)
        if tag is None or not self._visible(caller, tag.owner):
            raise RequestRejected(f"no tag named '{request.tag}'")
        if not caller.may_change(self._owner(tag.owner)):
            run = self._store.get_run(tag.run_name)
            caller.check_change(self._owner(run.owner if run else tag.owner), f"tag {request.tag}")
        self._store.delete_tag(request.tag)
        return UntagAnswer(tag=request.tag)

    def get_tags(self, request: GetTags, caller: Caller) -> list[TagView]:
        """Every tag the caller may see, with its run, the bytes of that run's artifacts and its kind (a run, or
        an upload)."""
        return [self._tag_view(t.tag, t.run_name, t.created_at, t.owner) for t in self._store.list_tags()
                if self._visible(caller, t.owner)]

    def _tag_view(self, tag: str, run_name: str, created_at: float, owner: str) -> TagView:
        run = self._store.get_run(run_name)
        tasks = self._store.tasks_of(run_name)
        workflows = [t for t in tasks if t.kind is Kind.WORKFLOW]
        uploaded = any(t.workflow_state.uploaded for t in workflows)
        return TagView(tag=tag, run_name=run_name, created_at=created_at,
                       status=run.status.value if run else "unknown", workflows=[t.task_id for t in workflows],
                       size=sum(t.spec.artifacts_size or 0 for t in tasks if isinstance(t.spec, JobState)),
                       kind="upload" if uploaded else "run", owner=owner)

    # ------------------------------------------------------------------ uploads

    def record_upload(self, request: RecordUpload, caller: Caller) -> TagView:
        """Record local data that ``dstack artifacts upload`` stored (its files and manifest are in storage) as a
        done run of workflow ``upload`` with one done job, ``upload.0``, whose artifacts are the files, and name it
        with the request's tag. An existing tag or run refuses it, with nothing recorded; a resent request finds
        its run."""
        if not is_valid_name(request.run_name):
            raise RequestRejected(f"invalid run name: {request.run_name!r}")
        if not is_valid_tag(request.tag):
            raise RequestRejected(f"tag {request.tag!r} must be letters, digits, '.', '-' or '_'")
        current = self._store.get_tag(request.tag)
        existing = self._store.get_run(request.run_name)
        if existing is not None and current is not None and current.run_name == request.run_name:  # a resent request
            return self._tag_view(request.tag, request.run_name, current.created_at, current.owner)
        if current is not None:
            raise RequestRejected(f"tag '{request.tag}' names run {current.run_name} already; choose another name, or "
                                  f"`dstack untag {request.tag}` first")
        if existing is not None:
            raise RequestRejected(f"a run named '{request.run_name}' exists already")
        if not request.artifacts or not all(_is_relative_path(path) for path in request.artifacts):
            raise RequestRejected(f"an upload names relative paths, not {request.artifacts!r}")
        now = time.time()
        run = RunRecord(run_name=request.run_name, workflow=UPLOAD_WORKFLOW, status=Status.QUEUED,
                        submitted_at=request.submitted_at, snapshot_id="", project=request.project, owner=caller.name)
        self._flow.create_run(run)
        upload_job = job_id(UPLOAD_WORKFLOW, 0)
        workflow = TaskRecord(run_name=run.run_name, task_id=UPLOAD_WORKFLOW, kind=Kind.WORKFLOW,
                              workflow=UPLOAD_WORKFLOW, status=Status.SUBMITTED, submitted_at=now,
                              spec=WorkflowState(uploaded=True))
        job = TaskRecord(run_name=run.run_name, task_id=upload_job, kind=Kind.JOB, workflow=UPLOAD_WORKFLOW,
                         status=Status.SUBMITTED, submitted_at=now,
                         spec=JobState(job=JobSpec(job_id=upload_job, image="", commands=[],
                                                   artifacts=list(request.artifacts)),
                                       artifacts_size=request.size))
        for task in (workflow, job):
            self._flow.create(task)
        for task in (job, workflow):  # recorded done: the data is stored, nothing runs
            task.started_at = task.finished_at = now
            self._flow.move(task, Status.DONE)
        run.started_at = run.finished_at = now
        self._flow.move_run(run, Status.DONE)
        self._store.set_tag(request.tag, run.run_name, now, caller.name)
        return self._tag_view(request.tag, run.run_name, now, caller.name)

    # ------------------------------------------------------------------ deleting runs

    def delete_runs(self, request: DeleteRuns, caller: Caller) -> DeletedRuns:
        """Forget finished runs, all or none: every run is checked before anything is deleted. Their objects in
        storage are the caller's to delete, after this (a crash in between leaves objects nothing refers to)."""
        problems = []
        names = list(dict.fromkeys(request.run_names))
        for run_name in names:
            run = self._store.get_run(run_name)
            if run is None or not self._visible(caller, run.owner):
                problems.append(f"no run named '{run_name}'")
            elif (refusal := caller.change_refusal(self._owner(run.owner), f"run {run_name}")) is not None:
                problems.append(refusal)
            elif not run.status.finished:
                problems.append(f"{run_name} is {run.status.value}; stop it first (`dstack stop {run_name}`)")
            elif not request.force and self._store.tags_of(run_name):
                named = ", ".join(self._store.tags_of(run_name))
                problems.append(f"{run_name} is tagged ({named}); untag it first, or delete it with --force")
        if problems:
            raise RequestRejected("nothing deleted: " + "; ".join(problems))
        tags: list[str] = []
        for run_name in names:
            tags += self._store.delete_run(run_name, with_tags=request.force)
        return DeletedRuns(run_names=names, tags=tags)

    # ------------------------------------------------------------------ users

    def add_user(self, request: AddUser, caller: Caller) -> UserView:
        """Make a broker account a dstack user with a role (its account and permissions are made on the broker by
        ``dstack users add``, before this)."""
        if not is_valid_name(request.name) or request.role not in ROLES:
            raise RequestRejected(f"a user is named with letters, digits, '-' and '_' and has a role of "
                                  f"{', '.join(ROLES)}; not {request.name!r} ({request.role!r})")
        if request.name == self._service.name:
            raise RequestRejected(f"'{request.name}' is the scheduler's own account, the administrator already")
        self._store.add_user(request.name, request.role, time.time())
        user = self._store.get_user(request.name)
        assert user is not None
        return UserView(name=user.name, role=user.role, added_at=user.added_at)

    def remove_user(self, request: RemoveUser, caller: Caller) -> UserView:
        """Forget a dstack user; what it started goes on, and its runs keep their owner."""
        user = self._store.get_user(request.name)
        if user is None:
            raise RequestRejected(f"no dstack user named '{request.name}'")
        self._store.remove_user(request.name)
        return UserView(name=user.name, role=user.role, added_at=user.added_at)

    def get_users(self, request: GetUsers, caller: Caller) -> UsersAnswer:
        """The scheduler's own account (the administrator) and every dstack user; and who asks."""
        users = [UserView(name=self._service.name, role=Role.ADMIN.value)]
        users += [UserView(name=u.name, role=u.role, added_at=u.added_at) for u in self._store.users()]
        return UsersAnswer(users=users, caller=UserView(name=caller.name, role=caller.role.value),
                           visibility=self._visibility, scheduler=self._service.name)

    # ------------------------------------------------------------------ storage

    def get_storage(self, request: GetStorage, caller: Caller) -> StorageInfo:
        """Where runs store their files, and whether the CLI reaches them through presigned URLs."""
        if self._grants is None:
            raise RequestRejected("this scheduler hands out no storage: set DSTACK_STORAGE_URL for the CLI")
        return self._grants.info()

    def presign_storage(self, request: PresignStorage, caller: Caller) -> PresignedUrls:
        """Presigned URLs for what the caller may touch in storage: all the operations asked, or none."""
        if self._grants is None:
            raise RequestRejected("this scheduler hands out no storage URLs: set DSTACK_STORAGE_URL for the CLI")

        def owner_of(run_name: str) -> Optional[str]:
            run = self._store.get_run(run_name)
            return None if run is None else self._owner(run.owner)
        return self._grants.presign(request.ops, caller, owner_of)

    # ------------------------------------------------------------------ events

    def _from_holder(self, task: TaskRecord, worker_id: Optional[str]) -> bool:
        """Whether an event about ``task`` comes from the worker that claimed it (or the task is claimed by none)."""
        if task.worker_id in (None, worker_id):
            return True
        log.warning("ignored an event of worker %s about %s/%s, which worker %s holds", worker_id, task.run_name,
                    task.task_id, task.worker_id)
        return False

    def task_pulling(self, event: TaskPulling) -> None:
        """A worker pulls the task's image before it starts it: the task is ``pulling`` (and its run running)."""
        task = self._store.get_task(event.run_name, event.task_id)
        if (task is None or task.attempt != event.attempt or task.status is not Status.QUEUED
                or not self._from_holder(task, event.worker_id)):
            return
        task.worker_id = event.worker_id
        self._flow.move(task, Status.PULLING)
        run = self._store.get_run(task.run_name)
        assert run is not None
        self._flow.update_run(run)

    def task_started(self, event: TaskStarted) -> None:
        task = self._store.get_task(event.run_name, event.task_id)
        if task is None or task.kind is Kind.WORKFLOW or not self._from_holder(task, event.worker_id):
            return
        if task.attempt != event.attempt or task.status.finished:
            if task.attempt == event.attempt and task.status.finished:
                self._flow.send_to_worker(event.worker_id, StopTask(event.run_name, event.task_id, event.attempt))
            return
        if task.status is Status.RUNNING:
            return
        task.started_at = time.time()
        task.worker_id, task.hostname, task.ports = event.worker_id, event.endpoint.hostname, event.endpoint.ports
        if event.provider_commit:
            task.spec.provider_commit = event.provider_commit
            workflow = self._store.get_task(task.run_name, task.workflow)
            if workflow is not None:
                workflow.spec.provider_commit = event.provider_commit
                self._flow.save(workflow)
        self._flow.move(task, Status.RUNNING)
        run = self._store.get_run(task.run_name)
        assert run is not None
        if run.stop_requested or self._workflow_stopped(task):
            self._flow.stop(task, abort=run.abort)
        if run.started_at is None:
            run.started_at = task.started_at
        self._flow.update_run(run)
        self._flow.on_started(task)

    def task_finished(self, event: TaskFinished) -> None:
        task = self._store.get_task(event.run_name, event.task_id)
        if (task is None or task.kind is Kind.WORKFLOW or task.attempt != event.attempt or task.status.finished
                or not self._from_holder(task, event.worker_id or task.worker_id)):
            return
        run = self._store.get_run(task.run_name)
        assert run is not None
        status = event.status
        if task.kind is Kind.PROVIDER and status is Status.DONE:
            try:
                jobs = check_job_graph(event.jobs or [])
            except ValueError as e:
                status, event.reason = Status.FAILED, f"the provider's jobs were refused: {e}"
            else:
                if not run.stop_requested and not self._workflow_stopped(task):  # (`dstack stop RUN WORKFLOW`)
                    self._flow.create_jobs(task, jobs)
        if isinstance(task.spec, JobState) and event.artifacts_size is not None:
            task.spec.artifacts_size = event.artifacts_size
        if isinstance(task.spec, JobState):
            task.spec.cached_from = event.cached_from
        if status is Status.FAILED and not event.timed_out and self._flow.retry_later(task, run, event.reason):
            self._flow.update_run(run)
            return
        now = time.time()
        task.exit_code, task.started_at = event.exit_code, task.started_at or now
        self._flow.end(task, status, event.reason, now)
        self._flow.update_run(run)

