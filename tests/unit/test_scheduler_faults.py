"""The scheduler when things fail: jobs that run again by their retry policy (backoff, limit,
time limits, stop and restart), workers that stop reporting, and the tasks a worker is told to
stop because they are not its own anymore.

Time is a fake clock, set into both scheduler modules.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import pytest

import dstack.scheduler.flow as flow_module
import dstack.scheduler.service as service_module
from dstack.messages import (
    Allocation,
    Endpoint,
    GetRuns,
    GpuInfo,
    Inventory,
    JobSpec,
    RegistryAuth,
    Resources,
    RestartRun,
    RetryPolicy,
    StopRun,
    StopTask,
    SubmitRun,
    TaskFinished,
    TaskPulling,
    TaskStarted,
    WorkerReport,
    WorkflowSpec,
)
from dstack.scheduler.flow import CONTROL_ACTOR, MAX_BACKOFF_S
from dstack.scheduler.model import Status
from tests.scheduler_harness import PROVIDER, PROVIDER_TASK, RUN, WF, Harness, spec

T0 = 1_700_000_000.0
TIMEOUT = 60.0


class Clock:
    """Stands in for the ``time`` module of scheduler.flow and scheduler.service."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0)
    monkeypatch.setattr(flow_module, "time", fake)
    monkeypatch.setattr(service_module, "time", fake)
    return fake


@pytest.fixture
def h(tmp_path: Path, clock: Clock) -> Iterator[Harness]:
    harness = Harness(tmp_path / "scheduler" / "state.db")  # the scheduler starts at T0
    harness.scheduler._flow.worker_timeout = TIMEOUT
    yield harness
    harness.store.close()


def retry(limit: int, backoff_s: float = 10.0) -> RetryPolicy:
    return RetryPolicy(limit=limit, backoff_s=backoff_s)


# ----------------------------------------------------------------------------- acting


def submit(h: Harness, workflow_retry: Optional[RetryPolicy] = None, max_duration_s: Optional[float] = None) -> None:
    h.scheduler.handle_request(SubmitRun(
        run_name=RUN, workflow=WF, snapshot_id="snap-1", submitted_at=T0, project="/p",
        workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER, retry=workflow_retry,
                                max_duration_s=max_duration_s)]))


def claim(h: Harness, task_id: str, worker: str = "w1", attempt: int = 1) -> dict[str, Any]:
    return h.claim(task_id, worker, attempt=attempt)


def start(h: Harness, task_id: str, worker: str = "w1", attempt: int = 1) -> None:
    assert claim(h, task_id, worker, attempt)["granted"]
    h.scheduler.handle_event(TaskStarted(run_name=RUN, task_id=task_id, attempt=attempt, worker_id=worker,
                                         endpoint=Endpoint(hostname=f"{worker}.local", ports=[8080])))


def finish(h: Harness, task_id: str, status: str = "done", attempt: int = 1, reason: str = "",
           exit_code: Optional[int] = 0, timed_out: bool = False, jobs: Optional[list[JobSpec]] = None) -> None:
    h.scheduler.handle_event(TaskFinished(run_name=RUN, task_id=task_id, attempt=attempt, status=Status(status),
                                          exit_code=exit_code, reason=reason, jobs=jobs, timed_out=timed_out))


def fail(h: Harness, task_id: str, attempt: int = 1, reason: str = "exit code 3", **kwargs: Any) -> None:
    finish(h, task_id, "failed", attempt=attempt, reason=reason, exit_code=3, **kwargs)


def creates(h: Harness, jobs: list[JobSpec], workflow_retry: Optional[RetryPolicy] = None,
            max_duration_s: Optional[float] = None) -> None:
    """Submit, run the provider on w-provider, and have it create ``jobs``."""
    submit(h, workflow_retry, max_duration_s)
    start(h, PROVIDER_TASK, worker="w-provider")
    finish(h, PROVIDER_TASK, jobs=jobs)


