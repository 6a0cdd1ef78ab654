"""One task on a worker: prepare its folder, start its container, watch it, report its end.

Long jobs never hold a broker delivery: the delivery is acknowledged once the container
runs, and a thread per task follows it to the end.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from dstack import defaults
from dstack.errors import DstackError, ObjectNotFound, StorageError
from dstack.jobgraph import check_job_graph
from dstack.logs import LogWriter
from dstack.messages import (Allocation, AppSpec, Endpoint, JobSpec, JobTask, ProviderTask, Resources, RetryPolicy,
                             TaskFinished, TaskStarted, decode, encode)
from dstack.names import CONTAINER_LABEL, WORKER_LABEL, artifact_key, artifacts_manifest_key, container_name
from dstack.snapshot import materialize_snapshot, safe_join
from dstack.storage import Storage
from dstack.storage.retry import with_retries
from dstack.workers.ports import PortPool
from dstack.workers.provider_repos import ProviderRepos
from dstack.workers.runtime import Container, ContainerRuntime, ContainerSpec, ExitInfo

log = logging.getLogger(__name__)

#: The file in a task's folder that holds the task, written before its delivery is acknowledged.
TASK_FILE = "task.msgpack"
#: Lines of output quoted in the reason of a failed task.
TAIL_LINES = 10
#: Exit code of a container killed by SIGKILL (128 + 9).
SIGKILL_EXIT = 137


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
    container_env: Dict[str, str] = field(default_factory=dict)
    container_mounts: List[Tuple[str, str, bool]] = field(default_factory=list)


@dataclass
class Execution:
    """A task this worker has started (or is starting)."""

    task: Any  # ProviderTask | JobTask
    context: WorkerContext
    #: what the task holds on this worker (none for a task found after a restart)
    allocation: Optional[Allocation] = None
    container: Optional[Container] = None
    stop_requested: bool = False
    abort: bool = False
    stop_failure: str = ""
    timed_out: bool = False
    #: the job's ports, those it asked any port for (0) chosen by this worker
    ports: List[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.task.run_name}/{self.task.task_id}/{self.task.attempt}"

    @property
    def folder(self) -> Path:
        return self.context.home / "tasks" / self.task.run_name / f"{self.task.task_id}-{self.task.attempt}"

    @property
    def workdir(self) -> Path:
        return self.folder / "work"

    # -------------------------------------------------------------- save, load

    def save(self) -> None:
        """Keep the task in its folder, so that a restarted worker knows what it had taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / TASK_FILE).write_bytes(encode(self.task))

    @classmethod
    def load(cls, path: Path, context: WorkerContext) -> "Execution":
        return cls(task=decode(path.read_bytes()), context=context)

    # -------------------------------------------------------------- start

    def start(self) -> None:
        """Prepare the task's files and start its container (or find the one started before).

        Raises:
            DstackError: the task cannot start; the message says why.
        """
        if not self.workdir.exists():
            scratch = self.folder / "work.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            materialize_snapshot(self.context.storage, self.task.snapshot_id, scratch,
                                 cache=self.context.home / "blobs")
            self._fetch_inputs(scratch)
            scratch.rename(self.workdir)
        commit = None
        if isinstance(self.task, ProviderTask):
            spec, commit = self._provider_spec()
        else:
            spec = self._job_spec()
        self.container = self.context.runtime.start(spec)
        endpoint = Endpoint(hostname=self.context.hostname, ports=self.container.published_ports(self.ports))
        self.context.send_event(TaskStarted(run_name=self.task.run_name, task_id=self.task.task_id,
                                            attempt=self.task.attempt, worker_id=self.context.worker_id,
                                            endpoint=endpoint, provider_commit=commit))

    def _fetch_inputs(self, workdir: Path) -> None:
        """Put the artifacts of the workflows this one depends on at their paths in ``workdir``."""
        storage = self.context.storage
        for ref in self.task.inputs:
            try:
                manifest = json.loads(storage.get_bytes(artifacts_manifest_key(ref.run_name, ref.job_id)))
            except ObjectNotFound:
                raise StorageError(f"the artifacts of {ref.job_id} of run {ref.run_name} are not stored "
                                   f"in {storage.url}") from None
            for entry in manifest["files"]:
                storage.get_file(artifact_key(ref.run_name, ref.job_id, entry["path"]),
                                 safe_join(workdir, entry["path"]))

    @property
    def _container_name(self) -> str:
        return container_name(self.task.run_name, self.task.task_id, self.task.attempt)

    def _log_writer(self) -> LogWriter:
        secrets = self.task.secrets.values() if isinstance(self.task, JobTask) else ()
        return LogWriter(self.context.storage, self.task.run_name, self.task.task_id, self.context.announce,
                         hide=secrets)

    def _base_env(self) -> Dict[str, str]:
        return {**self.context.container_env, "RUN_NAME": self.task.run_name, "JOB_ID": self.task.task_id,
                "JOB_ATTEMPT": str(self.task.attempt),
                "PYTHONUNBUFFERED": "1", "JOB_HOSTNAME": self.context.hostname}

    def _mounts(self) -> List[Tuple[str, str, bool]]:
        """The task's project folder, and what the worker mounts into every container."""
        return [(str(self.workdir), defaults.CONTAINER_WORKDIR, False), *self.context.container_mounts]

    def _labels(self) -> Dict[str, str]:
        return {CONTAINER_LABEL: self.key, WORKER_LABEL: self.context.worker_id}

    def _provider_spec(self) -> Tuple[ContainerSpec, Optional[str]]:
        """The provider's container, and the commit of its repository when it comes from another one.

        A provider of another repository runs in a read-only checkout of it, with the project at
        ``/workflow`` (``DSTACK_PROJECT_DIR``); a provider of the project runs in the project.
        """
        task: ProviderTask = self.task
        inside = defaults.CONTAINER_DSTACK_DIR
        mounts = self._mounts()
        working_dir, commit, provider = defaults.CONTAINER_WORKDIR, None, task.provider
        if task.provider_repo is not None:
            checkout, commit, provider = self.context.provider_repos.resolve(task.provider_repo)
            working_dir = f"{inside}/provider"
            mounts.append((str(checkout), working_dir, True))
        assert provider is not None
        io = self.folder / "io"
        io.mkdir(parents=True, exist_ok=True)
        (io / "workflow.json").write_text(json.dumps(
            {"name": task.workflow, "provider": provider.name, "run_name": task.run_name, "data": task.data}))
        mounts += [(str(io), f"{inside}/io", False), (str(self.context.sdk_bundle), f"{inside}/sdk", True)]
        env = {**self._base_env(), "WORKFLOW_NAME": task.workflow, "DSTACK_PROJECT_DIR": defaults.CONTAINER_WORKDIR,
               "DSTACK_WORKFLOW_FILE": f"{inside}/io/workflow.json", "DSTACK_PROVIDER_OUTPUT": f"{inside}/io",
               "PYTHONUSERBASE": f"{inside}/sdk", **task.env}
        spec = ContainerSpec(
            name=self._container_name, image=provider.image,
            script=" && ".join(provider.commands), env=env, working_dir=working_dir, mounts=mounts,
            labels=self._labels())
        return spec, commit

    def _job_spec(self) -> ContainerSpec:
        task: JobTask = self.task
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
        env = {**self._base_env(), **{f"JOB_PORT_{i}": str(p) for i, p in enumerate(self.ports)}}
        if task.master:
            env["MASTER_JOB_HOSTNAME"] = task.master.hostname
            env.update({f"MASTER_JOB_PORT_{i}": str(p) for i, p in enumerate(task.master.ports)})
        env.update(task.secrets)
        env.update(job.env)
        gpu_ids = self.allocation.gpu_ids if self.allocation else []
        if gpu_ids or self.context.has_gpus:  # "void": the NVIDIA runtime shows the job no GPU
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids) or "void"
        resources = job.resources
        return ContainerSpec(
            name=self._container_name, image=job.image,
            script=" && ".join(job.commands), env=env, working_dir=workdir,
            mounts=self._mounts(), labels=self._labels(), ports=self.ports, cpu=resources.cpu,
            memory_mib=resources.memory_mib, shm_size_mib=resources.shm_size_mib, gpu_ids=gpu_ids)

    # -------------------------------------------------------------- follow to the end

    def follow(self) -> None:
        """Ship the logs until the container exits, then upload artifacts and report the end."""
        assert self.container is not None
        writer = self._log_writer()
        flusher = _Ticker(writer.flush_if_due)
        limit = self.task.job.max_duration_s if isinstance(self.task, JobTask) else None
        deadline = threading.Timer(limit, self._time_up) if limit else None
        if deadline is not None:
            deadline.daemon = True
            deadline.start()
        try:
            for data in self.container.logs():
                writer.feed(data)
            exit_info = self.container.wait()
        finally:
            flusher.stop()
            if deadline is not None:
                deadline.cancel()
        finished = self._outcome(exit_info, writer)
        if not self.abort:
            artifacts_failure = self._upload_artifacts()
            if artifacts_failure and finished.status == "done":
                finished.status, finished.reason = "failed", artifacts_failure
        if finished.reason and finished.status != "done":
            writer.add_lines([f"dstack: {self.task.task_id} {finished.status}: {finished.reason}"])
        writer.close()
        self.context.send_event(finished)
        self.container.remove()
        self._clean_up()

    def abandon(self, reason: str) -> None:
        """Report the task failed for ``reason`` (it did not start, or its end was not seen),
        remove its container if there is one, and clean up."""
        writer = self._log_writer()
        writer.add_lines([f"dstack: {self.task.task_id} failed: {reason}"])
        writer.close()
        self.context.send_event(TaskFinished(run_name=self.task.run_name, task_id=self.task.task_id,
                                             attempt=self.task.attempt, status="failed", reason=reason))
        if self.container is not None:
            self.container.remove()
        self._clean_up()

    def _clean_up(self) -> None:
        self.context.ports.give_back(self.ports)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _outcome(self, exit_info: ExitInfo, writer: LogWriter) -> TaskFinished:
        finished = TaskFinished(run_name=self.task.run_name, task_id=self.task.task_id,
                                attempt=self.task.attempt, status="done", exit_code=exit_info.exit_code)
        if self.stop_requested:
            finished.status, finished.reason = ("failed", self.stop_failure) if self.stop_failure else (
                "stopped", "stopped by request")
        elif self.timed_out:
            finished.status, finished.timed_out = "failed", True
            finished.reason = f"ran longer than its max_duration of {self.task.job.max_duration_s:g} s; stopped"
        elif exit_info.oom_killed:
            limit = self.task.job.resources.memory_mib if isinstance(self.task, JobTask) else None
            finished.status = "failed"
            finished.reason = f"out of memory (the limit is {limit} MiB)" if limit else "out of memory"
        elif exit_info.exit_code != 0:
            finished.status = "failed"
            finished.reason = self._error_file() or (
                f"exit code {exit_info.exit_code}; last lines:\n" + "\n".join(writer.tail(TAIL_LINES)))
        elif isinstance(self.task, ProviderTask):
            try:
                finished.jobs = self._provider_jobs()
            except (OSError, ValueError, KeyError, TypeError) as e:
                finished.status, finished.reason = "failed", str(e)
        return finished

    def _error_file(self) -> Optional[str]:
        path = self.folder / "io" / "error.json"
        if isinstance(self.task, ProviderTask) and path.exists():
            return str(json.loads(path.read_text()).get("reason", ""))
        return None

    def _provider_jobs(self) -> List[JobSpec]:
        path = self.folder / "io" / "jobs.json"
        if not path.exists():
            raise ValueError("the provider exited without creating jobs (does it call provider.start()?)")
        raw_jobs = json.loads(path.read_text())["jobs"]
        jobs = [JobSpec(
            job_id=str(i), image=raw["image"], commands=list(raw["commands"]), working_dir=raw["working_dir"],
            ports=list(raw["ports"]), artifacts=list(raw["artifacts"]), resources=Resources(**raw["resources"]),
            depends_on=[str(d) for d in raw["depends_on"]],
            master=None if raw["master"] is None else str(raw["master"]), env=dict(raw["environment"]),
            retry=RetryPolicy(**raw["retry"]) if raw.get("retry") else None, max_duration_s=raw.get("max_duration_s"),
            apps=[AppSpec(**app) for app in raw.get("apps", [])],
        ) for i, raw in enumerate(raw_jobs)]
        return check_job_graph(jobs)

    def _upload_artifacts(self) -> Optional[str]:
        """Upload the job's artifact folders, file by file, streaming; then the manifest.

        Returns the reason of a failure, or ``None``.
        """
        if not isinstance(self.task, JobTask) or not self.task.job.artifacts:
            return None
        run_name, job_id = self.task.run_name, self.task.task_id
        files = []
        try:
            for artifact in self.task.job.artifacts:
                folder = safe_join(self.workdir, artifact)
                for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
                    relative = path.relative_to(self.workdir).as_posix()
                    key = artifact_key(run_name, job_id, relative)
                    with_retries(functools.partial(self.context.storage.put_file, key, path), f"uploading {relative}")
                    files.append({"path": relative, "size": path.stat().st_size})
            manifest = json.dumps({"job_id": job_id, "artifacts": self.task.job.artifacts, "files": files}).encode()
            manifest_key = artifacts_manifest_key(run_name, job_id)  # last: the upload is complete
            with_retries(lambda: self.context.storage.put_bytes(manifest_key, manifest), "storing the manifest")
        except (DstackError, OSError) as e:
            return f"uploading artifacts failed: {e}"
        return None

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
