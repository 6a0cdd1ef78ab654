"""Typed messages between the CLI, the scheduler and the workers, and their wire encoding.

Every message is a dataclass. On the wire it is a msgpack map holding its fields plus
``type`` (the class name) and ``v`` (the protocol version); :func:`decode` refuses other
versions, unknown types and wrong shapes with :class:`~dstack.errors.MessageError`.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

import msgpack

from dstack import defaults
from dstack.errors import MessageError
from dstack.states import Status

T = TypeVar("T")


# ----------------------------------------------------------------------------- data


@dataclass
class Resources:
    """What a job asks for. ``None`` means no limit."""

    cpu: Optional[float] = None
    memory_mib: Optional[int] = None
    shm_size_mib: Optional[int] = None
    gpu_count: int = 0
    gpu_name: Optional[str] = None
    gpu_memory_mib: Optional[int] = None
    #: the job may run on an interruptible (spot) machine, as early dstack's ``resources`` asked; shown by
    #: ``dstack status``, it names no queue (``names.task_queue``) and changes no placement
    interruptible: bool = False
    #: the most processes the job's container may run at once (``None``: the worker's default); a limit, not a
    #: need: it names no queue and changes no placement
    pids: Optional[int] = None


@dataclass
class RetryPolicy:
    """Run a failed job again up to ``limit`` more times, waiting ``backoff_s`` before the first
    retry and twice as long before each next one."""

    limit: int = 0
    backoff_s: float = 10.0


@dataclass
class GpuInfo:
    """One GPU of a worker: its device id (as Docker and the NVIDIA runtime take it), model and memory."""

    id: str
    name: str
    memory_mib: int


@dataclass
class Inventory:
    """What a worker has for tasks."""

    cpu: float
    memory_mib: int
    gpus: list[GpuInfo] = field(default_factory=list)


@dataclass
class ProviderSpec:
    """A provider from ``.dstack/providers.yaml``, or a built-in one: the container that creates a
    workflow's jobs."""

    name: str
    image: str
    commands: list[str]
    #: one of dstack's built-in providers (``dstack/providers/``), run from the worker's own copy of them
    builtin: bool = False


@dataclass
class ProviderRepo:
    """A provider defined in another git repository's ``.dstack/providers.yaml``."""

    url: str
    name: str


@dataclass
class ArtifactRef:
    """The artifacts of one job of some run, to be put into a task's folder before it starts.

    Each file keeps its path from the project root, below ``target`` (a folder relative to the
    task's project folder; ``""``: the project folder itself). Where two inputs hold the same
    file, the later one in the task's list wins; folders merge.
    """

    run_name: str
    job_id: str
    target: str = ""


#: Where a workflow's ``runs`` inputs go, in the project folder of its provider and jobs.
RUN_INPUTS_FOLDER = ".dstack/runs"


def run_input_folder(entry: str) -> str:
    """The folder, relative to the project folder, of the artifacts of ``entry`` of a workflow's
    :attr:`WorkflowSpec.runs`: ``.dstack/runs/RUN``, or ``.dstack/runs/WORKFLOW@TAG`` for ``WORKFLOW:TAG``
    (a colon would end the name in TensorBoard's ``--logdir_spec``)."""
    return f"{RUN_INPUTS_FOLDER}/{entry.replace(':', '@')}"


@dataclass
class ArtifactFile:
    """One stored artifact file: its path relative to the project root, its size in bytes and the SHA-256
    of its content (hex; empty in manifests written before checksums were kept)."""

    path: str
    size: int
    sha256: str = ""


@dataclass
class ArtifactManifest:
    """The list of a job's stored artifacts, kept as JSON at ``runs/RUN/manifests/JOB.json``.

    The worker stores it after every file, so a job without a manifest has no complete upload;
    the inputs of later tasks and ``dstack artifacts`` are read from it.
    """

    job_id: str
    #: the job's artifact folders
    artifacts: list[str] = field(default_factory=list)
    files: list[ArtifactFile] = field(default_factory=list)
    #: False while the job runs (the files synced so far); True once written at the job's end
    complete: bool = True

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ArtifactManifest:
        """Raises: ValueError (not JSON) or MessageError (not a manifest)."""
        return from_dict(cls, json.loads(data))