def tick_at(h: Harness, clock: Clock, now: float) -> int:
    """Set the clock to ``now`` and tick; returns the mark of what was sent before."""
    clock.now = now
    mark = len(h.sent)
    h.scheduler.tick()
    return mark


INVENTORY = Inventory(cpu=8, memory_mib=32768, gpus=[GpuInfo(id="0", name="NVIDIA A100", memory_mib=40960)])


def worker_report(worker: str, in_use: Sequence[Allocation] = ()) -> WorkerReport:
    return WorkerReport(worker_id=worker, host=f"{worker}.local", resources=INVENTORY, slots=4, in_use=list(in_use),
                        started_at=T0)


def silence(h: Harness, worker: str, seen_at: float) -> None:
    """Record ``worker``'s last report as received at ``seen_at``."""
    with h.store.transaction():
        h.store.save_worker(worker, asdict(worker_report(worker)), seen_at)


def worker_ids(h: Harness) -> list[str]:
    with h.store.transaction():
        return [report["worker_id"] for report, _ in h.store.workers()]


def report(h: Harness, worker: str, in_use: Sequence[Allocation] = ()) -> dict[str, Any]:
    return h.scheduler.handle_request(worker_report(worker, in_use))


def held(task_id: str, attempt: int = 1) -> Allocation:
    return Allocation(RUN, task_id, attempt, Resources())


def stop_entry(task_id: str, attempt: int = 1) -> dict[str, Any]:
    return {"run_name": RUN, "task_id": task_id, "attempt": attempt}


def statuses(h: Harness) -> dict[str, str]:
    return {task_id: t.status.value for task_id, t in h.records().items()}


def stop_tasks(h: Harness, since: int = 0) -> list[tuple]:
    return [(queue, message) for queue, actor, message in h.messages(since)
            if actor == CONTROL_ACTOR and isinstance(message, StopTask)]


# ----------------------------------------------------------------------------- a failed job runs again


def test_a_failed_job_with_a_retry_policy_waits_to_run_again(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(2, 10.0)), spec("b", depends_on=["a"])])
    start(h, "train.0")
    clock.advance(5)
    fail(h, "train.0", reason="exit code 3\nTraceback (most recent call last): ...")

    job = h.task("train.0")
    assert job.status is Status.RETRYING and job.attempt == 2
    assert job.reason == "exit code 3; retry 1 of 2 in 10 s"  # the first line of the reason only
    assert (job.worker_id, job.hostname, job.ports, job.started_at, job.finished_at) == (None, None, [], None, None)
    assert job.job_state.retries == 1 and job.job_state.retry_at == clock.now + 10
    assert h.task("train.1").status is Status.SUBMITTED  # its dependents wait
    assert h.task(WF).status is Status.SUBMITTED
    assert h.run().status is Status.RUNNING and h.run().finished_at is None

    (view,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    shown = next(j for j in view["jobs"] if j["job_id"] == "train.0")
    assert (shown["status"], shown["attempt"], shown["worker"]) == ("retrying", 2, None)
    assert shown["reason"] == "exit code 3; retry 1 of 2 in 10 s"


def test_a_failure_without_reason_still_says_it_retries(h: Harness) -> None:
    creates(h, [spec("a", retry=retry(1, 2.5))])
    start(h, "train.0")
    finish(h, "train.0", "failed", reason="", exit_code=1)
    assert h.task("train.0").reason == "failed; retry 1 of 1 in 2.5 s"


def test_a_retry_is_released_once_its_backoff_has_passed(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(2, 10.0)), spec("b", depends_on=["a"])])
    start(h, "train.0")
    fail(h, "train.0")
    retry_at = h.task("train.0").job_state.retry_at
    assert retry_at == T0 + 10

    mark = tick_at(h, clock, retry_at - 0.5)
    assert h.task("train.0").status is Status.RETRYING
    assert h.sent[mark:] == []

    mark = tick_at(h, clock, retry_at)
    job = h.task("train.0")
    assert job.status is Status.QUEUED and job.attempt == 2 and job.reason == ""
    (task,) = h.job_tasks(mark)
    assert (task.task_id, task.attempt, task.run_name) == ("train.0", 2, RUN)
    assert task.job.retry == retry(2, 10.0)
    assert h.task("train.1").status is Status.SUBMITTED

    mark = tick_at(h, clock, retry_at + 100)  # once only
    assert h.job_tasks(mark) == []

    assert claim(h, "train.0", attempt=1) == {"granted": False, "reason": "no such task (attempt)", "secrets": {}}
    start(h, "train.0", worker="w2", attempt=2)
    assert h.task("train.0").status is Status.RUNNING and h.task("train.0").worker_id == "w2"
    mark = len(h.sent)
    finish(h, "train.0", attempt=2)
    assert h.task("train.0").status is Status.DONE
    assert [t.task_id for t in h.job_tasks(mark)] == ["train.1"]  # its dependent goes on
    start(h, "train.1")
    finish(h, "train.1")
    assert h.run().status is Status.DONE


