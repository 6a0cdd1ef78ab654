"""Records of runs and tasks (a provider run, a job, or a workflow record), as the scheduler keeps them.

What a task is about depends on its kind, and is typed: :class:`ProviderState`, :class:`JobState`
or :class:`WorkflowState`, in :attr:`TaskRecord.spec`. Statuses are in :mod:`dstack.states`.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union
from urllib.parse import urlencode

from dstack.messages import ArtifactRef, JobSpec, ProviderRepo, ProviderSpec, RegistryAuth, RetryPolicy, TagRef
from dstack.names import DEFAULT_TASK_QUEUE
from dstack.states import Status
from dstack.views import AppView, JobView, RunView, WorkflowView


class Kind(str, enum.Enum):
    """What a task record stands for."""

    PROVIDER = "provider"  #: the container that creates a workflow's jobs
    JOB = "job"            #: a job a provider created
    WORKFLOW = "workflow"  #: no container: done when its provider and all its jobs are done


@dataclass
class ProviderState:
    """A workflow's provider: what it runs, with what."""

    #: the workflow as the provider reads it (``/dstack/io/workflow.json``)
    data: dict[str, Any]
    provider: Optional[ProviderSpec] = None
    provider_repo: Optional[ProviderRepo] = None
    #: the artifacts it starts with, fixed when it is enqueued; its jobs get them too
    inputs: list[ArtifactRef] = field(default_factory=list)
    #: the commit of a provider from another repository, once it started
    provider_commit: Optional[str] = None
    #: the arguments ``dstack run`` gave it (``self.provider_args`` in the SDK)
    args: list[str] = field(default_factory=list)


@dataclass
class JobState:
    """A job its provider created, and its retries."""

    job: JobSpec
    #: the artifacts it starts with: its workflow's inputs, then those of the jobs it depends on
    #: (later ones win a path); fixed when it is created, so every attempt gets the same
    inputs: list[ArtifactRef] = field(default_factory=list)
    #: retries made since it was submitted (or restarted)
    retries: int = 0
    #: when its next attempt may start, while it is retrying
    retry_at: Optional[float] = None
    provider_commit: Optional[str] = None
    #: bytes of its stored artifacts, as its last attempt reported them
    artifacts_size: Optional[int] = None
    #: ``RUN/JOB`` whose result it reused (job caching), else empty
    cached_from: str = ""
    #: its next attempt starts with its own last synced artifacts (a retry, or a restart without ``--clear``);
    #: a first attempt never does
    resume: bool = False
    #: it may reuse the result of an earlier identical job (job caching: its workflow's ``cache``, and it is
    #: no master or follower of another job)
    cache: bool = False


@dataclass
class WorkflowState:
    """A workflow of the run: what it depends on, and what its jobs get unless they say otherwise."""

    depends_on: list[str] = field(default_factory=list)
    tagged: list[TagRef] = field(default_factory=list)
    #: the artifacts of the tagged runs it depends on
    tag_inputs: list[ArtifactRef] = field(default_factory=list)
    #: the artifacts of the finished runs it names in ``runs``, each in its own folder
    run_inputs: list[ArtifactRef] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    retry: Optional[RetryPolicy] = None
    max_duration_s: Optional[float] = None
    provider_commit: Optional[str] = None
    #: job caching for its jobs (``cache:``, ``dstack run --cache/--no-cache``)
    cache: bool = False
    registry_auth: Optional[RegistryAuth] = None
    pull_policy: Optional[str] = None
    #: local data stored by ``dstack artifacts upload``: recorded done, nothing ran
    uploaded: bool = False


#: What a task is about, by its kind.
TaskSpec = Union[ProviderState, JobState, WorkflowState]
SPEC_TYPES: dict[Kind, type] = {Kind.PROVIDER: ProviderState, Kind.JOB: JobState, Kind.WORKFLOW: WorkflowState}


