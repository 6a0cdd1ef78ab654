"""The order of what a worker does between a container's exit and the next task (issue 14, items 3 and 6):
the last log chunk is stored (while the exit is read) before the end is reported, the end is reported
before the container is removed and the folder deleted, and the slot is free once the end is reported."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dstack import logs
from dstack.errors import StorageError
from dstack.messages import TaskFinished, TaskStarted
from dstack.states import Status
from dstack.workers.runtime import ExitInfo
from tests.fakes import FakeContainer, FakeRuntime, Script
from tests.worker_harness import WorkerHarness


@pytest.fixture
def h(tmp_path: Path) -> WorkerHarness:
    return WorkerHarness(tmp_path)


def test_the_end_is_reported_with_the_logs_stored_before_the_container_is_removed(h: WorkerHarness) -> None:
    execution = h.started(h.job(script=Script(output=[b"one\n", b"two"])))
    container = h.runtime.started[execution.container.name]  # type: ignore[union-attr]
    seen: list[tuple[str, Any]] = []

    def send(event: Any) -> None:
        h.events.append(event)
        if isinstance(event, TaskFinished):
            seen.append(("event", (h.log_lines(), container.removed, execution.folder.exists())))

    h.context.send_event = send
    execution.on_reported = lambda: seen.append(("reported", (container.removed, execution.folder.exists())))
    execution.follow()
    assert seen == [("event", (["one", "two"], False, True)), ("reported", (False, True))]
    assert container.removed and not execution.folder.exists()
    assert execution.on_reported is None  # called once


def test_the_last_chunk_is_stored_while_the_exit_is_read(h: WorkerHarness) -> None:
    """The container's wait() returns only once the last chunk is in storage: it is stored beside it."""
    execution = h.started(h.job(script=Script(output=[b"last line\n"])))

    def wait() -> ExitInfo:
        deadline = time.monotonic() + 10
        while not any("/logs/" in key for key in h.storage.written) and time.monotonic() < deadline:
            time.sleep(0.01)
        return ExitInfo(exit_code=0 if h.log_lines() == ["last line"] else 1, oom_killed=False)

    execution.container.wait = wait  # type: ignore[method-assign,union-attr]
    execution.follow()
    assert h.finished().status == Status.DONE


def test_a_failure_quotes_the_lines_stored_beside_the_exit_and_adds_its_line(h: WorkerHarness) -> None:
    execution = h.started(h.job(script=Script(output=[b"a\n", b"b\n"], exit_code=2)))
    execution.follow()
    finished = h.finished()
    assert finished.status == Status.FAILED and finished.reason == "exit code 2; last lines:\na\nb"
    assert h.log_lines() == ["a", "b", f"dstack: train.0 failed: {finished.reason}"]


def fail_log_writes(h: WorkerHarness, error: Exception) -> None:
    """From now on, storing a log chunk raises ``error``; other writes go through."""
    put_bytes = h.storage.put_bytes

    def failing(key: str, data: bytes) -> None:
        if "/logs/" in key:
            raise error
        put_bytes(key, data)

    h.storage.put_bytes = failing  # type: ignore[method-assign]


def test_logs_that_cannot_be_stored_report_no_end_and_leave_the_container(h: WorkerHarness) -> None:
    """The task is then abandoned by the worker (a failure with a reason), as before."""
    execution = h.started(h.job(script=Script(output=[b"x\n"])))
    container = h.runtime.started[execution.container.name]  # type: ignore[union-attr]
    fail_log_writes(h, RuntimeError("storage is gone"))
    reported: list[bool] = []
    execution.on_reported = lambda: reported.append(True)
    with pytest.raises(RuntimeError, match="storage is gone"):
        execution.follow()
    assert [type(e) for e in h.events] == [TaskStarted] and not container.removed and not reported


def test_logs_storage_out_past_its_retries_still_reports_the_end(h: WorkerHarness,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage outage longer than the retries: the job's end is reported, failed, saying why; it never hangs."""
    monkeypatch.setattr(logs, "with_retries", lambda action, what: action())  # give up at once
    execution = h.started(h.job(script=Script(output=[b"x\n"])))
    fail_log_writes(h, StorageError("storage is out"))
    execution.follow()
    finished = h.events[-1]
    assert isinstance(finished, TaskFinished) and finished.status is Status.FAILED
    assert finished.reason == "storing its logs failed: storage is out"
    execution.abandon("worker error")  # its own log line cannot be stored either: the end still goes out
    assert isinstance(h.events[-1], TaskFinished) and h.events[-1].reason == "worker error"


def test_abandon_reports_before_removing(h: WorkerHarness) -> None:
    execution = h.started(h.job())
    container = h.runtime.started[execution.container.name]  # type: ignore[union-attr]
    removed_when_reported: list[bool] = []
    execution.on_reported = lambda: removed_when_reported.append(container.removed)
    execution.abandon("worker lost")
    assert removed_when_reported == [False] and container.removed


def test_a_worker_frees_the_slot_once_the_end_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_worker_service import job_task, launch, make_worker, sent_events

    runtime = FakeRuntime()
    worker = make_worker(tmp_path, runtime)
    held_at_removal: list[int] = []
    remove = FakeContainer.remove

    def recording_remove(self: FakeContainer) -> None:
        held_at_removal.append(len(worker.capacity.held()))
        remove(self)

    monkeypatch.setattr(FakeContainer, "remove", recording_remove)
    try:
        execution = launch(worker, job_task(worker, "a.0"))
        deadline = time.monotonic() + 10
        while execution.key in worker._executions and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held_at_removal == [0] and worker.capacity.held() == []
        assert [type(e) for e in sent_events(worker)] == [TaskStarted, TaskFinished]
        assert execution.allocation is None  # given back once, not again when the thread ends
    finally:
        worker.events.close()