def test_the_backoff_doubles_up_to_its_cap(h: Harness, clock: Clock) -> None:
    assert MAX_BACKOFF_S == 600.0
    creates(h, [spec("a", retry=retry(6, 100.0))])
    delays = []
    for attempt in range(1, 7):
        start(h, "train.0", attempt=attempt)
        fail(h, "train.0", attempt=attempt)
        job = h.task("train.0")
        assert job.status is Status.RETRYING and job.attempt == attempt + 1
        delay = job.job_state.retry_at - clock.now
        delays.append(delay)
        assert job.reason == f"exit code 3; retry {attempt} of 6 in {delay:g} s"
        tick_at(h, clock, job.job_state.retry_at)
        assert h.task("train.0").status is Status.QUEUED
    assert delays == [100.0, 200.0, 400.0, 600.0, 600.0, 600.0]


def test_the_limit_reached_the_job_fails_and_its_dependents_are_cancelled(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(2, 1.0)), spec("b", depends_on=["a"]), spec("c")])
    start(h, "train.2", worker="w2")
    for attempt in (1, 2):
        start(h, "train.0", attempt=attempt)
        fail(h, "train.0", attempt=attempt)
        assert h.task("train.0").status is Status.RETRYING
        tick_at(h, clock, h.task("train.0").job_state.retry_at)
    start(h, "train.0", attempt=3)
    fail(h, "train.0", attempt=3, reason="exit code 3")
    job = h.task("train.0")
    assert job.status is Status.FAILED and job.attempt == 3
    assert job.reason == "exit code 3" and job.exit_code == 3
    assert job.job_state.retries == 2
    dependent = h.task("train.1")
    assert dependent.status is Status.FAILED and dependent.reason == "dependency train.0 failed"
    assert h.task("train.2").status is Status.RUNNING  # an independent branch goes on
    assert h.run().status is Status.RUNNING
    finish(h, "train.2")
    assert h.run().status is Status.FAILED
    assert h.run().reason == "train.0: exit code 3"


def test_a_limit_of_zero_never_retries(h: Harness) -> None:
    creates(h, [spec("a", retry=retry(0, 1.0))])
    start(h, "train.0")
    fail(h, "train.0")
    assert h.task("train.0").status is Status.FAILED and h.task("train.0").attempt == 1
    assert h.run().status is Status.FAILED


def test_a_job_without_policy_is_not_retried(h: Harness) -> None:
    creates(h, [spec("a")])
    start(h, "train.0")
    fail(h, "train.0")
    assert h.task("train.0").status is Status.FAILED
    assert h.run().status is Status.FAILED


