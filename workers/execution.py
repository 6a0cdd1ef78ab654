"""One task on a worker: prepare its folder, start its container, watch it, report its end.

Long jobs never hold a broker delivery: the delivery is acknowledged once the container
runs, and a thread per task follows it to the end.

:class:`Execution` is the life cycle every task shares (its folder, saving and loading it,
starting and following its container, logs, stopping, the end it reports); what differs is
in :class:`ProviderExecution` (the provider's container, the jobs it writes to ``jobs.json``
or the reason in ``error.json``) and :class:`JobExecution` (ports, GPUs, secrets, the memory
limit, ``max_duration``, artifacts). :meth:`Execution.for_task` and :meth:`Execution.load`
pick the class for a task.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import logging
import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from dstack import defaults
from dstack.errors import DstackError, ImageNotFound, MessageError, PullFailed
from dstack.jobgraph import check_job_graph
from dstack.logs import LogWriter
from dstack.messages import (
    Allocation,
    Endpoint,
    JobSpec,
    JobTask,
    ProviderSpec,
    ProviderTask,
    RegistryAuth,
    Resources,
    TaskFinished,
    TaskPulling,
    TaskStarted,
    decode,
    encode,
    from_dict,
)
from dstack.names import CONTAINER_LABEL, WORKER_LABEL, container_name, live_routing_key
from dstack.snapshot import materialize_snapshot, safe_join
from dstack.states import Status
from dstack.storage import Storage
from dstack.workers.artifact_sync import ArtifactSyncer
from dstack.workers.artifacts import fetch_inputs
from dstack.workers.cache import JobCache, Lookup
from dstack.workers.images import ImagePuller, UsageRecord, image_missing_under_never
from dstack.workers.ports import PortPool
from dstack.workers.provider_process import ProviderHost, runs_as_process
from dstack.workers.provider_repos import ProviderRepos
from dstack.workers.runtime import Container, ContainerRuntime, ContainerSpec, ExitInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The file in a task's folder that holds the task, written before its delivery is acknowledged.
TASK_FILE = "task.msgpack"
#: Lines of output quoted in the reason of a failed task.
TAIL_LINES = 10
#: Exit code of a container killed by SIGKILL (128 + 9).
SIGKILL_EXIT = 137
#: What a process says when it cannot fork or start a thread (a job at its process limit, ``resources.pids``)
_FORK_FAILED = ("Resource temporarily unavailable", "Cannot fork", "can't start new thread")
#: ``${{ secrets.NAME }}`` in a job's ``registry_auth``
_SECRET = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass
class WorkerContext:
    """What every task on this worker shares."""

    worker_id: str
    hostname: str
    home: Path
    storage: Storage
    runtime: ContainerRuntime
    sdk_bundle: Path
    send_event: Callable[[Any], None]
    #: whether the worker has GPUs (then a job that asks for none is shown none)
    has_gpus: bool
    announce: Callable[[str, str, bytes], None]
    provider_repos: ProviderRepos
    ports: PortPool
    #: environment variables and mounts every container gets (``DSTACK_CONTAINER_ENV``, ``..._MOUNTS``)
    container_env: dict[str, str] = field(default_factory=dict)
    container_mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    #: seconds between two scans of a running job's artifact folders (``DSTACK_ARTIFACT_SYNC_INTERVAL``)
    artifact_sync_interval: float = defaults.ARTIFACT_SYNC_INTERVAL
    #: what runs the built-in providers (``workers/provider_process.py``); made from the bundle when not given
    provider_host: Optional[ProviderHost] = None
    #: when images are pulled for tasks that do not say (``DSTACK_PULL_POLICY``)
    pull_policy: str = defaults.PULL_POLICY
    #: what pulls the tasks' images; made when not given
    images: Optional[ImagePuller] = None

    def __post_init__(self) -> None:
        if self.provider_host is None:
            self.provider_host = ProviderHost(self.sdk_bundle, self.home / "provider-pycache")
        if self.images is None:
            self.images = ImagePuller(self.runtime, UsageRecord(self.home / "images.json"))


@dataclass
class Execution(abc.ABC):
    """A task this worker has started (or is starting). Build one with :meth:`for_task`."""

    task: Any  # ProviderTask | JobTask, as the subclass says
    context: WorkerContext
    #: what the task holds on this worker (none for a task found after a restart)
    allocation: Optional[Allocation] = None
    container: Optional[Container] = None
    stop_requested: bool = False
    abort: bool = False
    stop_failure: str = ""
    timed_out: bool = False
    #: the job's ports, those it asked any port for (0) chosen by this worker
    ports: list[int] = field(default_factory=list)
    #: called once the task's end is reported, before its container is removed and its folder deleted
    #: (the worker frees its slot then: what is left to do uses none of what the task held)
    on_reported: Optional[Callable[[], None]] = field(default=None, repr=False, compare=False)
    #: whether this task pulled its image (it is pulled once, whatever the policy)
    pulled: bool = False

    @staticmethod
    def for_task(task: Any, context: WorkerContext) -> Execution:
        """The execution of ``task``: a :class:`ProviderExecution` or a :class:`JobExecution`.

        Raises:
            MessageError: ``task`` is no task.
        """
        if isinstance(task, JobTask):
            return JobExecution(task=task, context=context)
        if isinstance(task, ProviderTask):
            return ProviderExecution(task=task, context=context)
        raise MessageError(f"a {type(task).__name__} is no task")

    @property
    def key(self) -> str:
        return f"{self.task.run_name}/{self.task.task_id}/{self.task.attempt}"

    @property
    def folder(self) -> Path:
        return self.context.home / "tasks" / self.task.run_name / f"{self.task.task_id}-{self.task.attempt}"

    @property
    def workdir(self) -> Path:
        return self.folder / "work"

    @property
    def needs(self) -> Resources:
        """What the task holds on the worker while it runs."""
        return Resources()

    @property
    def max_duration_s(self) -> Optional[float]:
        """How long the task may run; ``None``: no limit."""
        return None

    @property
    def image(self) -> Optional[str]:
        """The image the task's container runs (``None``: none known before it starts)."""
        return None

    @property
    def pull_policy(self) -> str:
        return self.context.pull_policy

    # -------------------------------------------------------------- save, load

    def save(self) -> None:
        """Keep the task in its folder, so that a restarted worker knows what it had taken (a job without its
        secrets: they stay in memory)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        task = dataclasses.replace(self.task, secrets={}) if isinstance(self.task, JobTask) else self.task
        (self.folder / TASK_FILE).write_bytes(encode(task))

    @staticmethod
    def load(path: Path, context: WorkerContext) -> Execution:
        """The execution of the task saved at ``path`` (see :meth:`save`)."""
        return Execution.for_task(decode(path.read_bytes()), context)

    # -------------------------------------------------------------- start

    def reuse(self) -> bool:
        """Before :meth:`start`: end the task with the result of an earlier identical one, reported and
        cleaned up, without starting anything (job caching). Returns whether it did."""
        return False

    def start(self) -> None:
        """Prepare the task's files and start its container (or find the one started before).

        Raises:
            DstackError: the task cannot start; the message says why.
        """
        if not self.workdir.exists():
            scratch = self.folder / "work.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            materialize_snapshot(self.context.storage, self.task.snapshot_id, scratch,
                                 cache=self.context.home / "blobs", manifests=self.context.home / "snapshots")
            fetch_inputs(self.context.storage, self.task.inputs, scratch)
            self._prepare(scratch)
            scratch.rename(self.workdir)
        self.container, commit = self._launch()
        endpoint = Endpoint(hostname=self.context.hostname, ports=self.container.published_ports(self.ports))
        self.context.send_event(TaskStarted(run_name=self.task.run_name, task_id=self.task.task_id,
                                            attempt=self.task.attempt, worker_id=self.context.worker_id,
                                            endpoint=endpoint, provider_commit=commit))

    def _prepare(self, folder: Path) -> None:
        """Complete the task's project folder, its inputs in place, before it becomes the task's ``workdir``."""
        return None

    def _launch(self) -> tuple[Container, Optional[str]]:
        """Start the task's container (or find the one started before); the commit of its provider's
        repository when it comes from another one."""
        spec, commit = self._container_spec()
        return self._with_image(spec.image, lambda: self.context.runtime.start(spec)), commit

    def _with_image(self, image: str, action: Callable[[], T]) -> T:
        """``action()``, which needs ``image``, with the image pulled first under the ``always`` policy, or when
        ``action`` finds it missing under ``if-not-present`` (nothing is asked of Docker before: a present
        image costs no call).

        Raises:
            ImageNotFound: the image is missing and the policy is ``never``.
            PullFailed: the pull failed (the registry has no such image, refused, cannot be reached...).
            PullCancelled: the task was stopped while it waited for its image.
        """
        policy = self.pull_policy
        if policy == "always" and not self.pulled:
            self._pull(image)
        try:
            result = action()
        except ImageNotFound:
            if policy == "never":
                raise image_missing_under_never(image) from None
            if self.pulled:
                raise
            self._pull(image)
            result = action()
        return result

    def _pull(self, image: str) -> None:
        """Pull ``image`` (or wait for its pull by another task), the task ``pulling`` meanwhile and the pull's
        progress in its log."""
        assert self.context.images is not None
        self.context.send_event(TaskPulling(run_name=self.task.run_name, task_id=self.task.task_id,
                                            attempt=self.task.attempt, worker_id=self.context.worker_id, image=image))
        writer = self._log_writer()
        try:
            self.context.images.pull(image, self._registry_auth(), lambda line: writer.add_lines([f"dstack: {line}"]),
                                     cancelled=lambda: self.stop_requested, on_wait=writer.flush_if_due)
            self.pulled = True
        finally:
            try:
                writer.close()
            except DstackError as e:
                log.warning("task %s: the lines of its pull are not stored: %s", self.key, e)

    def _registry_auth(self) -> Optional[tuple[str, str]]:
        """The credentials the task brings for its image's registry (``None``: the worker's own)."""
        return None

    @abc.abstractmethod
    def _container_spec(self) -> tuple[ContainerSpec, Optional[str]]:
        """The task's container, and the commit of the provider's repository when it comes from another one."""

    def _hidden(self) -> Iterable[str]:
        """Values never shown in the task's logs."""
        return ()

    @property
    def _container_name(self) -> str:
        return container_name(self.task.run_name, self.task.task_id, self.task.attempt)

    def _log_writer(self) -> LogWriter:
        return LogWriter(self.context.storage, self.task.run_name, self.task.task_id, self._announce,
                         hide=self._hidden())

    def _announce(self, exchange: str, run_name: str, body: bytes) -> None:
        """Publish a live notification of the task's run, routed by its owner and name."""
        self.context.announce(exchange, live_routing_key(self.task.owner, run_name), body)

    def _base_env(self) -> dict[str, str]:
        """What every task's container gets; ``HOSTNAME`` is early dstack's name of ``JOB_HOSTNAME``."""
        return {**self.context.container_env, "RUN_NAME": self.task.run_name, "JOB_ID": self.task.task_id,
                "JOB_ATTEMPT": str(self.task.attempt),
                "PYTHONUNBUFFERED": "1", "JOB_HOSTNAME": self.context.hostname, "HOSTNAME": self.context.hostname}

    def _mounts(self) -> list[tuple[str, str, bool]]:
        """The task's project folder, and what the worker mounts into every container."""
        return [(str(self.workdir), defaults.CONTAINER_WORKDIR, False), *self.context.container_mounts]

    def _labels(self) -> dict[str, str]:
        return {CONTAINER_LABEL: self.key, WORKER_LABEL: self.context.worker_id}

    # -------------------------------------------------------------- follow to the end

    def follow(self) -> None:
        """Ship the logs until the container exits, then upload artifacts and report the end.

        On the way from the container's exit to the reported end (the critical path of a chain of jobs),
        the last log chunk is stored while the exit is read and the artifacts' final sync runs: every line
        is stored before the end is reported (a follower reads storage once the run has ended), in the time
        of the longer of the two. The container is removed and the folder deleted after the report.
        """
        assert self.container is not None
        writer = self._log_writer()
        flusher = _Ticker(writer.flush_if_due)
        self._start_beside()
        limit = self.max_duration_s
        deadline = threading.Timer(limit, self._time_up) if limit else None
        if deadline is not None:
            deadline.daemon = True
            deadline.start()
        closing: Optional[_Background] = None
        try:
            for data in self.container.logs():
                writer.feed(data)
            closing = _Background(writer.close, name=f"{self.key} logs")
            exit_info = self.container.wait()
        except BaseException:
            if closing is not None:
                closing.wait()  # no chunk is stored beside those of the task's abandon()
            raise
        finally:
            flusher.stop()
            self._stop_beside()
            if deadline is not None:
                deadline.cancel()
        assert closing is not None
        try:
            finished = self._end(exit_info, writer, closing)
        finally:
            closing.wait()  # after an error too: no chunk is stored beside those of the task's abandon()
        self._ending(finished)
        self._send_end(finished)
        self._reported()
        self.container.remove()
        self._clean_up()

    def _end(self, exit_info: ExitInfo, writer: LogWriter, closing: _Background) -> TaskFinished:
        """How the task ended, its artifacts and logs stored (``closing`` stores the last log chunk)."""
        if exit_info.exit_code != 0:
            closing.result()  # the reason may quote the last lines: read back from storage
        finished = self._outcome(exit_info, writer)
        if not self.abort:
            artifacts_failure = self._upload_artifacts()
            if artifacts_failure and finished.status == Status.DONE:
                finished.status, finished.reason = Status.FAILED, artifacts_failure
        finished.artifacts_size = self._artifacts_size()
        try:
            closing.result()
        except DstackError as e:  # storage out for longer than its retries: the end is reported all the same
            log.warning("task %s: its last log lines are not stored: %s", self.key, e)
            failure = f"storing its logs failed: {e}"
            if finished.status is Status.DONE:
                finished.status, finished.reason = Status.FAILED, failure
            else:
                finished.reason = f"{finished.reason}; {failure}" if finished.reason else failure
            return finished
        if finished.reason and finished.status != Status.DONE:
            writer.add_lines([f"dstack: {self.task.task_id} {finished.status.value}: {finished.reason}"])
            writer.close()
        return finished

    def abandon(self, reason: str, status: Status = Status.FAILED) -> None:
        """Report the task failed (or ``status``) for ``reason`` (it did not start, or its end was not seen),
        remove its container if there is one, and clean up."""
        writer = self._log_writer()
        writer.add_lines([f"dstack: {self.task.task_id} {status.value}: {reason}"])
        try:
            writer.close()
        except DstackError as e:  # storage is out: the end is reported all the same
            log.warning("task %s: its failure is not in its logs: %s", self.key, e)
        self._send_end(TaskFinished(run_name=self.task.run_name, task_id=self.task.task_id,
                                    attempt=self.task.attempt, status=status, reason=reason))
        self._reported()
        if self.container is not None:
            self.container.remove()
        self._clean_up()

    def _send_end(self, finished: TaskFinished) -> None:
        """Report the task's end, as this worker's (the scheduler ignores an end from another than the claimer)."""
        finished.worker_id = self.context.worker_id
        self.context.send_event(finished)

    def _reported(self) -> None:
        """The task's end is reported: tell :attr:`on_reported`, once."""
        callback, self.on_reported = self.on_reported, None
        if callback is not None:
            callback()

    def _clean_up(self) -> None:
        self.context.ports.give_back(self.ports)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _outcome(self, exit_info: ExitInfo, writer: LogWriter) -> TaskFinished:
        """How the task ended: stopped, past its time limit, out of memory, failed, or done."""
        finished = TaskFinished(run_name=self.task.run_name, task_id=self.task.task_id,
                                attempt=self.task.attempt, status=Status.DONE, exit_code=exit_info.exit_code)
        if self.stop_requested:
            finished.status, finished.reason = (Status.FAILED, self.stop_failure) if self.stop_failure else (
                Status.STOPPED, "stopped by request")
        elif self.timed_out:
            finished.status, finished.timed_out = Status.FAILED, True
            finished.reason = f"ran longer than its max_duration of {self.max_duration_s:g} s; stopped"
        elif exit_info.oom_killed:
            limit = self._memory_limit_mib()
            finished.status = Status.FAILED
            finished.reason = f"out of memory (the limit is {limit} MiB)" if limit else "out of memory"
        elif exit_info.exit_code != 0:
            finished.status = Status.FAILED
            tail = writer.tail(TAIL_LINES)
            finished.reason = self._error_reason() or (
                f"exit code {exit_info.exit_code}{self._hint(tail)}; last lines:\n" + "\n".join(tail))
        else:
            self._succeeded(finished)
        return finished

    def _memory_limit_mib(self) -> Optional[int]:
        """The container's memory limit, named when it runs out of memory."""
        return None

    def _error_reason(self) -> Optional[str]:
        """The reason the task gave for failing, if it gave one (else its last lines are quoted)."""
        return None

    def _hint(self, last_lines: list[str]) -> str:
        """What the last lines of a failed task suggest about why, to put beside its exit code."""
        return ""

    def _succeeded(self, finished: TaskFinished) -> None:
        """Complete ``finished`` of a container that exited with 0 (it may turn it into a failure)."""
        return None

    def _upload_artifacts(self) -> Optional[str]:
        """Store what the task leaves; returns the reason of a failure, or ``None``."""
        return None

    def _artifacts_size(self) -> Optional[int]:
        """The bytes of the task's stored artifacts (``None``: it keeps none)."""
        return None

    def _start_beside(self) -> None:
        """Start what runs beside the container while it runs (a job's artifact sync)."""
        return None

    def _stop_beside(self) -> None:
        """Stop what :meth:`_start_beside` started, once the container has exited."""
        return None

    def _ending(self, finished: TaskFinished) -> None:
        """Called with the task's end once its artifacts and logs are stored, before it is reported."""
        return None

    # -------------------------------------------------------------- stop

    def _time_up(self) -> None:
        log.info("task %s ran past its max_duration; stopping it", self.key)
        self.timed_out = True
        if self.container is not None:
            self.container.stop(defaults.STOP_GRACE_PERIOD)

    def stop(self, abort: bool, failure: str = "") -> None:
        """Stop the container: SIGTERM, then SIGKILL after the grace period. The task ends
        stopped, or failed for ``failure`` when it is given (then its retry policy applies)."""
        self.stop_requested, self.abort = True, self.abort or abort
        self.stop_failure = self.stop_failure or failure
        if self.container is not None:
            self.container.stop(defaults.STOP_GRACE_PERIOD)


