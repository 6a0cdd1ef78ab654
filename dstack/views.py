"""The scheduler's replies, typed: what each request gets back, and the live updates of a run.

The scheduler's handlers return these dataclasses; :class:`dstack.rpc.RpcServer` sends them as
plain data (:func:`dstack.messages.plain`: ``dataclasses.asdict`` with enums as their values) and
:meth:`dstack.rpc.RpcClient.call` rebuilds them with :func:`decode_reply`. Their plain form is
also the stable, scriptable JSON of ``dstack status --json``, ``dstack workers --json`` and
``dstack tags --json``: fields are never renamed or reordered, only added.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from dstack.errors import MessageError
from dstack.messages import (
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
    PresignStorage,
    RecordUpload,
    RemoveUser,
    Resources,
    RestartRun,
    SetSecret,
    StopRun,
    SubmitRun,
    TagRun,
    UntagRun,
    WorkerLeaving,
    WorkerReport,
    from_dict,
)
from dstack.states import Status


@dataclass
class AppView:
    """A job's web application, with its URL while the job runs (else ``None``)."""

    name: str
    url: Optional[str] = None


@dataclass
class JobView:
    """A provider run or a job of a run."""

    job_id: str
    kind: str  #: ``provider`` or ``job``
    workflow: str
    status: Status
    exit_code: Optional[int] = None
    reason: str = ""
    attempt: int = 1
    worker: Optional[str] = None
    hostname: Optional[str] = None
    ports: list[int] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    master: Optional[str] = None
    image: Optional[str] = None
    #: what the job asks for (a :class:`~dstack.messages.Resources` as a map; empty for a provider)
    resources: dict[str, Any] = field(default_factory=dict)
    provider_commit: Optional[str] = None
    apps: list[AppView] = field(default_factory=list)
    submitted_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    #: bytes of its stored artifacts (``None``: none stored yet)
    artifacts_size: Optional[int] = None
    #: ``RUN/JOB`` whose result it reused (job caching), else empty
    cached_from: str = ""

    @property
    def needs(self) -> Resources:
        return from_dict(Resources, self.resources)


@dataclass
class WorkflowView:
    """A workflow of a run: done when its provider and all its jobs are done."""

    name: str
    status: Status
    reason: str = ""
    depends_on: list[str] = field(default_factory=list)
    #: ``WORKFLOW:TAG`` entries of its ``depends-on``
    tagged: list[str] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    provider_commit: Optional[str] = None
    submitted_at: Optional[float] = None
    finished_at: Optional[float] = None


@dataclass
class RunView:
    """A run with its workflows (dependencies first) and its jobs (each workflow's provider first)."""

    run_name: str
    workflow: str
    status: Status
    reason: str = ""
    project: str = ""
    submitted_at: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    #: the variables its target workflow got
    variables: dict[str, Any] = field(default_factory=dict)
    workflows: list[WorkflowView] = field(default_factory=list)
    jobs: list[JobView] = field(default_factory=list)
    #: the tags that name it
    tags: list[str] = field(default_factory=list)
    #: bytes of the artifacts its jobs stored
    artifacts_size: int = 0
    #: the dstack user who submitted it
    owner: str = ""


@dataclass
class RunUpdate:
    """A change of a run, published on ``dstack.updates`` (routed by ``OWNER.RUN``): the run (without
    its workflows and jobs) and the jobs that changed."""

    run: RunView
    jobs: list[JobView] = field(default_factory=list)


@dataclass
class WorkerView(WorkerReport):
    """A live worker: its latest report, and when it came."""

    seen_at: float = 0.0


@dataclass
class TagView:
    """A tag, the run it names, and the workflows that run holds."""

    tag: str
    run_name: str
    created_at: float
    #: the run's status, or ``unknown`` if the run is gone
    status: str
    workflows: list[str] = field(default_factory=list)
    #: bytes of the artifacts of the run it names
    size: int = 0
    #: ``run`` (a run's tag) or ``upload`` (local data, ``dstack artifacts upload``)
    kind: str = "run"
    #: the dstack user who made the tag
    owner: str = ""