def test_a_job_past_its_max_duration_is_not_retried(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(3, 1.0), max_duration_s=30.0), spec("b", depends_on=["a"])])
    start(h, "train.0")
    fail(h, "train.0", reason="ran longer than its max_duration of 30 s; stopped", timed_out=True)
    job = h.task("train.0")
    assert job.status is Status.FAILED and job.attempt == 1
    assert job.reason == "ran longer than its max_duration of 30 s; stopped"
    assert job.job_state.retries == 0  # none made since the restart
    assert h.task("train.1").status is Status.FAILED
    assert h.run().status is Status.FAILED
    mark = tick_at(h, clock, T0 + 3600)
    assert h.job_tasks(mark) == []


def test_a_stopped_job_is_not_retried(h: Harness) -> None:
    creates(h, [spec("a", retry=retry(3, 1.0))])
    start(h, "train.0")
    finish(h, "train.0", "stopped", reason="stopped by request", exit_code=None)
    assert h.task("train.0").status is Status.STOPPED and h.task("train.0").attempt == 1


def test_a_provider_is_not_retried(h: Harness) -> None:
    submit(h, workflow_retry=retry(3, 1.0))
    start(h, PROVIDER_TASK, worker="w-provider")
    fail(h, PROVIDER_TASK, reason="the provider failed")
    provider = h.task(PROVIDER_TASK)
    assert provider.status is Status.FAILED and provider.attempt == 1
    assert h.run().status is Status.FAILED


def test_a_job_that_fails_while_its_run_stops_is_not_retried(h: Harness) -> None:
    creates(h, [spec("a", retry=retry(3, 1.0)), spec("b")])
    start(h, "train.0")
    start(h, "train.1")
    h.scheduler.handle_request(StopRun(run_name=RUN))
    assert h.task("train.0").status is Status.RUNNING  # its worker is told to stop it
    fail(h, "train.0", reason="exit code 137")
    assert h.task("train.0").status is Status.FAILED and h.task("train.0").attempt == 1


def test_stop_run_while_retrying_stops_the_job(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(2, 10.0)), spec("b", depends_on=["a"])])
    start(h, "train.0")
    fail(h, "train.0")
    mark = len(h.sent)
    view = h.scheduler.handle_request(StopRun(run_name=RUN))
    assert view["status"] == "stopped"
    job = h.task("train.0")
    assert job.status is Status.STOPPED and job.reason == "stopped before it started"
    assert stop_tasks(h, mark) == []  # no worker holds it
    assert h.task("train.1").status is Status.STOPPED
    assert h.run().status is Status.STOPPED
    mark = tick_at(h, clock, T0 + 3600)
    assert h.job_tasks(mark) == [] and h.task("train.0").status is Status.STOPPED


def test_stale_events_of_the_old_attempt_are_ignored(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(2, 10.0)), spec("b", depends_on=["a"])])
    start(h, "train.0")
    fail(h, "train.0")
    before = h.task("train.0")

    fail(h, "train.0", attempt=1)  # redelivered
    finish(h, "train.0", "done", attempt=1)  # or a late, contradicting one
    h.scheduler.handle_event(TaskStarted(run_name=RUN, task_id="train.0", attempt=1, worker_id="w1",
                                         endpoint=Endpoint(hostname="w1.local")))
    after = h.task("train.0")
    assert after == before  # still retrying, attempt 2, one retry counted
    assert after.status is Status.RETRYING and after.job_state.retries == 1
    assert h.task("train.1").status is Status.SUBMITTED

    tick_at(h, clock, after.job_state.retry_at)
    fail(h, "train.0", attempt=1)
    finish(h, "train.0", "done", attempt=1)
    assert h.task("train.0").status is Status.QUEUED and h.task("train.0").attempt == 2
    assert claim(h, "train.0", attempt=1)["granted"] is False