@dataclass
class TagRef:
    """``WORKFLOW:TAG`` in ``depends-on``: the artifacts of ``workflow`` in the run tagged ``tag``; ``:TAG``
    (``workflow`` empty): of every job of that run that left artifacts (an upload's files)."""

    workflow: str
    tag: str


@dataclass
class WorkflowSpec:
    """One workflow of a run, resolved by the CLI: variables substituted, dependencies named.

    Exactly one of ``provider`` and ``provider_repo`` is set.
    """

    name: str
    data: dict[str, Any]
    provider: Optional[ProviderSpec] = None
    provider_repo: Optional[ProviderRepo] = None
    depends_on: list[str] = field(default_factory=list)
    tagged: list[TagRef] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    #: what its jobs get unless they say otherwise
    retry: Optional[RetryPolicy] = None
    max_duration_s: Optional[float] = None
    #: finished runs (names, or ``WORKFLOW:TAG``) whose artifacts its provider and jobs start with, each
    #: in its own folder (:func:`run_input_folder`); nothing of them runs again (a built-in provider's ``runs``)
    runs: list[str] = field(default_factory=list)
    #: job caching for this workflow's jobs (``cache:`` in the workflow, ``dstack run --cache/--no-cache``)
    cache: bool = False
    #: the arguments ``dstack run`` gave a custom provider (``self.provider_args`` in the SDK)
    provider_args: list[str] = field(default_factory=list)
    #: what its jobs get unless they say otherwise: credentials for their images' registry, when to pull them
    registry_auth: Optional[RegistryAuth] = None
    pull_policy: Optional[str] = None


@dataclass
class AppSpec:
    """A web application a job serves on its port number ``port_index``."""

    name: str
    port_index: int = 0
    url_path: str = ""
    url_query_params: dict[str, str] = field(default_factory=dict)


@dataclass
class RegistryAuth:
    """Credentials for the registry of a job's image. Either value may be ``${{ secrets.NAME }}``: the worker
    puts the secret in at pull time, and that secret is then kept out of the job's environment."""

    username: str
    password: str


@dataclass
class JobSpec:
    """One job, as a provider created it (ids already resolved)."""

    job_id: str
    image: str
    commands: list[str]
    working_dir: str = ""
    ports: list[int] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    depends_on: list[str] = field(default_factory=list)
    master: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)
    retry: Optional[RetryPolicy] = None
    max_duration_s: Optional[float] = None
    apps: list[AppSpec] = field(default_factory=list)
    #: when the worker pulls the image: ``if-not-present``, ``always`` or ``never``; ``None``: the worker's policy
    pull_policy: Optional[str] = None
    registry_auth: Optional[RegistryAuth] = None


@dataclass
class Endpoint:
    """Where a running task can be reached: a host and its published ports, in the job's order."""

    hostname: str
    ports: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- tasks


@dataclass
class ProviderTask:
    """Scheduler -> worker: run a workflow's provider to create its jobs."""

    run_name: str
    task_id: str
    attempt: int
    workflow: str
    data: dict[str, Any]
    snapshot_id: str
    provider: Optional[ProviderSpec] = None
    provider_repo: Optional[ProviderRepo] = None
    env: dict[str, str] = field(default_factory=dict)
    inputs: list[ArtifactRef] = field(default_factory=list)
    #: the arguments ``dstack run`` gave the provider (``self.provider_args`` in the SDK)
    args: list[str] = field(default_factory=list)
    #: the dstack user whose run it is (its live notifications are routed by it)
    owner: str = ""


@dataclass
class JobTask:
    """Scheduler -> worker: run one job."""

    run_name: str
    attempt: int
    job: JobSpec
    snapshot_id: str
    master: Optional[Endpoint] = None
    inputs: list[ArtifactRef] = field(default_factory=list)
    #: start with the job's own last synced artifacts in place (a retry, or a restart without ``--clear``)
    resume: bool = False
    #: reuse the result of an earlier identical job (job caching; the workflow's ``cache``)
    cache: bool = False
    #: environment variables whose values are never shown (``dstack secrets set``); never in the message from
    #: the scheduler: the worker fills them in from the answer to its claim and keeps them in memory only
    secrets: dict[str, str] = field(default_factory=dict)
    #: the dstack user whose run it is (its live notifications are routed by it)
    owner: str = ""

    @property
    def task_id(self) -> str:
        return self.job.job_id