@dataclass
class TagAnswer:
    """The reply to ``TagRun``: the tag and the run it names now."""

    tag: str
    run_name: str


@dataclass
class UntagAnswer:
    """The reply to ``UntagRun``: the tag removed."""

    tag: str


@dataclass
class DeletedRuns:
    """The reply to ``DeleteRuns``: the runs forgotten, and the tags removed with them."""

    run_names: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class SecretView:
    """A secret's name and when it was last set; never its value."""

    name: str
    updated_at: float
    #: the dstack user it belongs to; empty for a team secret
    owner: str = ""


@dataclass
class SecretAnswer:
    """The reply to ``SetSecret`` and ``DeleteSecret``: the secret's name (never its value)."""

    name: str


@dataclass
class ClaimAnswer:
    """Whether a worker may start the task it claimed; if not, why. A job's secrets come with the grant, to
    the worker that holds it only: they travel in no task message and land in no task folder."""

    granted: bool
    reason: str = ""
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass
class OpenQueue:
    """A task queue that holds tasks, and what its tasks need."""

    queue: str
    needs: Resources


@dataclass
class TaskRef:
    """One attempt of a task."""

    run_name: str
    task_id: str
    attempt: int


@dataclass
class ReportAnswer:
    """The reply to a ``WorkerReport``: the queues that hold tasks, and the tasks the worker holds
    that are not its own anymore (it was counted lost, or they ended), to stop."""

    queues: list[OpenQueue] = field(default_factory=list)
    stop: list[TaskRef] = field(default_factory=list)


@dataclass
class Acknowledged:
    """The reply to a request that has nothing to say back."""


@dataclass
class UserView:
    """A dstack user: a RabbitMQ account and its role."""

    name: str
    role: str
    added_at: float = 0.0


@dataclass
class UsersAnswer:
    """The reply to ``GetUsers``: every user, and the caller with the role it acts in."""

    users: list[UserView]
    caller: UserView
    #: the scheduler's ``DSTACK_VISIBILITY`` (``all`` or ``own``): ``dstack users add`` and ``sync`` give users'
    #: broker accounts the topic permissions it needs (:func:`dstack.accounts.topic_permissions_for`)
    visibility: str = "all"
    #: the scheduler's own broker account, the administrator (listed first among ``users``)
    scheduler: str = ""


@dataclass
class StorageInfo:
    """The reply to ``GetStorage``: the storage runs use, and whether the CLI reaches it through presigned URLs
    (S3; the URL then carries no credentials) or opens it itself (a local folder on the scheduler's machine)."""

    url: str
    presigned: bool = False


@dataclass
class PresignedUrls:
    """The reply to ``PresignStorage``: one URL per operation asked, in order, valid for ``expires_in`` seconds."""

    urls: list[str]
    expires_in: float


#: What each request gets back.
REPLY_TYPES: dict[type, Any] = {
    SubmitRun: RunView, GetRuns: list[RunView], StopRun: RunView, RestartRun: RunView,
    ClaimTask: ClaimAnswer, TagRun: TagAnswer, UntagRun: UntagAnswer, GetTags: list[TagView],
    WorkerReport: ReportAnswer, WorkerLeaving: Acknowledged, GetWorkers: list[WorkerView],
    SetSecret: SecretAnswer, DeleteSecret: SecretAnswer, GetSecrets: list[SecretView],
    DeleteRuns: DeletedRuns, RecordUpload: TagView, AddUser: UserView, RemoveUser: UserView,
    GetUsers: UsersAnswer, GetStorage: StorageInfo, PresignStorage: PresignedUrls,
}


def decode_reply(request: Any, result: Any) -> Any:
    """The typed reply to ``request`` from its plain form (what :func:`~dstack.messages.plain` made).

    Raises:
        MessageError: the result does not have the shape of the reply.
    """
    reply_type = REPLY_TYPES.get(type(request))
    if reply_type is None:
        return result
    if typing.get_origin(reply_type) is list:
        if not isinstance(result, list):
            raise MessageError(f"the reply to {type(request).__name__}: expected a list")
        (item,) = typing.get_args(reply_type)
        return [from_dict(item, r) for r in result]
    return from_dict(reply_type, result)