def test_a_retry_waits_for_its_master_to_run_again(h: Harness, clock: Clock) -> None:
    creates(h, [spec("master", retry=retry(1, 10.0)), spec("worker", master="master", retry=retry(1, 1.0))])
    start(h, "train.0")
    start(h, "train.1", worker="w2")
    fail(h, "train.0")
    fail(h, "train.1")
    assert statuses(h)["train.1"] == "retrying"
    mark = tick_at(h, clock, T0 + 1)  # the follower's backoff has passed, not the master's
    assert h.task("train.1").status is Status.SUBMITTED and h.job_tasks(mark) == []
    mark = tick_at(h, clock, T0 + 10)
    assert [t.task_id for t in h.job_tasks(mark)] == ["train.0"]
    mark = len(h.sent)
    start(h, "train.0", attempt=2)
    (task,) = h.job_tasks(mark)
    assert (task.task_id, task.attempt, task.master) == ("train.1", 2, Endpoint("w1.local", [8080]))


@pytest.mark.parametrize("master_ends", ["failed", "done"])
def test_a_follower_retried_after_its_master_ended_ends_too(h: Harness, clock: Clock, master_ends: str) -> None:
    creates(h, [spec("master"), spec("worker", master="master", retry=retry(1, 10.0))])
    start(h, "train.0")
    start(h, "train.1", worker="w2")
    fail(h, "train.1")  # the follower fails first and waits to run again
    finish(h, "train.0", master_ends, exit_code=0 if master_ends == "done" else 1)  # then its master ends
    tick_at(h, clock, T0 + 10)
    tick_at(h, clock, T0 + 3600)
    assert h.task("train.1").status.finished  # got: submitted, waiting for a master that never runs again
    assert h.run().status is Status.FAILED  # got: running, forever


# ----------------------------------------------------------------------------- policies of the workflow and the job


def test_jobs_inherit_the_workflows_policy_unless_they_set_their_own(h: Harness) -> None:
    creates(h, [spec("a"), spec("b", retry=retry(3, 1.0)), spec("c", retry=retry(0)), spec("d", max_duration_s=5.0)],
            workflow_retry=retry(1, 5.0), max_duration_s=60.0)
    jobs = {t.task_id: t.job for t in h.job_tasks()}
    assert (jobs["train.0"].retry, jobs["train.0"].max_duration_s) == (retry(1, 5.0), 60.0)
    assert (jobs["train.1"].retry, jobs["train.1"].max_duration_s) == (retry(3, 1.0), 60.0)
    assert (jobs["train.2"].retry, jobs["train.2"].max_duration_s) == (retry(0), 60.0)  # "never" wins too
    assert (jobs["train.3"].retry, jobs["train.3"].max_duration_s) == (retry(1, 5.0), 5.0)
    assert asdict(h.task("train.0").job_state.job.retry) == {"limit": 1, "backoff_s": 5.0}
    assert asdict(h.task(WF).workflow_state.retry) == {"limit": 1, "backoff_s": 5.0}
    assert h.task(WF).workflow_state.max_duration_s == 60.0

    for n in range(3):
        start(h, f"train.{n}")
        fail(h, f"train.{n}")
    assert h.task("train.0").reason == "exit code 3; retry 1 of 1 in 5 s"
    assert h.task("train.1").reason == "exit code 3; retry 1 of 3 in 1 s"
    assert h.task("train.2").status is Status.FAILED


def test_without_a_workflow_policy_jobs_have_none(h: Harness) -> None:
    creates(h, [spec("a")])
    (task,) = h.job_tasks()
    assert task.job.retry is None and task.job.max_duration_s is None
    assert h.task(WF).workflow_state.retry is None and h.task(WF).workflow_state.max_duration_s is None


# ----------------------------------------------------------------------------- restart