@dataclass
class StopTask:
    """Scheduler -> the worker running a task: stop it (SIGTERM, then SIGKILL after the grace period)."""

    run_name: str
    task_id: str
    attempt: int
    abort: bool = False


@dataclass
class QueueOpened:
    """Scheduler -> every live worker: the task queue ``queue`` of tasks needing ``needs`` holds tasks now."""

    queue: str
    needs: Resources


# ----------------------------------------------------------------------------- events


@dataclass
class TaskStarted:
    """Worker -> scheduler: the task's container is running."""

    run_name: str
    task_id: str
    attempt: int
    worker_id: str
    endpoint: Endpoint
    provider_commit: Optional[str] = None


@dataclass
class TaskPulling:
    """Worker -> scheduler: the worker took the task and pulls its image before it starts."""

    run_name: str
    task_id: str
    attempt: int
    worker_id: str
    image: str


@dataclass
class TaskFinished:
    """Worker -> scheduler: the task's container ended and its artifacts are uploaded.

    ``status`` is done, failed or stopped. A provider task that is done carries
    every job it created in ``jobs``: they are recorded all together or not at all.
    """

    run_name: str
    task_id: str
    attempt: int
    status: Status
    exit_code: Optional[int] = None
    reason: str = ""
    jobs: Optional[list[JobSpec]] = None
    #: it failed because it ran past its ``max_duration`` (and is not retried)
    timed_out: bool = False
    #: the bytes of the job's stored artifacts (``None``: a provider, or none stored)
    artifacts_size: Optional[int] = None
    #: ``RUN/JOB`` of the earlier job whose result this one reused (job caching), else empty
    cached_from: str = ""
    #: the worker that ran it (empty from a worker older than users): the scheduler ignores an end reported by
    #: another worker than the one that claimed the task
    worker_id: str = ""


# ----------------------------------------------------------------------------- requests


@dataclass
class SubmitRun:
    """CLI -> scheduler: record a run of ``workflow`` and of the ``workflows`` it needs (itself
    included), and enqueue the providers that wait for nothing."""

    run_name: str
    workflow: str
    workflows: list[WorkflowSpec]
    snapshot_id: str
    submitted_at: float
    project: str = ""


@dataclass
class RestartRun:
    """CLI -> scheduler: run the failed and stopped parts of a finished run again (of one
    workflow and what depends on it, if ``workflow`` is set)."""

    run_name: str
    workflow: Optional[str] = None
    #: start the restarted jobs from nothing, not from their last synced artifacts
    clear: bool = False


@dataclass
class TagRun:
    """CLI -> scheduler: name a run, so that ``depends-on: [WORKFLOW:TAG]`` can use its artifacts."""

    run_name: str
    tag: str


@dataclass
class UntagRun:
    tag: str


@dataclass
class GetTags:
    """CLI -> scheduler: every tag with its run."""


#: The workflow name of a run that holds local data stored by ``dstack artifacts upload``; its one job is
#: ``upload.0``, whose artifacts are the files uploaded.
UPLOAD_WORKFLOW = "upload"


@dataclass
class RecordUpload:
    """CLI -> scheduler: local data is stored as the artifacts of job ``upload.0`` of run ``run_name`` (its files
    and manifest are in storage already); record that run as done, with one job, and name it ``tag``. Refused,
    with nothing recorded, when the tag or the run exists already (a resent request finds its run)."""

    run_name: str
    tag: str
    #: the top-level paths uploaded (relative to the project folder), the job's artifact folders
    artifacts: list[str]
    #: bytes of the files uploaded
    size: int
    submitted_at: float
    #: the folder it was uploaded from
    project: str = ""


@dataclass
class GetRuns:
    """CLI -> scheduler: the runs (all, or the one named), newest first."""

    run_name: Optional[str] = None
    #: how many of the newest runs (``None``: every run)
    limit: Optional[int] = 50
    #: only the runs of this user (``dstack status --mine``)
    owner: Optional[str] = None


@dataclass
class StopRun:
    """CLI -> scheduler: stop every part of a run (of ``workflow`` and what depends on it, if set)."""

    run_name: str
    abort: bool = False
    workflow: Optional[str] = None


