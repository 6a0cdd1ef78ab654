"""scheduler: which attempt of a job starts with its own last synced artifacts (``JobTask.resume``). A first
attempt never does; the retry of a failed attempt does; a restart does unless ``--clear``
(``RestartRun.clear``), and the job's state keeps the choice across the scheduler's store."""
from __future__ import annotations

from dstack.messages import Endpoint, JobTask, RestartRun, RetryPolicy, TaskFinished, TaskStarted
from dstack.scheduler.model import Status
from tests.scheduler_harness import RUN, Harness, spec

JOB = "train.0"


def run_attempt(h: Harness, attempt: int, status: str, task_id: str = JOB) -> None:
    assert h.claim(task_id, attempt=attempt)["granted"]
    h.scheduler.handle_event(TaskStarted(run_name=RUN, task_id=task_id, attempt=attempt, worker_id="w1",
                                         endpoint=Endpoint(hostname="host-1", ports=[])))
    h.scheduler.handle_event(TaskFinished(run_name=RUN, task_id=task_id, attempt=attempt, status=Status(status),
                                          exit_code=0 if status == "done" else 1, reason="" if status == "done"
                                          else "boom"))


def sent_since(h: Harness, since: int, task_id: str = JOB) -> JobTask:
    (task,) = [t for t in h.job_tasks(since) if t.job.job_id == task_id]
    return task


def test_a_first_attempt_never_resumes(h: Harness) -> None:
    h.provider_creates([spec("0", artifacts=["checkpoints"])])
    first = sent_since(h, 0)
    assert (first.attempt, first.resume) == (1, False)


def test_the_retry_of_a_failed_attempt_resumes(h: Harness) -> None:
    h.provider_creates([spec("0", artifacts=["checkpoints"], retry=RetryPolicy(limit=1, backoff_s=0))])
    run_attempt(h, 1, "failed")
    assert h.task(JOB).status is Status.RETRYING and h.task(JOB).job_state.resume  # kept in the store
    sent = len(h.sent)
    h.scheduler.tick()  # its backoff of 0 s has passed
    retry = sent_since(h, sent)
    assert (retry.attempt, retry.resume) == (2, True)


def test_a_restart_resumes_unless_clear(h: Harness) -> None:
    h.provider_creates([spec("0", artifacts=["checkpoints"]), spec("1")])
    run_attempt(h, 1, "failed")
    run_attempt(h, 1, "done", task_id="train.1")
    assert h.run().status is Status.FAILED
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    restarted = sent_since(h, sent)
    assert (restarted.attempt, restarted.resume) == (2, True)
    assert not [t for t in h.job_tasks(sent) if t.job.job_id == "train.1"]  # done: stays done

    run_attempt(h, 2, "stopped")
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN, "train", clear=True))
    cleared = sent_since(h, sent)
    assert (cleared.attempt, cleared.resume) == (3, False)


def test_the_retry_of_a_cleared_restart_resumes_from_that_attempt(h: Harness) -> None:
    h.provider_creates([spec("0", artifacts=["checkpoints"], retry=RetryPolicy(limit=1, backoff_s=0))])
    run_attempt(h, 1, "stopped")
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN, clear=True))
    assert not sent_since(h, sent).resume
    run_attempt(h, 2, "failed")
    sent = len(h.sent)
    h.scheduler.tick()
    retry = sent_since(h, sent)
    assert (retry.attempt, retry.resume) == (3, True)