def test_a_restart_gets_its_retries_anew(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(1, 10.0))])
    start(h, "train.0")
    fail(h, "train.0")
    tick_at(h, clock, T0 + 10)
    start(h, "train.0", attempt=2)
    fail(h, "train.0", attempt=2)
    assert h.task("train.0").status is Status.FAILED and h.run().status is Status.FAILED

    mark = len(h.sent)
    h.scheduler.handle_request(RestartRun(run_name=RUN))
    job = h.task("train.0")
    assert job.status is Status.QUEUED and job.attempt == 3
    assert job.job_state.retries == 0  # none made since the restart
    assert [(t.task_id, t.attempt) for t in h.job_tasks(mark)] == [("train.0", 3)]

    start(h, "train.0", attempt=3)
    fail(h, "train.0", attempt=3)
    job = h.task("train.0")
    assert job.status is Status.RETRYING and job.attempt == 4
    assert job.reason == "exit code 3; retry 1 of 1 in 10 s"  # the first backoff again, not doubled
    assert job.job_state.retry_at == clock.now + 10


# ----------------------------------------------------------------------------- lost workers


def test_a_silent_worker_is_lost_with_its_tasks(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(1, 10.0)), spec("b"), spec("c", depends_on=["b"]), spec("d"), spec("e")])
    start(h, "train.0")
    start(h, "train.1")
    assert claim(h, "train.3")["granted"]  # claimed, not started yet
    start(h, "train.4", worker="w2")
    silence(h, "w1", T0 - 10)
    silence(h, "w2", T0 + 100)
    silence(h, "w-provider", T0 + 100)

    tick_at(h, clock, T0 + 110)  # w1 silent for 120 s
    assert "w1" not in worker_ids(h) and worker_ids(h) == ["w-provider", "w2"]
    lost = "worker lost: w1 stopped reporting (120 s ago)"
    a = h.task("train.0")
    assert a.status is Status.RETRYING and a.attempt == 2 and a.worker_id is None
    assert a.reason == f"{lost}; retry 1 of 1 in 10 s"
    b = h.task("train.1")
    assert b.status is Status.FAILED and b.reason == lost
    assert b.started_at == T0 and b.finished_at == T0 + 110
    c = h.task("train.2")
    assert c.status is Status.FAILED and c.reason == "dependency train.1 failed"
    d = h.task("train.3")
    assert d.status is Status.FAILED and d.reason == lost and d.started_at == T0 + 110
    assert h.task("train.4").status is Status.RUNNING  # w2 reports
    assert h.run().status is Status.RUNNING

    mark = tick_at(h, clock, T0 + 120)  # a runs again
    assert [(t.task_id, t.attempt) for t in h.job_tasks(mark)] == [("train.0", 2)]
    assert h.task("train.1").status is Status.FAILED  # nothing lost twice


def test_a_lost_provider_fails_its_workflow(h: Harness, clock: Clock) -> None:
    submit(h, workflow_retry=retry(3, 1.0))
    start(h, PROVIDER_TASK, worker="w1")
    silence(h, "w1", T0)
    tick_at(h, clock, T0 + 61)
    provider = h.task(PROVIDER_TASK)
    assert provider.status is Status.FAILED and provider.attempt == 1
    assert provider.reason == "worker lost: w1 stopped reporting (61 s ago)"
    assert h.task(WF).status is Status.FAILED
    run = h.run()
    assert run.status is Status.FAILED
    assert run.reason == f"{PROVIDER_TASK}: worker lost: w1 stopped reporting (61 s ago)"


def test_no_worker_is_lost_before_the_scheduler_has_run_the_timeout(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a")])
    start(h, "train.0")
    silence(h, "w1", T0 - 1000)  # silent long before the scheduler started
    tick_at(h, clock, T0 + TIMEOUT - 1)
    assert worker_ids(h) == ["w1"] and h.task("train.0").status is Status.RUNNING
    tick_at(h, clock, T0 + TIMEOUT)
    assert worker_ids(h) == [] and h.task("train.0").status is Status.FAILED
    assert h.task("train.0").reason == f"worker lost: w1 stopped reporting ({TIMEOUT + 1000:.0f} s ago)"


def test_a_worker_is_lost_only_after_a_full_timeout(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a")])
    start(h, "train.0")
    h.scheduler._started_at = T0 - 3600  # the scheduler has run for long
    silence(h, "w1", T0)
    tick_at(h, clock, T0 + TIMEOUT)  # silent exactly the timeout: still live
    assert worker_ids(h) == ["w1"] and h.task("train.0").status is Status.RUNNING
    tick_at(h, clock, T0 + TIMEOUT + 1)
    assert worker_ids(h) == [] and h.task("train.0").status is Status.FAILED


def test_a_worker_lost_while_its_run_stops_fails_its_tasks(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(3, 1.0))])
    start(h, "train.0")
    h.scheduler.handle_request(StopRun(run_name=RUN))
    silence(h, "w1", T0)
    tick_at(h, clock, T0 + 61)
    job = h.task("train.0")
    assert job.status is Status.FAILED and job.attempt == 1  # not retried
    assert job.reason.startswith("worker lost: w1")
    assert h.run().status.finished