@dataclass
class ProviderExecution(Execution):
    """A workflow's provider: it runs with the SDK mounted and writes the workflow's jobs to
    ``jobs.json`` (or why it cannot to ``error.json``) in its ``io`` folder."""

    task: ProviderTask

    @property
    def io(self) -> Path:
        """The folder the provider reads the workflow from and writes its result to."""
        return self.folder / "io"

    @property
    def image(self) -> Optional[str]:
        provider = self.task.provider
        if provider is None or runs_as_process(provider.name, provider.builtin, self.task.provider_repo is not None):
            return None
        return provider.image

    def _launch(self) -> tuple[Container, Optional[str]]:
        """A built-in provider runs as a process of the worker (``workers/provider_process.py``); any other
        in a container."""
        task = self.task
        if task.provider is None or not runs_as_process(task.provider.name, task.provider.builtin,
                                                        task.provider_repo is not None):
            return super()._launch()
        self._write_workflow(task.provider)
        env = {**self._base_env(), "WORKFLOW_NAME": task.workflow, "DSTACK_PROJECT_DIR": str(self.workdir),
               "DSTACK_WORKFLOW_FILE": str(self.io / "workflow.json"), "DSTACK_PROVIDER_OUTPUT": str(self.io),
               **task.env}
        assert self.context.provider_host is not None
        process = self.context.provider_host.start_provider(
            task.provider.name, workdir=self.workdir, env=env, output=self.io / "output",
            container_name=self._container_name, labels=self._labels())
        return process, None

    def _write_workflow(self, provider: ProviderSpec) -> None:
        """The workflow as the SDK reads it, in the provider's ``io`` folder."""
        task = self.task
        self.io.mkdir(parents=True, exist_ok=True)
        (self.io / "workflow.json").write_text(json.dumps(
            {"name": task.workflow, "provider": provider.name, "run_name": task.run_name, "data": task.data,
             "provider_args": task.args}))

    def _container_spec(self) -> tuple[ContainerSpec, Optional[str]]:
        """A provider of another repository runs in a read-only checkout of it, with the project at
        ``/workflow`` (``DSTACK_PROJECT_DIR``); a provider of the project runs in the project."""
        task = self.task
        inside = defaults.CONTAINER_DSTACK_DIR
        mounts = self._mounts()
        working_dir, commit, provider = defaults.CONTAINER_WORKDIR, None, task.provider
        if task.provider_repo is not None:
            checkout, commit, provider = self.context.provider_repos.resolve(task.provider_repo)
            working_dir = f"{inside}/provider"
            mounts.append((str(checkout), working_dir, True))
        assert provider is not None
        self._write_workflow(provider)
        mounts += [(str(self.io), f"{inside}/io", False), (str(self.context.sdk_bundle), f"{inside}/sdk", True)]
        env = {**self._base_env(), "WORKFLOW_NAME": task.workflow, "DSTACK_PROJECT_DIR": defaults.CONTAINER_WORKDIR,
               "DSTACK_WORKFLOW_FILE": f"{inside}/io/workflow.json", "DSTACK_PROVIDER_OUTPUT": f"{inside}/io",
               "PYTHONUSERBASE": f"{inside}/sdk", **task.env}
        spec = ContainerSpec(
            name=self._container_name, image=provider.image,
            script=" && ".join(provider.commands), env=env, working_dir=working_dir, mounts=mounts,
            labels=self._labels())
        return spec, commit

    def _error_reason(self) -> Optional[str]:
        path = self.io / "error.json"
        if path.exists():
            return str(json.loads(path.read_text()).get("reason", ""))
        return None

    def _succeeded(self, finished: TaskFinished) -> None:
        try:
            finished.jobs = self._jobs()
        except (OSError, ValueError, KeyError, TypeError) as e:
            finished.status, finished.reason = Status.FAILED, str(e)

    def _jobs(self) -> list[JobSpec]:
        """The jobs the provider created: ``jobs.json`` holds them in the wire form of
        :class:`~dstack.messages.JobSpec`, as the SDK's ``jobs_to_dicts`` writes them.

        Raises:
            ValueError: there is no ``jobs.json``, or its jobs are malformed or do not form a valid graph.
        """
        path = self.io / "jobs.json"
        if not path.exists():
            raise ValueError("the provider exited without creating jobs (does it call provider.start()?)")
        try:
            jobs = [from_dict(JobSpec, raw) for raw in json.loads(path.read_text())["jobs"]]
        except MessageError as e:
            raise ValueError(f"the provider's jobs.json is malformed: {e}") from None
        return check_job_graph(jobs)


