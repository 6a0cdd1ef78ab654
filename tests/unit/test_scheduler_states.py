"""The state machine (dstack.states) and how the scheduler keeps to it: the tables of allowed
moves, the typed task records in the store, and the counters the moves keep."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Optional

import pytest

import dstack.states as states
from dstack.messages import (
    AppSpec,
    ArtifactRef,
    GetRuns,
    JobSpec,
    ProviderRepo,
    Resources,
    RestartRun,
    RetryPolicy,
    StopRun,
    TagRef,
)
from dstack.scheduler.model import JobState, Kind, ProviderState, Status, TaskRecord, WorkflowState
from dstack.scheduler.store import SqliteStateStore
from dstack.states import FINISHED, RUN_MOVES, TASK_MOVES, IllegalTransition, check_run_move, check_task_move
from tests.scheduler_harness import PROVIDER_TASK, RUN, WF, Harness, spec

ALL = list(Status)


# ----------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("before,after", [(b, a) for b, moves in TASK_MOVES.items() for a in moves])
def test_every_allowed_task_move_is_accepted(before: Status, after: Status) -> None:
    check_task_move(before, after, "t")


@pytest.mark.parametrize("before,after", [(b, a) for b, moves in RUN_MOVES.items() for a in moves])
def test_every_allowed_run_move_is_accepted(before: Status, after: Status) -> None:
    check_run_move(before, after, "r")


@pytest.mark.parametrize("before,after", [
    (Status.SUBMITTED, Status.RUNNING), (Status.SUBMITTED, Status.RETRYING), (Status.QUEUED, Status.SUBMITTED),
    (Status.RUNNING, Status.QUEUED), (Status.RUNNING, Status.SUBMITTED), (Status.RETRYING, Status.QUEUED),
    (Status.RETRYING, Status.RUNNING), (Status.DONE, Status.FAILED), (Status.FAILED, Status.QUEUED),
    (Status.STOPPED, Status.RUNNING), (Status.DONE, Status.RETRYING)])
def test_illegal_task_moves_raise(before: Status, after: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"t: no move from {before.value} to {after.value}"):
        check_task_move(before, after, "t")


@pytest.mark.parametrize("before,after", [
    (Status.RUNNING, Status.QUEUED), (Status.DONE, Status.FAILED), (Status.QUEUED, Status.SUBMITTED),
    (Status.QUEUED, Status.RETRYING), (Status.FAILED, Status.RUNNING)])
def test_illegal_run_moves_raise(before: Status, after: Status) -> None:
    with pytest.raises(IllegalTransition):
        check_run_move(before, after, "r")


def test_records_are_created_in_their_start_status_only() -> None:
    check_task_move(None, Status.SUBMITTED, "t")
    check_run_move(None, Status.QUEUED, "r")
    for status in ALL:
        if status is not Status.SUBMITTED:
            with pytest.raises(IllegalTransition, match="from nothing"):
                check_task_move(None, status, "t")
        if status is not Status.QUEUED:
            with pytest.raises(IllegalTransition):
                check_run_move(None, status, "r")


def test_an_illegal_transition_is_an_assertion_error_so_tests_surface_it() -> None:
    assert issubclass(IllegalTransition, AssertionError)


def test_finished_statuses_only_go_back_to_the_start_on_restart() -> None:
    for status in FINISHED:
        assert TASK_MOVES[status] == {Status.SUBMITTED} and RUN_MOVES[status] == {Status.QUEUED}
    assert set(TASK_MOVES) == set(ALL) and Status.SUBMITTED not in RUN_MOVES and Status.RETRYING not in RUN_MOVES


# ----------------------------------------------------------------------------- the scheduler keeps to them


def test_the_scheduler_checks_every_move(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without submitted -> queued in the table, submitting fails, and nothing is recorded."""
    moves = dict(TASK_MOVES)
    moves[Status.SUBMITTED] = frozenset({Status.DONE, Status.FAILED, Status.STOPPED})
    monkeypatch.setattr(states, "TASK_MOVES", moves)
    with pytest.raises(IllegalTransition, match=f"task {RUN}/{PROVIDER_TASK}: no move from submitted to queued"):
        h.submit()
    with h.store.transaction():
        assert h.store.get_run(RUN) is None and h.store.outbox() == []


def test_a_status_change_outside_move_is_refused(h: Harness) -> None:
    h.submit()
    task = h.task(PROVIDER_TASK)
    task.status = Status.RUNNING
    with h.store.transaction(), pytest.raises(IllegalTransition, match="must be a move"):
        h.scheduler._flow.save(task)


def test_a_run_through_retry_stop_and_restart_makes_only_allowed_moves(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Optional[Status], Status]] = []
    check = states.check_task_move

    def spy(before: Optional[Status], after: Status, what: str) -> None:
        check(before, after, what)  # raises on an illegal move
        seen.append((before, after))

    monkeypatch.setattr("dstack.scheduler.flow.check_task_move", spy)
    h.provider_creates([spec("a", retry=RetryPolicy(limit=1, backoff_s=0.0)), spec("b", ["a"])])
    h.start("train.0")
    h.finish("train.0", "failed", exit_code=1)  # retries
    h.scheduler.tick()
    h.scheduler.handle_request(StopRun(RUN))
    h.scheduler.handle_request(RestartRun(RUN))
    assert {(Status.QUEUED, Status.RUNNING), (Status.RUNNING, Status.RETRYING), (Status.RETRYING, Status.SUBMITTED),
            (Status.SUBMITTED, Status.STOPPED), (Status.STOPPED, Status.SUBMITTED)} <= set(seen)
    assert_counters_match_tasks(h)