def test_a_lost_worker_that_comes_back_is_told_to_stop_the_old_attempt(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(1, 10.0)), spec("b")])
    start(h, "train.0")
    start(h, "train.1")
    silence(h, "w1", T0)
    tick_at(h, clock, T0 + 61)
    answer = report(h, "w1", [held("train.0"), held("train.1")])
    assert answer["stop"] == [stop_entry("train.0"), stop_entry("train.1")]
    assert worker_ids(h)[-1] == "w1"  # live again
    fail(h, "train.0", attempt=1)  # and what it says of them is ignored
    assert h.task("train.0").status is Status.RETRYING and h.task("train.0").job_state.retries == 1


# ----------------------------------------------------------------------------- what a worker is told to stop


def test_a_report_lists_the_allocations_that_are_not_the_workers_own(h: Harness, clock: Clock) -> None:
    creates(h, [spec("retried", retry=retry(1, 10.0)), spec("done"), spec("other"), spec("reserved"),
                spec("running"), spec("queued-claimed")])
    start(h, "train.0")
    fail(h, "train.0")  # attempt 2 now
    start(h, "train.1")
    finish(h, "train.1")
    assert claim(h, "train.2", worker="w2")["granted"]
    start(h, "train.4")
    assert claim(h, "train.5")["granted"]

    answer = report(h, "w1", [
        held("train.0", attempt=1),  # an old attempt
        held("train.1"),  # finished
        held("train.2"),  # claimed by w2
        held("train.3"),  # just reserved: queued, no worker yet
        held("train.4"),  # running here
        held("train.5"),  # claimed here
        held("train.99"),  # no such task
        Allocation("other-run-1", "x.0", 1, Resources()),  # no such run
    ])
    assert answer["stop"] == [stop_entry("train.0"), stop_entry("train.1"), stop_entry("train.2"),
                              stop_entry("train.99"), {"run_name": "other-run-1", "task_id": "x.0", "attempt": 1}]
    assert report(h, "w2", [held("train.2"), held("train.3")])["stop"] == []