@dataclass
class DeleteRuns:
    """CLI -> scheduler: forget finished runs (their tasks, and with ``force`` the tags that name them). All or
    nothing: an unknown or unfinished run, or a tagged one without ``force``, refuses the request. The CLI then
    deletes their objects in storage (``runs/RUN/``)."""

    run_names: list[str]
    force: bool = False


@dataclass
class SetSecret:
    """CLI -> scheduler: keep ``value`` as the caller's secret ``name`` (with ``team``, the team's: admins only); the
    jobs of the runs of its owner (of everyone's, for a team secret) get it as an environment variable."""

    name: str
    value: str
    team: bool = False

    def __repr__(self) -> str:  # never shown, not even in a traceback
        return f"SetSecret(name={self.name!r}, value='***')"


@dataclass
class DeleteSecret:
    """CLI -> scheduler: delete the caller's secret ``name`` (with ``team``, the team's: admins only)."""

    name: str
    team: bool = False


@dataclass
class GetSecrets:
    """CLI -> scheduler: the names of the secrets (never their values)."""


@dataclass
class ClaimTask:
    """Worker -> scheduler: may this worker start this task now? Guards against redelivery."""

    run_name: str
    task_id: str
    attempt: int
    worker_id: str


@dataclass
class Allocation:
    """What one task holds on its worker: what it asked for, and the GPUs it got."""

    run_name: str
    task_id: str
    attempt: int
    needs: Resources
    gpu_ids: list[str] = field(default_factory=list)


@dataclass
class WorkerReport:
    """Worker -> scheduler, when it starts and then every heartbeat interval: what it has, and
    what its tasks hold. The reply names the task queues that hold tasks, and the tasks the
    worker holds that are not its own anymore, to stop:
    ``{"queues": [{"queue": name, "needs": Resources as a map}], "stop": [{run_name, task_id, attempt}]}``."""

    worker_id: str
    host: str
    resources: Inventory
    slots: int
    in_use: list[Allocation]
    started_at: float
    #: bytes free on the disk of the worker's Docker images (``None``: the worker cannot see it)
    disk_free: Optional[int] = None


@dataclass
class WorkerLeaving:
    """Worker -> scheduler: it stops; it is no longer live."""

    worker_id: str


@dataclass
class GetWorkers:
    """CLI -> scheduler: the live workers, with what they have and what is in use."""


#: The roles of dstack users: what a broker account may do (:mod:`dstack.accounts`) and ask the scheduler.
ROLES = ("user", "admin", "worker")


@dataclass
class AddUser:
    """Admin -> scheduler: ``name``, a RabbitMQ account made for it already, is a dstack user with ``role``
    (one of :data:`ROLES`); a user added again gets the new role."""

    name: str
    role: str = "user"


@dataclass
class RemoveUser:
    """Admin -> scheduler: ``name`` is no dstack user any more; what it started goes on."""

    name: str


@dataclass
class GetUsers:
    """CLI -> scheduler: the dstack users and their roles, and who asks."""


@dataclass
class GetStorage:
    """CLI -> scheduler: where runs store their files, and whether the CLI reaches them through presigned URLs
    (:class:`PresignStorage`) rather than with credentials of its own."""


@dataclass
class StorageOp:
    """One storage operation a CLI asks a presigned URL for."""

    #: ``get``, ``head``, ``put``, ``list`` or ``delete``
    action: str
    #: the object's key; for ``list``, the prefix
    key: str
    #: for ``list``: where the previous page ended (S3's continuation token)
    continuation: str = ""
    #: for ``put``: the SHA-256 of the content (hex), which the storage then checks
    sha256: str = ""


@dataclass
class PresignStorage:
    """CLI -> scheduler: presigned URLs for ``ops``, each checked against what the caller may touch; all
    or nothing."""

    ops: list[StorageOp]


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ProviderTask, JobTask, StopTask, TaskStarted, TaskPulling, TaskFinished,
                SubmitRun, GetRuns, StopRun, ClaimTask, RestartRun, TagRun, UntagRun, GetTags,
                QueueOpened, WorkerReport, WorkerLeaving, GetWorkers, SetSecret, DeleteSecret, GetSecrets,
                DeleteRuns, RecordUpload, AddUser, RemoveUser, GetUsers, GetStorage, PresignStorage)
}


