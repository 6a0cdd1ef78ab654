"""A job's artifacts on a worker with a fake container runtime: synced while the container runs, put back
when the job resumes (a retry, a restart), deleted when a later attempt starts from nothing."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from dstack.messages import ArtifactRef, JobTask, TaskFinished
from dstack.names import artifact_key, artifacts_manifest_key
from dstack.states import Status
from dstack.workers.artifacts import upload_artifacts
from dstack.workers.execution import Execution
from dstack.workers.runtime import ContainerSpec
from tests.fakes import Script, workdir
from tests.worker_harness import RUN, WorkerHarness

JOB = "train.0"


class Worker(WorkerHarness):
    """The worker harness, following a task in a thread (the fixture's syncs every 50 ms)."""

    def task(self, attempt: int = 1, resume: bool = False, script: Optional[Script] = None) -> JobTask:
        return self.job(JOB, script, attempt=attempt, resume=resume, artifacts=["out"])

    def run(self, task: JobTask, while_running: Optional[Callable[[Execution], None]] = None) -> TaskFinished:
        execution = Execution.for_task(task, self.context)
        execution.start()
        follower = threading.Thread(target=execution.follow)
        follower.start()
        if while_running is not None:
            while_running(execution)
        follower.join()
        return self.finished()


@pytest.fixture
def w(tmp_path: Path) -> Worker:
    return Worker(tmp_path, artifact_sync_interval=0.05)


def writes(files: dict[str, str], age: float = 0.0) -> Callable[[ContainerSpec], None]:
    """An ``on_start`` that writes ``files`` into the job's folder (``age``: their mtime that long ago)."""
    def write(spec: ContainerSpec) -> None:
        for path, text in files.items():
            target = workdir(spec) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            if age:
                os.utime(target, (time.time() - age,) * 2)
    return write


def seen_files(into: dict[str, str]) -> Callable[[ContainerSpec], None]:
    """An ``on_start`` that keeps what the job finds under ``out/`` when it starts."""
    def look(spec: ContainerSpec) -> None:
        folder = workdir(spec) / "out"
        into.update({p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()})
    return look


def wait_for(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_artifacts_are_synced_while_the_container_runs_and_completed_at_its_end(w: Worker) -> None:
    script = Script(until_stopped=True, on_start=writes({"out/step-1": "1"}, age=1.0))
    states: list[bool] = []

    def look_then_stop(execution: Execution) -> None:
        wait_for(lambda: w.storage.exists(artifacts_manifest_key(RUN, JOB)), "a sync while the job runs")
        states.append(w.manifest().complete)
        (execution.workdir / "out" / "step-2").write_text("22")  # written just before the end
        execution.stop(abort=False)

    finished = w.run(w.task(script=script), look_then_stop)
    assert states == [False]
    manifest = w.manifest()
    assert manifest.complete and [f.path for f in manifest.files] == ["out/step-1", "out/step-2"]
    assert finished.status is Status.STOPPED and finished.artifacts_size == 3
    assert sorted(w.storage.uploaded) == [artifact_key(RUN, JOB, "out/step-1"), artifact_key(RUN, JOB, "out/step-2")]


def test_an_aborted_job_keeps_what_was_synced_and_says_how_much(w: Worker) -> None:
    def sync_then_abort(execution: Execution) -> None:
        wait_for(lambda: w.storage.exists(artifacts_manifest_key(RUN, JOB)), "a sync while the job runs")
        (execution.workdir / "out" / "late").write_text("late")
        execution.stop(abort=True)

    finished = w.run(w.task(script=Script(until_stopped=True, on_start=writes({"out/a": "aa"}, age=1.0))),
                     sync_then_abort)
    assert finished.status is Status.STOPPED and finished.artifacts_size == 2
    assert not w.manifest().complete and [f.path for f in w.manifest().files] == ["out/a"]


def test_a_resumed_job_starts_with_its_own_last_synced_artifacts_over_its_inputs(w: Worker, tmp_path: Path) -> None:
    w.run(w.task(script=Script(on_start=writes({"out/step-1": "1", "out/step-2": "2"}))))
    earlier = tmp_path / "earlier"
    (earlier / "out").mkdir(parents=True)
    (earlier / "out" / "step-2").write_text("an input's")
    (earlier / "out" / "input-only").write_text("input")
    upload_artifacts(w.storage, "calm-heron-2", "prepare.0", ["out"], earlier)
    uploads = len(w.storage.uploaded)

    found: dict[str, str] = {}
    task = w.task(attempt=2, resume=True, script=Script(on_start=seen_files(found)))
    task.inputs = [ArtifactRef("calm-heron-2", "prepare.0")]
    finished = w.run(task)
    assert found == {"step-1": "1", "step-2": "2", "input-only": "input"}
    assert finished.status is Status.DONE
    assert w.storage.uploaded[uploads:] == [artifact_key(RUN, JOB, "out/input-only")]  # the rest is stored already


def test_a_later_attempt_that_does_not_resume_starts_from_nothing(w: Worker) -> None:
    w.run(w.task(script=Script(on_start=writes({"out/step-1": "1", "out/step-2": "2"}))))
    found: dict[str, str] = {}

    def look_and_write(spec: ContainerSpec) -> None:
        seen_files(found)(spec)
        writes({"out/fresh": "f"})(spec)

    finished = w.run(w.task(attempt=2, resume=False, script=Script(on_start=look_and_write)))
    assert found == {} and finished.artifacts_size == 1
    assert [f.path for f in w.manifest().files] == ["out/fresh"]
    assert not w.storage.exists(artifact_key(RUN, JOB, "out/step-1"))


def test_a_job_with_nothing_stored_resumes_from_nothing(w: Worker) -> None:
    found: dict[str, str] = {}
    assert w.run(w.task(attempt=2, resume=True, script=Script(on_start=seen_files(found)))).status is Status.DONE
    assert found == {}