def test_the_new_attempt_is_the_workers_own(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a", retry=retry(1, 10.0))])
    start(h, "train.0")
    fail(h, "train.0")
    assert report(h, "w1", [held("train.0", attempt=2)])["stop"] == []  # retrying; not stale
    tick_at(h, clock, T0 + 10)
    assert report(h, "w1", [held("train.0", attempt=2)])["stop"] == []  # queued, reserved
    start(h, "train.0", worker="w1", attempt=2)
    assert report(h, "w1", [held("train.0", attempt=1), held("train.0", attempt=2)])["stop"] == [
        stop_entry("train.0", 1)]
    assert report(h, "w2", [held("train.0", attempt=2)])["stop"] == [stop_entry("train.0", 2)]


def test_a_stopped_run_has_its_reserved_tasks_stopped(h: Harness) -> None:
    creates(h, [spec("a")])
    h.scheduler.handle_request(StopRun(run_name=RUN))
    assert h.task("train.0").status is Status.STOPPED
    assert report(h, "w1", [held("train.0")])["stop"] == [stop_entry("train.0")]



# ----------------------------------------------------------------------------- pulling an image


def pulling(h: Harness, task_id: str, worker: str = "w1", attempt: int = 1) -> None:
    assert claim(h, task_id, worker, attempt)["granted"]
    h.scheduler.handle_event(TaskPulling(run_name=RUN, task_id=task_id, attempt=attempt, worker_id=worker,
                                         image="registry.example.com/t:42"))


def test_a_job_whose_image_is_pulled_is_pulling_and_its_run_running(h: Harness) -> None:
    creates(h, [spec("a")])
    pulling(h, "train.0")
    assert h.task("train.0").status is Status.PULLING and h.task("train.0").worker_id == "w1"
    assert h.run().status is Status.RUNNING
    assert not claim(h, "train.0", "w2")["granted"] and claim(h, "train.0", "w1")["granted"]
    h.scheduler.handle_event(TaskStarted(run_name=RUN, task_id="train.0", attempt=1, worker_id="w1",
                                         endpoint=Endpoint(hostname="w1.local")))
    assert h.task("train.0").status is Status.RUNNING
    finish(h, "train.0")
    assert h.task("train.0").status is Status.DONE and h.run().status is Status.DONE


def test_a_late_pulling_event_changes_nothing(h: Harness) -> None:
    creates(h, [spec("a")])
    start(h, "train.0")
    pulling(h, "train.0")
    assert h.task("train.0").status is Status.RUNNING
    finish(h, "train.0")
    h.scheduler.handle_event(TaskPulling(run_name=RUN, task_id="train.0", attempt=1, worker_id="w1", image="x"))
    assert h.task("train.0").status is Status.DONE


def test_a_failed_pull_fails_the_job_with_its_reason(h: Harness) -> None:
    creates(h, [spec("a")])
    pulling(h, "train.0")
    finish(h, "train.0", "failed", reason="failed to start: unauthorized: the registry of image 'x' refused",
           exit_code=None)
    assert h.task("train.0").status is Status.FAILED and "unauthorized" in h.run().reason


def test_a_stop_while_pulling_goes_to_the_worker(h: Harness) -> None:
    creates(h, [spec("a")])
    pulling(h, "train.0")
    mark = len(h.sent)
    h.scheduler.handle_request(StopRun(run_name=RUN))
    assert [type(m).__name__ for _, _, m in h.messages(mark)] == ["StopTask"]
    finish(h, "train.0", "stopped", reason="stopped by request while its image was pulled", exit_code=None)
    assert h.task("train.0").status is Status.STOPPED and h.run().status is Status.STOPPED


def test_a_job_pulling_on_a_lost_worker_is_lost_with_it(h: Harness, clock: Clock) -> None:
    creates(h, [spec("a")])
    pulling(h, "train.0")
    silence(h, "w1", T0)
    tick_at(h, clock, T0 + 61)
    assert h.task("train.0").status is Status.FAILED
    assert h.task("train.0").reason.startswith("worker lost: w1")


def test_a_workflows_registry_auth_and_pull_policy_reach_its_jobs_that_set_none(h: Harness) -> None:
    auth = RegistryAuth(username="ci", password="${{ secrets.REGISTRY_TOKEN }}")
    h.scheduler.handle_request(SubmitRun(
        run_name=RUN, workflow=WF, snapshot_id="snap-1", submitted_at=T0, project="/p",
        workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER, registry_auth=auth, pull_policy="always")]))
    start(h, PROVIDER_TASK, worker="w-provider")
    own = RegistryAuth(username="other", password="p")
    finish(h, PROVIDER_TASK, jobs=[spec("a"), spec("b", pull_policy="never", registry_auth=own)])
    jobs = {task.task_id: task.job for task in h.job_tasks()}
    assert (jobs["train.0"].pull_policy, jobs["train.0"].registry_auth) == ("always", auth)
    assert (jobs["train.1"].pull_policy, jobs["train.1"].registry_auth) == ("never", own)