# ----------------------------------------------------------------------------- codec


def to_payload(message: Any) -> dict[str, Any]:
    """The wire form of a message: its fields plus ``type`` and ``v``.

    A field at its default is left out, in nested data classes too: the receiver fills it in. So a field
    that a later release adds reaches an older receiver, which refuses fields it does not know, only where
    it is used, and the parts of a fleet can be upgraded one at a time.
    """
    payload: dict[str, Any] = _plain(message, _set_fields)
    payload["type"] = type(message).__name__
    payload["v"] = defaults.PROTOCOL_VERSION
    return payload


def plain(value: Any) -> Any:
    """Plain data (maps, lists, text, numbers) for a dataclass, an enum, or a list or map of them:
    :func:`dataclasses.asdict`, with every enum as its value. :func:`from_dict` reverses it."""
    return _plain(value, _all_fields)


def _plain(value: Any, fields_of: Callable[[Any], Iterator[tuple[str, Any]]]) -> Any:
    """Plain data for ``value``, a data class's fields as ``fields_of`` gives them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(item, fields_of) for name, item in fields_of(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v, fields_of) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, fields_of) for v in value]
    return value


def _all_fields(value: Any) -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(value):
        yield f.name, getattr(value, f.name)


def _set_fields(value: Any) -> Iterator[tuple[str, Any]]:
    """The fields that do not hold their default: an empty list or map, or a data class as its factory makes
    it, counts as the default."""
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.default is not dataclasses.MISSING and item == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and (
                not item if isinstance(item, (list, dict)) else item == f.default_factory()):
            continue
        yield f.name, item


def from_payload(payload: Any, expected: Optional[type[T]] = None) -> T:
    """Rebuild the message a payload describes.

    Raises:
        MessageError: the version, type or shape is wrong (or not ``expected``).
    """
    if not isinstance(payload, dict):
        raise MessageError("a message must be a map")
    if payload.get("v") != defaults.PROTOCOL_VERSION:
        raise MessageError(f"message version {payload.get('v')!r} is not {defaults.PROTOCOL_VERSION}")
    cls = MESSAGE_TYPES.get(str(payload.get("type")))
    if cls is None:
        raise MessageError(f"unknown message type {payload.get('type')!r}")
    if expected is not None and cls is not expected:
        raise MessageError(f"expected a {expected.__name__}, got a {cls.__name__}")
    fields = {k: v for k, v in payload.items() if k not in ("type", "v")}
    return _build(cls, fields, cls.__name__)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass (a message or a part of one) from :func:`dataclasses.asdict` output.

    Raises:
        MessageError: the shape is wrong.
    """
    return _build(cls, data, cls.__name__)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise MessageError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected a map")
        _, val_tp = typing.get_args(tp)
        return {str(k): _build(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MessageError(f"{where}: expected a map")
        hints, names = _fields_of(tp)
        unknown = set(value) - names
        if unknown:
            raise MessageError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
        except TypeError as e:
            raise MessageError(f"{where}: {e}") from None
    if isinstance(tp, enum.EnumMeta):
        try:
            return tp(value)
        except ValueError:
            raise MessageError(f"{where}: {value!r} is not one of {[m.value for m in typing.cast(Any, tp)]}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise MessageError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


@functools.cache
def _fields_of(tp: type) -> tuple[dict[str, Any], frozenset[str]]:
    """The resolved type hints and the field names of the dataclass ``tp``: resolved once per class, since
    evaluating the hints (strings here) took most of the time of decoding a long reply."""
    return typing.get_type_hints(tp), frozenset(f.name for f in dataclasses.fields(tp))


def pack(data: Any) -> bytes:
    """msgpack-encode plain data."""
    return msgpack.packb(data, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """msgpack-decode plain data, refusing more than ``MAX_MESSAGE_BYTES``."""
    if len(data) > defaults.MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes is over the limit of {defaults.MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise MessageError(f"not a msgpack message: {e}") from None


def encode(message: Any) -> bytes:
    """A message's wire bytes."""
    return pack(to_payload(message))


def decode(data: bytes, expected: Optional[type[T]] = None) -> T:
    """The message in ``data`` (see :func:`from_payload`)."""
    return from_payload(unpack(data), expected)