@dataclass
class JobExecution(Execution):
    """One job: its ports, GPUs, secrets, resource limits, time limit and artifacts."""

    task: JobTask
    #: keeps the job's artifact folders in storage while it runs (none: the job has no artifacts)
    syncer: Optional[ArtifactSyncer] = field(default=None, repr=False, compare=False)
    #: its cache key and what the cache had (job caching), once looked up
    cache: Optional[Lookup] = None

    def __post_init__(self) -> None:
        if self.task.job.artifacts:
            self.syncer = ArtifactSyncer(self.context.storage, self.task.run_name, self.task.task_id,
                                         self.task.job.artifacts, self.workdir, self.context.artifact_sync_interval)

    @property
    def needs(self) -> Resources:
        return self.task.job.resources

    @property
    def image(self) -> Optional[str]:
        return self.task.job.image

    @property
    def pull_policy(self) -> str:
        return self.task.job.pull_policy or self.context.pull_policy

    def _registry_auth(self) -> Optional[tuple[str, str]]:
        """The job's ``registry_auth``, its ``${{ secrets.NAME }}`` replaced by the secrets' values.

        Raises:
            DstackError: it names a secret that is not set.
        """
        auth = self.task.job.registry_auth
        if auth is None:
            return None

        def value(text: str, what: str) -> str:
            def secret(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in self.task.secrets:
                    raise DstackError(f"registry_auth.{what} names the secret {name}, which is not set; set it with "
                                      f"`dstack secrets set {name}`")
                return self.task.secrets[name]
            return _SECRET.sub(secret, text)
        return value(auth.username, "username"), value(auth.password, "password")

    def reuse(self) -> bool:
        """With job caching, report the job done with the artifacts and logs of an earlier identical job
        when the cache has one (see :mod:`dstack.workers.cache`); else keep its key, to store its result
        under it if it ends done. A key that cannot be made (an image or input missing) is no hit: the
        job's start says what is wrong."""
        if not self.task.cache or self.stop_requested or self.workdir.exists():
            return False
        cache = JobCache(self.context.storage, self.context.runtime, self._announce)
        try:
            self.cache = self._with_image(self.task.job.image, lambda: cache.reuse(self.task))
        except PullFailed:
            raise  # the job cannot run either
        except DstackError as e:
            log.warning("job %s: no cache lookup (%s); running it", self.key, e)
            return False
        if self.cache.finished is None:
            return False
        log.info("job %s reuses the result of %s (job caching)", self.key, self.cache.finished.cached_from)
        self._send_end(self.cache.finished)
        self._clean_up()
        return True

    def _ending(self, finished: TaskFinished) -> None:
        """A job with caching that ended done is the cache's entry for its key from now on."""
        if self.cache is None or finished.status is not Status.DONE or self.abort:
            return
        try:
            JobCache(self.context.storage, self.context.runtime).remember(self.task, self.cache)
        except DstackError as e:
            log.warning("job %s: its result was not stored in the cache: %s", self.key, e)

    @property
    def max_duration_s(self) -> Optional[float]:
        return self.task.job.max_duration_s

    def _hidden(self) -> Iterable[str]:
        auth = self.task.job.registry_auth
        return [*self.task.secrets.values(), *([auth.password] if auth else [])]

    def _container_spec(self) -> tuple[ContainerSpec, Optional[str]]:
        task = self.task
        job = task.job
        for artifact in job.artifacts:  # they exist before the commands start
            safe_join(self.workdir, artifact).mkdir(parents=True, exist_ok=True)
        workdir = defaults.CONTAINER_WORKDIR
        if job.working_dir:
            safe_join(self.workdir, job.working_dir).mkdir(parents=True, exist_ok=True)
            workdir = f"{workdir}/{job.working_dir}"
        if not self.ports:
            chosen = iter(self.context.ports.take(job.ports.count(0)))
            self.ports = [port or next(chosen) for port in job.ports]
        env = {**self._base_env(), **_ports_env("JOB_PORT_", self.ports), **_ports_env("PORT_", self.ports)}
        if task.master:
            env["MASTER_JOB_HOSTNAME"] = task.master.hostname
            env.update(_ports_env("MASTER_JOB_PORT_", task.master.ports))
        if job.master:
            env["MASTER_JOB_ID"] = job.master
        env.update({name: value for name, value in task.secrets.items() if name not in _secrets_in(job.registry_auth)})
        env.update(job.env)
        gpu_ids = self.allocation.gpu_ids if self.allocation else []
        if gpu_ids or self.context.has_gpus:  # "void": the NVIDIA runtime shows the job no GPU
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids) or "void"
        resources = job.resources
        spec = ContainerSpec(
            name=self._container_name, image=job.image,
            script=" && ".join(job.commands), env=env, working_dir=workdir,
            mounts=self._mounts(), labels=self._labels(), ports=self.ports, cpu=resources.cpu,
            memory_mib=resources.memory_mib, shm_size_mib=resources.shm_size_mib, gpu_ids=gpu_ids,
            address=self.context.hostname, pids=resources.pids or defaults.JOB_PIDS_LIMIT)
        return spec, None

    def _memory_limit_mib(self) -> Optional[int]:
        return self.task.job.resources.memory_mib

    def _hint(self, last_lines: list[str]) -> str:
        if any(marker in line for line in last_lines for marker in _FORK_FAILED):
            limit = self.task.job.resources.pids or defaults.JOB_PIDS_LIMIT
            return f" (it may have hit its process limit of {limit}: resources.pids)"
        return ""

    def _prepare(self, folder: Path) -> None:
        """A job that resumes (a retry, a restart without ``--clear``) gets its own last stored artifacts,
        over its inputs; a later attempt that does not resume starts with none stored.

        Raises:
            DstackError: storage failed, or a stored file is missing.
        """
        if self.syncer is None:
            return
        if self.task.resume:
            count = self.syncer.restore(folder)
            log.info("task %s resumes with its %d stored artifact files", self.key, count)
        elif self.task.attempt > 1:
            freed = self.syncer.clear()
            log.info("task %s starts from nothing: %d bytes of stored artifacts deleted", self.key, freed)

    def _start_beside(self) -> None:
        if self.syncer is not None:
            self.syncer.start()

    def _stop_beside(self) -> None:
        if self.syncer is not None:
            self.syncer.stop()

    def _upload_artifacts(self) -> Optional[str]:
        """The final sync of the job's artifact folders: every new or changed file, streaming; the stored
        files that are gone deleted; then the manifest, complete."""
        if self.syncer is None:
            return None
        try:
            self.syncer.finish()
        except (DstackError, OSError) as e:
            return f"uploading artifacts failed: {e}"
        return None

    def _artifacts_size(self) -> Optional[int]:
        return self.syncer.stored_bytes if self.syncer is not None else None


def _secrets_in(auth: Optional[RegistryAuth]) -> set[str]:
    """The secrets a ``registry_auth`` names: they serve the pull only, and stay out of the job's environment."""
    return set(_SECRET.findall(f"{auth.username} {auth.password}")) if auth else set()


def _ports_env(prefix: str, ports: list[int]) -> dict[str, str]:
    """``{PREFIX0: port, PREFIX1: ...}``: a job's ports as environment variables (``PORT_<i>`` is early
    dstack's name of ``JOB_PORT_<i>``)."""
    return {f"{prefix}{i}": str(port) for i, port in enumerate(ports)}


class _Background:
    """Runs ``action`` once in a thread; :meth:`result` waits for it and raises what it raised."""

    def __init__(self, action: Callable[[], None], name: str) -> None:
        self._action = action
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._action()
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class _Ticker:
    """Calls ``action`` every ``LOG_FLUSH_INTERVAL`` seconds in a thread until stopped."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._stopped = threading.Event()
        self._action = action
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(defaults.LOG_FLUSH_INTERVAL):
            try:
                self._action()
            except Exception:
                log.exception("flushing logs failed; will retry")

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
