"""The scheduler's side of placement: queues named after what their tasks need, workers'
reports, pushes of newly opened queues, and the reasons of jobs that wait for capacity."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from dstack.messages import (
    Allocation,
    GetRuns,
    GetWorkers,
    GpuInfo,
    Inventory,
    JobTask,
    QueueOpened,
    Resources,
    StopRun,
    WorkerLeaving,
    WorkerReport,
)
from dstack.names import DEFAULT_TASK_QUEUE, worker_queue
from dstack.scheduler.flow import CONTROL_ACTOR, TASK_ACTOR
from dstack.scheduler.store import SCHEMA_VERSION, SqliteStateStore
from tests.scheduler_harness import PROVIDER_TASK, RUN, Harness, spec

A100 = Resources(gpu_count=1, gpu_name="A100")
A100_QUEUE = "dstack.tasks.gpu1xa100"


def report(h: Harness, worker_id: str, gpus: int = 0, in_use: list[Allocation] = ()) -> dict:
    inventory = Inventory(cpu=8, memory_mib=32768,
                          gpus=[GpuInfo(id=str(i), name="NVIDIA A100-SXM4-40GB", memory_mib=40960)
                                for i in range(gpus)])
    return h.scheduler.handle_request(WorkerReport(worker_id=worker_id, host=f"{worker_id}.local",
                                                   resources=inventory, slots=4, in_use=list(in_use),
                                                   started_at=1700000000.0))


def pushed(h: Harness, since: int = 0) -> list[tuple]:
    return [(queue, message) for queue, actor, message in h.messages(since)
            if actor == CONTROL_ACTOR and isinstance(message, QueueOpened)]


def job_view(h: Harness, job_id: str) -> dict:
    (run,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    return next(j for j in run["jobs"] if j["job_id"] == job_id)


def test_jobs_go_to_the_queue_of_what_they_need(h: Harness) -> None:
    h.provider_creates([spec("plain"), spec("gpu", resources=A100),
                        spec("big", resources=Resources(cpu=3, memory_mib=4096))])
    queues = {message.task_id: queue for queue, actor, message in h.messages()
              if actor == TASK_ACTOR and isinstance(message, JobTask)}
    assert queues == {"train.0": DEFAULT_TASK_QUEUE, "train.1": A100_QUEUE, "train.2": "dstack.tasks.cpu3-mem4096mib"}
    assert h.task("train.1").queue == A100_QUEUE


def test_a_report_is_answered_with_the_queues_that_hold_tasks(h: Harness) -> None:
    assert report(h, "w1") == {"queues": [], "stop": []}
    h.provider_creates([spec("gpu", resources=A100), spec("gpu2", resources=A100)])
    answer = report(h, "w1")
    assert answer == {"stop": [], "queues": [{"queue": A100_QUEUE, "needs": {
        "cpu": None, "memory_mib": None, "shm_size_mib": None, "gpu_count": 1, "gpu_name": "A100",
        "gpu_memory_mib": None, "interruptible": False, "pids": None}}]}
    h.start("train.0")
    assert [q["queue"] for q in report(h, "w1")["queues"]] == [A100_QUEUE]  # one still queued
    h.start("train.1")
    assert report(h, "w1")["queues"] == []


def test_a_stopped_queued_task_leaves_its_queue(h: Harness) -> None:
    h.provider_creates([spec("gpu", resources=A100)])
    h.scheduler.handle_request(StopRun(run_name=RUN))
    assert report(h, "w1")["queues"] == []


def test_live_workers_are_told_when_a_queue_first_holds_tasks(h: Harness) -> None:
    report(h, "w1")
    report(h, "w2")
    h.provider_creates([spec("a", resources=A100), spec("b", resources=A100), spec("plain")])
    assert pushed(h) == [(worker_queue("w1"), QueueOpened(A100_QUEUE, A100)),
                         (worker_queue("w2"), QueueOpened(A100_QUEUE, A100))]  # once, not per task
    assert all(queue != DEFAULT_TASK_QUEUE for queue, _ in pushed(h))  # every worker takes from that one


def test_a_queue_that_empties_and_fills_again_is_pushed_again(h: Harness) -> None:
    report(h, "w1")
    h.provider_creates([spec("a", resources=A100), spec("b", depends_on=["a"], resources=A100)])
    assert len(pushed(h)) == 1
    h.start("train.0")  # the queue is empty now
    mark = len(h.sent)
    h.finish("train.0")  # releases train.1 onto the same queue
    assert pushed(h, mark) == [(worker_queue("w1"), QueueOpened(A100_QUEUE, A100))]


def test_an_interruptible_job_with_no_other_need_needs_nothing_in_particular(h: Harness) -> None:
    h.provider_creates([spec("spot", resources=Resources(interruptible=True))])
    assert job_view(h, "train.0")["reason"] == "waiting for a worker: none is live"


def test_a_job_that_fits_no_live_worker_says_so(h: Harness) -> None:
    h.provider_creates([spec("gpu", resources=Resources(gpu_count=2, gpu_name="A100", gpu_memory_mib=40960)),
                        spec("plain")])
    assert job_view(h, "train.0")["reason"] == "waiting for a worker: none is live (needs 2xA100 (40GB each))"
    assert job_view(h, "train.1")["reason"] == "waiting for a worker: none is live"
    report(h, "cpu-only")
    assert job_view(h, "train.0")["reason"] == "waiting for capacity: no live worker has 2xA100 (40GB each)"
    assert job_view(h, "train.1")["reason"] == ""
    report(h, "one-gpu", gpus=1)
    assert job_view(h, "train.0")["reason"].startswith("waiting for capacity")
    report(h, "two-gpus", gpus=2)  # fits, even while busy: then it is just queued
    assert job_view(h, "train.0")["reason"] == ""
    assert job_view(h, "train.0")["resources"]["gpu_count"] == 2


def test_the_reason_goes_out_with_live_updates(h: Harness) -> None:
    report(h, "cpu-only")
    h.provider_creates([spec("gpu", resources=A100)])
    job = next(j for _, update in h.notified for j in update["jobs"] if j["job_id"] == "train.0")
    assert job["reason"] == "waiting for capacity: no live worker has 1xA100"


def test_workers_are_live_until_their_reports_stop(tmp_path: Path) -> None:
    h = Harness(tmp_path / "state.db")
    h.scheduler._flow.worker_timeout = 60
    report(h, "w1", gpus=2, in_use=[Allocation(RUN, "train.0", 1, A100, ["1"])])
    report(h, "w2")
    with h.store.transaction():
        h.store.save_worker("gone", {"worker_id": "gone"}, time.time() - 61)
    listed = h.scheduler.handle_request(GetWorkers())
    assert [w["worker_id"] for w in listed] == ["w1", "w2"]
    first = listed[0]
    assert first["host"] == "w1.local" and first["slots"] == 4 and abs(first["seen_at"] - time.time()) < 5
    assert first["resources"]["gpus"][1] == {"id": "1", "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960}
    assert first["in_use"][0]["gpu_ids"] == ["1"] and first["in_use"][0]["task_id"] == "train.0"
    h.scheduler.handle_request(WorkerLeaving(worker_id="w1"))
    assert [w["worker_id"] for w in h.scheduler.handle_request(GetWorkers())] == ["w2"]
    h.store.close()


def test_state_of_version_2_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    h = Harness(path)
    h.submit()  # the provider task is queued
    h.store.close()
    db = sqlite3.connect(str(path))  # make it look like version 2: no queue column, no queues or workers
    db.executescript(_AS_VERSION_3 + "ALTER TABLE tasks DROP COLUMN queue; DROP TABLE queues; DROP TABLE workers; "
                     "PRAGMA user_version = 2;")
    db.close()
    store = SqliteStateStore(path)
    with store.transaction():
        assert store.open_queues() == [(DEFAULT_TASK_QUEUE, {})]
        assert store.get_task(RUN, PROVIDER_TASK).queue == DEFAULT_TASK_QUEUE
    assert sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


#: Makes a state of this version look like version 3: no owners, no users, secrets by name alone.
_AS_VERSION_3 = """
ALTER TABLE runs DROP COLUMN owner; ALTER TABLE tags DROP COLUMN owner; DROP TABLE users; DROP TABLE secrets;
CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""


def test_state_of_version_3_gets_owners_and_team_secrets(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    h = Harness(path)
    h.submit()
    h.store.close()
    db = sqlite3.connect(str(path))
    db.executescript(_AS_VERSION_3 + "INSERT INTO secrets VALUES ('TOKEN', 'sealed', 1.0); PRAGMA user_version = 3;")
    db.close()
    store = SqliteStateStore(path)
    with store.transaction():
        run = store.get_run(RUN)
        assert run is not None and run.owner == ""  # before users: the administrator's
        assert store.secrets() == [("TOKEN", "sealed", 1.0, "")]  # the team's
        assert store.users() == []
    assert sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