def assert_counters_match_tasks(h: Harness) -> None:
    """The counters the moves keep equal a count of the tasks."""
    tasks = list(h.records().values())
    with h.store.transaction():
        assert h.store.count_unfinished(RUN) == (sum(not t.status.finished for t in tasks),
                                                 sum(t.status is Status.RUNNING for t in tasks))
        queued = {q: n for q, n in h.store._db.execute("SELECT queue, queued FROM queues")}
    for queue, count in queued.items():
        assert count == sum(t.status is Status.QUEUED and t.queue == queue for t in tasks), queue


def test_counters_follow_the_moves_also_for_outdated_copies(h: Harness) -> None:
    """Stopping a run reads its tasks once and cancels dependents on the way: the copies read first
    are then outdated, and the counters still come out right."""
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("c", ["b"], resources=Resources(gpu_count=1))])
    assert_counters_match_tasks(h)
    h.scheduler.handle_request(StopRun(RUN))
    assert_counters_match_tasks(h)
    (view,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    assert view["status"] == "stopped"
    h.scheduler.handle_request(RestartRun(RUN))
    assert_counters_match_tasks(h)


# ----------------------------------------------------------------------------- typed records in the store


def records() -> list[TaskRecord]:
    job = JobSpec(job_id="w.0", image="alpine", commands=["true"], resources=Resources(gpu_count=1),
                  retry=RetryPolicy(limit=2), apps=[AppSpec(name="lab", port_index=0)], env={"A": "1"})
    return [
        TaskRecord(run_name=RUN, task_id="w", kind=Kind.WORKFLOW, workflow="w", status=Status.SUBMITTED,
                   spec=WorkflowState(depends_on=["prep"], tagged=[TagRef("prep", "best")],
                                      tag_inputs=[ArtifactRef("old", "prep.0")], variables={"lr": 0.1},
                                      retry=RetryPolicy(limit=1, backoff_s=5.0), max_duration_s=60.0)),
        TaskRecord(run_name=RUN, task_id="w.provider", kind=Kind.PROVIDER, workflow="w", status=Status.SUBMITTED,
                   spec=ProviderState(data={"x": [1, 2]}, provider_repo=ProviderRepo("https://g/r", "p"),
                                      inputs=[ArtifactRef(RUN, "prep.0")], provider_commit="abc")),
        TaskRecord(run_name=RUN, task_id="w.0", kind=Kind.JOB, workflow="w", status=Status.SUBMITTED,
                   spec=JobState(job=job, inputs=[ArtifactRef(RUN, "prep.0")], retries=1, retry_at=12.5)),
    ]


def test_typed_task_records_round_trip_through_the_store(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    with store.transaction():
        for record in records():
            store.add_task(record)
        assert store.tasks_of(RUN) == records()


def test_rows_written_by_the_earlier_untyped_version_load(tmp_path: Path) -> None:
    """Schema version 3 kept a free map per task; those rows load as typed records."""
    store = SqliteStateStore(tmp_path / "state.db")
    old = {
        "w": {"depends_on": [], "tagged": [{"workflow": "prep", "tag": "best"}], "tag_inputs": [],
              "variables": {"lr": 0.1}, "retry": None, "max_duration_s": None},
        "w.provider": {"provider": {"name": "p", "image": "python:3.11", "commands": ["x"], "builtin": False},
                       "provider_repo": None, "data": {"x": 1}},
        "w.0": {"job": {"job_id": "w.0", "image": "alpine", "commands": ["true"], "working_dir": "", "ports": [],
                        "artifacts": ["out"], "resources": {"cpu": None, "memory_mib": None, "shm_size_mib": None,
                                                            "gpu_count": 0, "gpu_name": None, "gpu_memory_mib": None},
                        "depends_on": [], "master": None, "env": {}, "retry": {"limit": 1, "backoff_s": 10.0},
                        "max_duration_s": None, "apps": []},
                "inputs": [{"run_name": RUN, "job_id": "prep.0"}], "retries": 1, "retry_at": 100},
    }
    kinds = {"w": "workflow", "w.provider": "provider", "w.0": "job"}
    db = sqlite3.connect(str(store.path))
    for task_id, spec_map in old.items():
        db.execute("INSERT INTO tasks (run_name, task_id, kind, workflow, status, spec, attempt, depends_on, "
                   "deps_left, ports, reason, submitted_at) VALUES (?, ?, ?, 'w', 'retrying', ?, 2, '[]', 0, '[]', "
                   "'', 0)", (RUN, task_id, kinds[task_id], json.dumps(spec_map)))
    db.commit()
    db.close()
    with store.transaction():
        workflow, provider, job = (store.get_task(RUN, t) for t in ("w", "w.provider", "w.0"))
    assert workflow is not None and workflow.workflow_state.tagged == [TagRef("prep", "best")]
    assert provider is not None and provider.provider_state.provider is not None
    assert provider.provider_state.inputs == [] and provider.provider_state.provider_commit is None
    assert job is not None and job.job_state.retries == 1 and job.job_state.retry_at == 100.0
    assert job.job_state.job.retry == RetryPolicy(limit=1, backoff_s=10.0)
    assert job.job_state.inputs == [ArtifactRef(RUN, "prep.0")]
    store.close()


def test_a_restart_resets_the_attempt_once_for_all(h: Harness) -> None:
    h.provider_creates([spec("a")])
    h.start("train.0", ports=[8080])
    h.finish("train.0", "failed", exit_code=3, reason="boom")
    h.scheduler.handle_request(RestartRun(RUN, WF))
    job = h.task("train.0")
    assert (job.status, job.attempt, job.worker_id, job.hostname, job.ports, job.exit_code, job.reason,
            job.started_at, job.finished_at) == (Status.QUEUED, 2, None, None, [], None, "", None, None)
