"""scheduler.service.Scheduler over a real SqliteStateStore: runs and tasks through their statuses.

``send`` and ``notify`` are recording fakes; what ``send`` received is decoded back into typed
messages to assert on. Replies and updates are asserted on in their plain form (what goes on the
wire, and what ``dstack status --json`` prints), so that form is what these tests keep stable.
Every status change checks the tables of dstack.states: an illegal move fails the test.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.errors import RequestRejected, RunNameTaken
from dstack.messages import (
    AppSpec,
    Endpoint,
    GetRuns,
    JobSpec,
    ProviderTask,
    StopRun,
    StopTask,
    SubmitRun,
    TaskFinished,
    TaskStarted,
    WorkflowSpec,
    plain,
)
from dstack.names import task_queue, worker_queue
from dstack.scheduler.access import service_caller
from dstack.scheduler.flow import CONTROL_ACTOR, TASK_ACTOR
from dstack.scheduler.model import JobState, Kind, Status, TaskRecord
from dstack.scheduler.store import SqliteStateStore
from tests.scheduler_harness import PROVIDER, PROVIDER_TASK, RUN, WF, Harness, spec

# ----------------------------------------------------------------------------- submit


def test_submit_records_queued_run_and_provider_task_in_outbox(h: Harness) -> None:
    request = SubmitRun(run_name=RUN, workflow=WF,
                        workflows=[WorkflowSpec(name=WF, data={"epochs": 3}, provider=PROVIDER)],
                        snapshot_id="snap-1", submitted_at=1700000000.0, project="/home/me/p")
    with h.store.transaction():
        view = plain(h.scheduler.submit_run(request, service_caller("guest")))
    assert view["run_name"] == RUN and view["status"] == "queued"
    assert [j["job_id"] for j in view["jobs"]] == [PROVIDER_TASK]
    assert [(w["name"], w["status"]) for w in view["workflows"]] == [(WF, "submitted")]
    assert view["variables"] == {}
    assert h.sent == []  # written to the outbox only
    outbox = h.outbox()
    assert len(outbox) == 1
    _, queue, actor, payload = outbox[0]
    assert (queue, actor) == (task_queue(), TASK_ACTOR)

    h.scheduler.flush_outbox()
    assert h.outbox() == []
    assert len(h.sent) == 1
    queue, actor, message = h.messages()[0]
    assert (queue, actor) == ("dstack.tasks.cpu", "run_task")
    assert message == ProviderTask(run_name=RUN, task_id=PROVIDER_TASK, attempt=1, workflow=WF, provider=PROVIDER,
                                   data={"epochs": 3}, snapshot_id="snap-1", owner="guest")

    run = h.run()
    assert run.status is Status.QUEUED
    assert (run.workflow, run.snapshot_id, run.project, run.submitted_at) == (WF, "snap-1", "/home/me/p",
                                                                              1700000000.0)
    task = h.task(PROVIDER_TASK)
    assert task.kind is Kind.PROVIDER and task.status is Status.QUEUED and task.worker_id is None
    workflow = h.task(WF)  # the workflow record: no container, waits for its provider
    assert workflow.kind is Kind.WORKFLOW and workflow.status is Status.SUBMITTED
    assert workflow.depends_on == [PROVIDER_TASK] and workflow.deps_left == 1


def test_handle_request_flushes_and_notifies(h: Harness) -> None:
    view = h.submit()
    assert view["status"] == "queued"
    assert len(h.sent) == 1 and h.outbox() == []
    assert h.notified and h.notified[-1][0] == RUN
    update = h.notified[-1][1]
    assert update["run"]["run_name"] == RUN
    assert [j["job_id"] for j in update["jobs"]] == [PROVIDER_TASK]


def test_outbox_survives_a_failed_send(h: Harness) -> None:
    h.fail_send = True
    with pytest.raises(ConnectionError):
        h.submit()
    assert h.run().status is Status.QUEUED  # the change was committed before sending
    assert len(h.outbox()) == 1
    h.fail_send = False
    h.scheduler.flush_outbox()  # as the service does on start
    assert h.outbox() == []
    assert isinstance(h.messages()[0][2], ProviderTask)


def test_resubmit_is_idempotent(h: Harness) -> None:
    first = h.submit()
    second = h.submit()
    assert second["run_name"] == first["run_name"]
    assert second["status"] == first["status"] == "queued"
    assert [j["job_id"] for j in second["jobs"]] == [PROVIDER_TASK]
    assert len(h.sent) == 1  # no second provider task
    assert list(h.tasks()) == [PROVIDER_TASK]
    assert list(h.records()) == [WF, PROVIDER_TASK]  # nor a second workflow record


def test_resubmit_with_other_snapshot_rejected(h: Harness) -> None:
    h.submit(snapshot="snap-1")
    with pytest.raises(RequestRejected, match=f"a run named '{RUN}' exists already"):
        h.submit(snapshot="snap-2")
    with pytest.raises(RequestRejected):
        h.submit(workflow="other", snapshot="snap-1")
    assert h.run().snapshot_id == "snap-1"
    assert len(h.sent) == 1


def test_another_submission_that_drew_a_taken_name_is_told_so(h: Harness) -> None:
    # two CLIs submit the same workflow of the same project and draw the same run name: not a resend
    h.submit(submitted_at=1700000000.0)
    with pytest.raises(RunNameTaken, match=f"a run named '{RUN}' exists already"):
        h.submit(submitted_at=1700000000.5)
    assert len(h.sent) == 1


@pytest.mark.parametrize("run,workflow", [("bad name", WF), (RUN, "../etc"), ("", WF), (RUN, "-x")])
def test_submit_invalid_names(h: Harness, run: str, workflow: str) -> None:
    with pytest.raises(RequestRejected, match="invalid run or workflow name"):
        h.submit(run=run, workflow=workflow)
    assert h.sent == [] and h.outbox() == []


def test_get_runs(h: Harness) -> None:
    h.submit(run="older")
    h.scheduler.handle_request(SubmitRun(run_name="newer", workflow=WF,
                                         workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER)],
                                         snapshot_id="s", submitted_at=1800000000.0))
    runs = h.scheduler.handle_request(GetRuns())
    assert [r["run_name"] for r in runs] == ["newer", "older"]
    assert [r["run_name"] for r in h.scheduler.handle_request(GetRuns(limit=1))] == ["newer"]
    (only,) = h.scheduler.handle_request(GetRuns(run_name="older"))
    assert only["jobs"][0]["job_id"] == PROVIDER_TASK
    with pytest.raises(RequestRejected, match="no run named 'ghost'"):
        h.scheduler.handle_request(GetRuns(run_name="ghost"))


def test_unknown_requests_and_events(h: Harness) -> None:
    with pytest.raises(RequestRejected):
        h.scheduler.handle_request(TaskStarted(RUN, "x", 1, "w", Endpoint("h")))
    with pytest.raises(RequestRejected):
        h.scheduler.handle_event(StopRun(RUN))


# ----------------------------------------------------------------------------- claim


def test_claim_granted_once(h: Harness) -> None:
    h.submit()
    assert h.claim(PROVIDER_TASK, "w1") == {"granted": True, "reason": "", "secrets": {}}
    assert h.task(PROVIDER_TASK).worker_id == "w1"
    assert h.claim(PROVIDER_TASK, "w1")["granted"]  # the same worker again (redelivered)
    refused = h.claim(PROVIDER_TASK, "w2")
    assert refused["granted"] is False
    assert "w1" in refused["reason"]


def test_claim_after_start_same_worker_only(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK, "w1")
    assert h.claim(PROVIDER_TASK, "w1")["granted"]
    assert not h.claim(PROVIDER_TASK, "w2")["granted"]


def test_claim_unknown_task_or_attempt(h: Harness) -> None:
    h.submit()
    assert not h.claim("train.9")["granted"]
    assert not h.claim(PROVIDER_TASK, attempt=2)["granted"]
    assert not h.claim(PROVIDER_TASK, run="other-run")["granted"]
    assert h.task(PROVIDER_TASK).worker_id is None


def test_claim_stopped_task_refused(h: Harness) -> None:
    h.submit()
    h.scheduler.handle_request(StopRun(RUN))
    refused = h.claim(PROVIDER_TASK, "w1")
    assert refused == {"granted": False, "reason": "the task is stopped", "secrets": {}}


def test_claim_finished_task_refused_even_for_its_worker(h: Harness) -> None:
    h.provider_creates([spec("a")])
    assert not h.claim(PROVIDER_TASK, "w-provider")["granted"]
    assert not h.claim(PROVIDER_TASK, "w1")["granted"]


def test_claim_job_not_released_yet_refused(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"])])
    assert h.task("train.1").status is Status.SUBMITTED
    assert not h.claim("train.1", "w1")["granted"]


# ----------------------------------------------------------------------------- provider -> jobs


def test_provider_creates_jobs_and_enqueues_roots(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK, worker="w-provider")
    assert h.run().status is Status.RUNNING
    assert h.task(PROVIDER_TASK).status is Status.RUNNING
    before = len(h.sent)
    h.finish(PROVIDER_TASK, jobs=[
        spec("prep", artifacts=["data/"]),
        spec("left", ["prep"]),
        spec("right", ["prep"]),
        spec("join", ["left", "right"]),
        spec("lint", ports=[8080], env={"A": "1"}),
    ])
    tasks = h.tasks()
    assert set(tasks) == {PROVIDER_TASK, "train.0", "train.1", "train.2", "train.3", "train.4"}
    assert tasks[PROVIDER_TASK].status is Status.DONE
    assert tasks[PROVIDER_TASK].exit_code == 0
    assert {t: tasks[t].status for t in tasks if t != PROVIDER_TASK} == {
        "train.0": Status.QUEUED, "train.1": Status.SUBMITTED, "train.2": Status.SUBMITTED,
        "train.3": Status.SUBMITTED, "train.4": Status.QUEUED}
    assert tasks["train.3"].depends_on == ["train.1", "train.2"]
    assert tasks["train.3"].deps_left == 2
    assert all(tasks[t].kind is Kind.JOB for t in tasks if t != PROVIDER_TASK)

    released = h.job_tasks(before)
    assert len(h.sent) - before == 2
    assert sorted(m.job.job_id for m in released) == ["train.0", "train.4"]
    by_id = {m.job.job_id: m for m in released}
    prep = by_id["train.0"]
    assert (prep.run_name, prep.attempt, prep.snapshot_id, prep.master) == (RUN, 1, "snap-1", None)
    assert prep.job.artifacts == ["data"]  # normalised by the graph check
    assert prep.job.commands == ["echo prep"]
    assert by_id["train.4"].job.ports == [8080] and by_id["train.4"].job.env == {"A": "1"}
    assert h.run().status is Status.RUNNING


def test_duplicate_provider_finished_is_ignored(h: Harness) -> None:
    jobs = [spec("a"), spec("b", ["a"])]
    h.provider_creates(jobs)
    sent, tasks = len(h.sent), h.tasks()
    h.finish(PROVIDER_TASK, jobs=[spec("a"), spec("b", ["a"])])
    h.finish(PROVIDER_TASK, status="failed", exit_code=1, reason="late")
    assert len(h.sent) == sent
    after = h.tasks()
    assert set(after) == set(tasks) == {PROVIDER_TASK, "train.0", "train.1"}
    assert after[PROVIDER_TASK].status is Status.DONE and after[PROVIDER_TASK].reason == ""


def test_duplicate_job_finished_is_ignored(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("c", ["a"])])
    h.start("train.0")
    h.finish("train.0")
    sent = len(h.sent)
    h.finish("train.0")
    assert len(h.sent) == sent
    assert h.task("train.1").deps_left == 0 and h.task("train.1").status is Status.QUEUED


def test_duplicate_task_started_is_ignored(h: Harness) -> None:
    h.provider_creates([spec("a")])
    h.start("train.0", hostname="host-1", ports=[30001])
    sent = len(h.sent)
    h.scheduler.handle_event(TaskStarted(RUN, "train.0", 1, "w1", Endpoint("host-1", [30001])))
    assert len(h.sent) == sent
    assert h.task("train.0").status is Status.RUNNING


def test_event_for_another_attempt_is_ignored(h: Harness) -> None:
    h.provider_creates([spec("a")])
    h.scheduler.handle_event(TaskFinished(RUN, "train.0", attempt=2, status=Status.DONE))
    assert h.task("train.0").status is Status.QUEUED
    h.scheduler.handle_event(TaskStarted(RUN, "train.0", 2, "w1", Endpoint("h")))
    assert h.task("train.0").status is Status.QUEUED


def test_completion_releases_dependent(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("c", ["b"])])
    h.start("train.0")
    sent = len(h.sent)
    assert h.task("train.1").status is Status.SUBMITTED
    h.finish("train.0")  # the event alone releases b: nothing polls
    assert len(h.sent) == sent + 1
    (released,) = h.job_tasks(sent)
    assert released.job.job_id == "train.1"
    assert released.job.depends_on == ["train.0"]
    assert h.task("train.1").status is Status.QUEUED
    assert h.task("train.1").deps_left == 0
    assert h.task("train.2").status is Status.SUBMITTED  # c waits for b

    h.start("train.1")
    sent = len(h.sent)
    h.finish("train.1")
    assert [m.job.job_id for m in h.job_tasks(sent)] == ["train.2"]


def test_join_waits_for_every_dependency(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b"), spec("join", ["a", "b"])])
    for task_id in ("train.0", "train.1"):
        h.start(task_id)
    sent = len(h.sent)
    h.finish("train.0")
    assert len(h.sent) == sent
    assert h.task("train.2").deps_left == 1
    h.finish("train.1")
    assert [m.job.job_id for m in h.job_tasks(sent)] == ["train.2"]


def test_run_done_when_every_job_done(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"])])
    for task_id in ("train.0", "train.1"):
        h.start(task_id)
        h.finish(task_id)
    run = h.run()
    assert run.status is Status.DONE
    assert run.reason == ""
    assert run.finished_at is not None and run.started_at is not None
    assert h.notified[-1][1]["run"]["status"] == "done"
    assert h.task(WF).status is Status.DONE  # after its provider and every job


def test_failed_job_fails_dependents_transitively(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("c", ["b"]), spec("d", ["a", "c"])])
    h.start("train.0")
    sent = len(h.sent)
    h.finish("train.0", status="failed", exit_code=3, reason="exit code 3")
    assert len(h.sent) == sent  # nothing released
    tasks = h.tasks()
    assert tasks["train.0"].status is Status.FAILED and tasks["train.0"].exit_code == 3
    assert tasks["train.1"].status is Status.FAILED
    assert tasks["train.1"].reason == "dependency train.0 failed"
    assert tasks["train.2"].status is Status.FAILED
    assert tasks["train.2"].reason == "dependency train.1 failed"
    assert tasks["train.3"].status is Status.FAILED
    assert tasks["train.3"].reason in ("dependency train.0 failed", "dependency train.2 failed")
    assert all(tasks[t].finished_at is not None for t in tasks)
    workflow = h.task(WF)
    assert workflow.status is Status.FAILED and workflow.reason == "dependency train.0 failed"
    run = h.run()
    assert run.status is Status.FAILED
    assert run.reason == "train.0: exit code 3"  # a job's reason, not the workflow record's
    assert run.finished_at is not None


def test_failed_job_leaves_independent_jobs_running(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("other")])
    h.start("train.0")
    h.start("train.2")
    h.finish("train.0", status="failed", exit_code=1, reason="boom")
    assert h.task("train.2").status is Status.RUNNING
    assert h.run().status is Status.RUNNING
    h.finish("train.2")
    assert h.run().status is Status.FAILED
    assert h.run().reason == "train.0: boom"


def test_provider_failure_fails_run(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK)
    h.finish(PROVIDER_TASK, status="failed", exit_code=2, reason="field 'url': ... (rule: type)")
    run = h.run()
    assert run.status is Status.FAILED
    assert run.reason == "train.provider: field 'url': ... (rule: type)"
    assert list(h.tasks()) == [PROVIDER_TASK]
    workflow = h.task(WF)
    assert workflow.status is Status.FAILED and workflow.reason == "dependency train.provider failed"


# ----------------------------------------------------------------------------- master


def test_master_follower_released_when_master_runs(h: Harness) -> None:
    h.provider_creates([spec("master", ports=[29500]), spec("follower", master="master")])
    released = h.job_tasks()
    assert [m.job.job_id for m in released] == ["train.0"]
    follower = h.task("train.1")
    assert follower.status is Status.SUBMITTED and follower.master == "train.0" and follower.deps_left == 0

    assert h.claim("train.0", "gpu-worker")["granted"]
    assert h.task("train.1").status is Status.SUBMITTED  # claimed is not running
    sent = len(h.sent)
    h.scheduler.handle_event(TaskStarted(RUN, "train.0", 1, "gpu-worker", Endpoint("gpu-1.internal", [30500])))
    (message,) = h.job_tasks(sent)
    assert message.job.job_id == "train.1"
    assert message.job.master == "train.0"
    assert message.master == Endpoint(hostname="gpu-1.internal", ports=[30500])
    assert h.task("train.1").status is Status.QUEUED
    assert h.task("train.0").hostname == "gpu-1.internal" and h.task("train.0").ports == [30500]


def test_master_with_dependency_waits_for_both(h: Harness) -> None:
    h.provider_creates([spec("master"), spec("prep"), spec("worker", ["prep"], master="master")])
    h.start("train.0", hostname="m-host", ports=[1234])
    assert h.task("train.2").status is Status.SUBMITTED  # prep not done yet
    h.start("train.1")
    sent = len(h.sent)
    h.finish("train.1")
    (message,) = h.job_tasks(sent)
    assert message.job.job_id == "train.2"
    assert message.master == Endpoint("m-host", [1234])


def test_master_failing_before_start_fails_follower(h: Harness) -> None:
    h.provider_creates([spec("master"), spec("follower", master="master")])
    h.finish("train.0", status="failed", exit_code=None, reason="image not found")
    follower = h.task("train.1")
    assert follower.status is Status.FAILED
    assert follower.reason == "master train.0 failed before this job started"
    assert h.run().status is Status.FAILED


def test_master_done_before_follower_released_does_not_hang_the_run(h: Harness) -> None:
    h.provider_creates([spec("master"), spec("prep"), spec("follower", ["prep"], master="master")])
    h.start("train.0")
    h.finish("train.0")  # the master ends while the follower still waits for prep
    h.start("train.1")
    h.finish("train.1")
    assert h.task("train.2").status.finished
    assert h.run().status.finished


def test_follower_that_also_depends_on_its_master_does_not_hang_the_run(h: Harness) -> None:
    h.provider_creates([spec("master"), spec("follower", ["master"], master="master")])
    h.start("train.0")
    h.finish("train.0")
    follower = h.task("train.1")
    assert follower.status is Status.FAILED
    assert follower.reason == "master train.0 done before this job started"
    assert h.run().status is Status.FAILED


def test_dependency_listed_twice_is_waited_for_once(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a", "a"])])
    h.start("train.0")
    sent = len(h.sent)
    h.finish("train.0")
    assert [m.job.job_id for m in h.job_tasks(sent)] == ["train.1"]


# ----------------------------------------------------------------------------- stop


def test_stop_run(h: Harness) -> None:
    h.provider_creates([spec("running"), spec("queued"), spec("waiting", ["running"])])
    h.start("train.0", worker="w1")
    sent = len(h.sent)
    view = h.scheduler.handle_request(StopRun(RUN, abort=True))
    assert view["status"] == "running"
    tasks = h.tasks()
    assert tasks["train.1"].status is Status.STOPPED
    assert tasks["train.1"].reason == "stopped before it started"
    assert tasks["train.2"].status is Status.STOPPED
    assert tasks["train.0"].status is Status.RUNNING
    (message,) = h.messages(sent)
    assert message == (worker_queue("w1"), CONTROL_ACTOR, StopTask(RUN, "train.0", 1, abort=True))
    assert message[0] == "dstack.worker.w1"

    refused = h.claim("train.1", "w2")
    assert refused["granted"] is False
    assert h.run().stop_requested

    h.finish("train.0", status="stopped", exit_code=143)
    run = h.run()
    assert run.status is Status.STOPPED
    assert run.finished_at is not None


def test_stop_queued_provider(h: Harness) -> None:
    h.submit()
    sent = len(h.sent)
    h.scheduler.handle_request(StopRun(RUN))
    assert len(h.sent) == sent  # nobody to tell
    assert h.task(PROVIDER_TASK).status is Status.STOPPED
    assert h.run().status is Status.STOPPED


def test_stop_claimed_task_tells_its_worker(h: Harness) -> None:
    h.submit()
    assert h.claim(PROVIDER_TASK, "w7")["granted"]
    sent = len(h.sent)
    h.scheduler.handle_request(StopRun(RUN))
    assert h.messages(sent) == [(worker_queue("w7"), CONTROL_ACTOR, StopTask(RUN, PROVIDER_TASK, 1, False))]


def test_started_after_stop_is_told_to_stop(h: Harness) -> None:
    h.submit()
    h.scheduler.handle_request(StopRun(RUN))
    sent = len(h.sent)
    # A worker that got the task before the stop starts it anyway.
    h.scheduler.handle_event(TaskStarted(RUN, PROVIDER_TASK, 1, "w3", Endpoint("h3")))
    assert h.messages(sent) == [(worker_queue("w3"), CONTROL_ACTOR, StopTask(RUN, PROVIDER_TASK, 1))]
    assert h.task(PROVIDER_TASK).status is Status.STOPPED


def test_provider_done_after_stop_creates_no_jobs(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK)
    h.scheduler.handle_request(StopRun(RUN))
    h.finish(PROVIDER_TASK, jobs=[spec("a")])
    assert list(h.tasks()) == [PROVIDER_TASK]
    assert list(h.records()) == [WF, PROVIDER_TASK]
    assert h.task(WF).status is Status.STOPPED
    assert h.run().status is Status.STOPPED


def test_stop_finished_run_changes_nothing(h: Harness) -> None:
    h.provider_creates([spec("a")])
    h.start("train.0")
    h.finish("train.0")
    sent = len(h.sent)
    view = h.scheduler.handle_request(StopRun(RUN))
    assert view["status"] == "done"
    assert len(h.sent) == sent
    assert not h.run().stop_requested


def test_stop_unknown_run(h: Harness) -> None:
    with pytest.raises(RequestRejected, match="no run named"):
        h.scheduler.handle_request(StopRun("ghost"))


# ----------------------------------------------------------------------------- refused graphs


def test_provider_jobs_with_cycle_fail_provider(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK)
    sent = len(h.sent)
    h.finish(PROVIDER_TASK, jobs=[spec("a", ["c"]), spec("b", ["a"]), spec("c", ["b"])])
    assert len(h.sent) == sent
    assert list(h.tasks()) == [PROVIDER_TASK]  # no job recorded
    provider = h.task(PROVIDER_TASK)
    assert provider.status is Status.FAILED
    assert "dependency cycle" in provider.reason
    assert provider.reason.startswith("the provider's jobs were refused: ")
    run = h.run()
    assert run.status is Status.FAILED
    assert "dependency cycle" in run.reason and run.reason.startswith("train.provider: ")


@pytest.mark.parametrize("jobs,fragment", [
    ([], "no jobs"),
    ([spec("a", artifacts=["../x"])], "leaves the project root"),
    ([spec("a", ["ghost"])], "does not exist"),
    ([spec("a"), spec("a")], "two jobs"),
])
def test_provider_jobs_refused(h: Harness, jobs: list[JobSpec], fragment: str) -> None:
    h.submit()
    h.start(PROVIDER_TASK)
    h.finish(PROVIDER_TASK, jobs=jobs)
    assert list(h.tasks()) == [PROVIDER_TASK]
    assert h.task(PROVIDER_TASK).status is Status.FAILED
    assert fragment in h.task(PROVIDER_TASK).reason
    assert h.run().status is Status.FAILED


def test_provider_done_without_jobs_field(h: Harness) -> None:
    h.submit()
    h.start(PROVIDER_TASK)
    h.finish(PROVIDER_TASK, jobs=None)
    assert h.task(PROVIDER_TASK).status is Status.FAILED
    assert "no jobs" in h.task(PROVIDER_TASK).reason


# ----------------------------------------------------------------------------- store order


def test_tasks_listed_in_creation_order(h: Harness) -> None:
    h.provider_creates([spec("a"), spec("b", ["a"]), spec("c")])
    h.start("train.0")
    assert list(h.tasks()) == [PROVIDER_TASK, "train.0", "train.1", "train.2"]
    assert list(h.records()) == [WF, PROVIDER_TASK, "train.0", "train.1", "train.2"]


def test_state_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from dstack.errors import DstackError

    path = tmp_path / "state.db"
    SqliteStateStore(path).close()
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version = 1")
    db.close()
    with pytest.raises(DstackError, match="schema version 1, not 4"):
        SqliteStateStore(path)


def test_an_app_has_a_url_only_while_its_job_runs() -> None:
    from dstack.scheduler.model import Kind, Status

    app = AppSpec(name="lab", port_index=1, url_path="/lab", url_query_params={"token": "a b"})
    task = TaskRecord(run_name="r", task_id="w.0", kind=Kind.JOB, workflow="w", status=Status.RUNNING,
                      spec=JobState(job=JobSpec(job_id="w.0", image="alpine", commands=[], apps=[app])),
                      hostname="gpu-7", ports=[6006, 8888])
    assert plain(task.job_view())["apps"] == [{"name": "lab", "url": "http://gpu-7:8888/lab?token=a+b"}]
    task.status = Status.DONE
    assert plain(task.job_view())["apps"] == [{"name": "lab", "url": None}]


def test_the_cli_draws_another_name_while_the_one_drawn_is_taken(h: Harness,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from dstack import names
    from dstack.cli import runs

    h.submit()  # RUN exists
    drawn = iter([RUN, RUN, "fresh-otter-1234"])
    monkeypatch.setattr(names, "new_run_name", lambda: next(drawn))

    class Rpc:
        def call(self, request: object) -> object:
            return h.scheduler.handle_request(request)

    spec = WorkflowSpec(name=WF, data={"jobs": 2}, provider=PROVIDER)
    request = SubmitRun(run_name="", workflow=WF, workflows=[spec], snapshot_id="snap-1", submitted_at=0.0,
                        project="/p")
    assert runs._submit(Rpc(), request) == "fresh-otter-1234"  # type: ignore[arg-type]
    assert h.run("fresh-otter-1234").submitted_at > 1700000000.0