@dataclass
class TaskRecord:
    """A provider run, a job or a workflow record, as the scheduler keeps it."""

    run_name: str
    task_id: str
    kind: Kind
    workflow: str
    status: Status
    spec: TaskSpec
    attempt: int = 1
    depends_on: list[str] = field(default_factory=list)
    deps_left: int = 0
    master: Optional[str] = None
    worker_id: Optional[str] = None
    hostname: Optional[str] = None
    ports: list[int] = field(default_factory=list)
    exit_code: Optional[int] = None
    reason: str = ""
    submitted_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    #: the task queue it is (or was last) put on
    queue: str = DEFAULT_TASK_QUEUE

    @property
    def provider_state(self) -> ProviderState:
        assert isinstance(self.spec, ProviderState), self.task_id
        return self.spec

    @property
    def job_state(self) -> JobState:
        assert isinstance(self.spec, JobState), self.task_id
        return self.spec

    @property
    def workflow_state(self) -> WorkflowState:
        assert isinstance(self.spec, WorkflowState), self.task_id
        return self.spec

    @property
    def job_spec(self) -> Optional[JobSpec]:
        """The job, if this is one."""
        return self.spec.job if isinstance(self.spec, JobState) else None

    def new_attempt(self) -> None:
        """Forget the last attempt (its worker, host, ports, times, exit code and reason) before
        another one; a job or provider gets the next attempt number (a workflow record has none)."""
        if self.kind is not Kind.WORKFLOW:
            self.attempt += 1
        self.worker_id = self.hostname = self.started_at = self.finished_at = self.exit_code = None
        self.ports, self.reason = [], ""

    def job_view(self) -> JobView:
        """The view of a provider run or a job (``dstack status --json``)."""
        job = self.job_spec
        provider = self.spec.provider if isinstance(self.spec, ProviderState) else None
        image = job.image if job else provider.image if provider else None
        return JobView(
            job_id=self.task_id, kind=self.kind.value, workflow=self.workflow, status=self.status,
            exit_code=self.exit_code, reason=self.reason, attempt=self.attempt, worker=self.worker_id,
            hostname=self.hostname, ports=self.ports, depends_on=self.depends_on, master=self.master, image=image,
            resources=_plain_resources(job), provider_commit=self.spec.provider_commit, apps=self._apps(),
            submitted_at=self.submitted_at, started_at=self.started_at, finished_at=self.finished_at,
            artifacts_size=self.spec.artifacts_size if isinstance(self.spec, JobState) else None,
            cached_from=self.spec.cached_from if isinstance(self.spec, JobState) else "")

    def workflow_view(self) -> WorkflowView:
        """The view of a workflow record."""
        state = self.workflow_state
        return WorkflowView(
            name=self.task_id, status=self.status, reason=self.reason, depends_on=state.depends_on,
            tagged=[f"{t.workflow}:{t.tag}" for t in state.tagged], variables=state.variables,
            provider_commit=state.provider_commit, submitted_at=self.submitted_at, finished_at=self.finished_at)

    def _apps(self) -> list[AppView]:
        """The job's web applications, each with its URL while the job runs (else ``None``)."""
        apps = []
        for app in self.job_spec.apps if self.job_spec else []:
            url = None
            if self.status is Status.RUNNING and self.hostname and app.port_index < len(self.ports):
                query = urlencode(app.url_query_params or {})
                url = (f"http://{self.hostname}:{self.ports[app.port_index]}{app.url_path or '/'}"
                       + (f"?{query}" if query else ""))
            apps.append(AppView(name=app.name, url=url))
        return apps


def _plain_resources(job: Optional[JobSpec]) -> dict[str, Any]:
    return asdict(job.resources) if job else {}


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
    #: the dstack user who submitted it (empty: before dstack had users; the administrator's)
    owner: str = ""

    def view(self, tasks: list[TaskRecord], tags: Optional[list[str]] = None) -> RunView:
        """The run, its workflows (with the variables they got), its jobs, the ``tags`` that name it and the
        bytes of its stored artifacts."""
        workflows = [t.workflow_view() for t in tasks if t.kind is Kind.WORKFLOW]
        order = {w.name: i for i, w in enumerate(workflows)}  # dependencies first, as submitted
        target = next((w for w in workflows if w.name == self.workflow), None)
        size = sum(t.spec.artifacts_size or 0 for t in tasks if isinstance(t.spec, JobState))
        return RunView(
            tags=list(tags or []), artifacts_size=size, owner=self.owner,
            run_name=self.run_name, workflow=self.workflow, status=self.status, reason=self.reason,
            project=self.project, submitted_at=self.submitted_at, started_at=self.started_at,
            finished_at=self.finished_at, variables=target.variables if target else {}, workflows=workflows,
            jobs=[t.job_view() for t in sorted((t for t in tasks if t.kind is not Kind.WORKFLOW),
                                               key=lambda t: (order.get(t.workflow, 0), t.kind is not Kind.PROVIDER))])
