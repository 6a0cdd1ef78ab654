"""A worker's context on local storage and a fake container runtime: the harness of the worker's unit
tests (``tests/unit/test_worker_execution.py``, ``test_worker_artifact_sync.py``, ``test_job_cache.py``).

The keys written, the events sent and the log chunks announced live are kept to assert on; each test
module adds how it runs a task (followed here, followed in a thread, reused from the cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from dstack.defaults import ARTIFACT_SYNC_INTERVAL
from dstack.logs import merged_lines, stored_chunks
from dstack.messages import ArtifactManifest, JobSpec, JobTask, ProviderSpec, ProviderTask, TaskFinished
from dstack.names import artifacts_manifest_key
from dstack.snapshot import upload_snapshot
from dstack.storage.base import Progress
from dstack.storage.local import LocalStorage
from dstack.workers.execution import Execution, WorkerContext
from dstack.workers.ports import PortPool
from dstack.workers.provider_repos import ProviderRepos
from tests.fakes import FakeRuntime, Script

RUN = "brave-otter-1"


class RecordingStorage(LocalStorage):
    """Local storage that records the keys written (``written``, in order) and the artifact files
    uploaded (``uploaded``), and fails artifact uploads with ``fail_uploads`` when it is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written: list[str] = []
        self.uploaded: list[str] = []
        self.fail_uploads: Optional[BaseException] = None

    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        if self.fail_uploads is not None and "/artifacts/" in key:
            raise self.fail_uploads
        super().put_file(key, path, progress)
        self.written.append(key)
        if "/artifacts/" in key:
            self.uploaded.append(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        super().put_bytes(key, data)
        self.written.append(key)


class WorkerHarness:
    """A worker ``context`` on recording storage and a fake runtime, with a project (``train.py``)
    uploaded as ``snapshot_id``; events and live chunks are kept."""

    def __init__(self, tmp_path: Path, artifact_sync_interval: float = ARTIFACT_SYNC_INTERVAL) -> None:
        self.storage = RecordingStorage(tmp_path / "storage")
        self.runtime = FakeRuntime()
        self.events: list[Any] = []
        self.announced: list[tuple[str, str, bytes]] = []
        self.project = tmp_path / "project"
        self.project.mkdir()
        (self.project / "train.py").write_text("print('hi')\n")
        self.snapshot_id = self.snapshot()
        self.context = WorkerContext(
            worker_id="w1", hostname="host-a", home=tmp_path / "home", storage=self.storage, runtime=self.runtime,
            sdk_bundle=tmp_path / "sdk", send_event=self.events.append, has_gpus=False,
            announce=lambda *item: self.announced.append(item), provider_repos=ProviderRepos(tmp_path / "repos"),
            ports=PortPool(), artifact_sync_interval=artifact_sync_interval)

    def snapshot(self) -> str:
        """Upload the project as it is now; the snapshot's id."""
        return upload_snapshot(self.project, self.storage)[0]

    def job(self, task_id: str = "train.0", script: Optional[Script] = None, *, run: str = RUN, attempt: int = 1,
            resume: bool = False, cache: bool = False, snapshot_id: str = "", **job: Any) -> JobTask:
        """A job task (``job``: its JobSpec's fields); ``script``: what its container does."""
        if script is not None:
            self.runtime.scripts[task_id] = script
        options: dict[str, Any] = {"image": "alpine", "commands": ["python train.py"], **job}
        return JobTask(run_name=run, attempt=attempt, job=JobSpec(job_id=task_id, **options),
                       snapshot_id=snapshot_id or self.snapshot_id, resume=resume, cache=cache)

    def provider(self, script: Optional[Script] = None) -> ProviderTask:
        if script is not None:
            self.runtime.scripts["train.provider"] = script
        return ProviderTask(run_name=RUN, task_id="train.provider", attempt=1, workflow="train", data={"n": 1},
                            snapshot_id=self.snapshot_id,
                            provider=ProviderSpec(name="p", image="python:3.11", commands=["python -m p"]))

    def started(self, task: Any) -> Execution:
        """``task``'s execution, saved in its folder and started (its container, or a built-in provider's process)."""
        execution = Execution.for_task(task, self.context)
        execution.save()
        execution.start()
        return execution

    def finished(self) -> TaskFinished:
        """The last event, a task's end."""
        finished = self.events[-1]
        assert isinstance(finished, TaskFinished)
        return finished

    def log_lines(self, task_id: str = "train.0", run: str = RUN) -> list[str]:
        return [line for _, _, line in merged_lines(stored_chunks(self.storage, run, task_id))]

    def manifest(self, task_id: str = "train.0", run: str = RUN) -> ArtifactManifest:
        return ArtifactManifest.from_json(self.storage.get_bytes(artifacts_manifest_key(run, task_id)))
