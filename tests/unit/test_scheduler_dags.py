"""scheduler: runs of several workflows (a DAG), their variables and inputs, failures across
workflows, tags, restarts, and the work one event costs. A real SqliteStateStore in tmp_path;
``send`` and ``notify`` are the recording fakes of test_scheduler_logic.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from dstack.errors import RequestRejected
from dstack.messages import (
    ArtifactRef,
    Endpoint,
    GetRuns,
    GetTags,
    JobSpec,
    JobTask,
    ProviderRepo,
    ProviderTask,
    RestartRun,
    RetryPolicy,
    StopRun,
    StopTask,
    SubmitRun,
    TagRef,
    TagRun,
    TaskFinished,
    TaskStarted,
    UntagRun,
    WorkflowSpec,
)
from dstack.names import worker_queue
from dstack.scheduler.flow import CONTROL_ACTOR
from dstack.scheduler.model import Kind, Status
from tests.scheduler_harness import PROVIDER, RUN, Harness, spec

VARIABLES = {"epochs": 3, "lr": 0.01}


def wf(name: str, depends_on: Sequence[str] = (), tagged: Sequence[TagRef] = (),
       variables: Optional[dict[str, Any]] = None, **data: Any) -> WorkflowSpec:
    return WorkflowSpec(name=name, data=data, provider=PROVIDER, depends_on=list(depends_on), tagged=list(tagged),
                        variables=dict(variables or {}))


class Dag(Harness):
    """The harness of test_scheduler_logic, with runs of several workflows and any attempt."""

    def submit_dag(self, workflows: list[WorkflowSpec], target: Optional[str] = None, run: str = RUN,
                   snapshot: str = "snap-1") -> Any:
        return self.scheduler.handle_request(SubmitRun(
            run_name=run, workflow=target or workflows[-1].name, workflows=workflows, snapshot_id=snapshot,
            submitted_at=1700000000.0, project="/p"))

    def start(self, task_id: str, worker: str = "w1", hostname: str = "host-1", ports: Sequence[int] = (),
              run: str = RUN, attempt: int = 1) -> None:
        assert self.claim(task_id, worker, attempt=attempt, run=run)["granted"], task_id
        self.scheduler.handle_event(TaskStarted(run_name=run, task_id=task_id, attempt=attempt, worker_id=worker,
                                                endpoint=Endpoint(hostname=hostname, ports=list(ports))))

    def finish(self, task_id: str, status: str = "done", jobs: Optional[list[JobSpec]] = None,
               exit_code: Optional[int] = 0, reason: str = "", run: str = RUN, attempt: int = 1) -> None:
        self.scheduler.handle_event(TaskFinished(run_name=run, task_id=task_id, attempt=attempt, status=Status(status),
                                                 exit_code=exit_code, reason=reason, jobs=jobs))

    def complete(self, task_id: str, run: str = RUN, attempt: int = 1, **finish: Any) -> None:
        self.start(task_id, run=run, attempt=attempt)
        self.finish(task_id, run=run, attempt=attempt, **finish)

    def provide(self, workflow: str, jobs: list[JobSpec], run: str = RUN, attempt: int = 1) -> None:
        """Run the workflow's provider, which creates ``jobs``."""
        self.complete(f"{workflow}.provider", run=run, attempt=attempt, jobs=jobs)

    def provider_tasks(self, since: int = 0) -> list[ProviderTask]:
        return [m for _, _, m in self.messages(since) if isinstance(m, ProviderTask)]

    def enqueued(self, since: int = 0) -> list[str]:
        """The ids of the tasks sent to the task queue since ``since``, in order."""
        found = []
        for _, _, message in self.messages(since):
            if isinstance(message, ProviderTask):
                found.append(message.task_id)
            elif isinstance(message, JobTask):
                found.append(message.job.job_id)
        return found

    def statuses(self, run: str = RUN) -> dict[str, Status]:
        return {task_id: t.status for task_id, t in self.records(run).items()}


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Dag]:
    harness = Dag(tmp_path / "scheduler" / "state.db")
    yield harness
    harness.store.close()


def chain() -> list[WorkflowSpec]:
    return [wf("prepare", variables={"seed": 1}),
            wf("train", ["prepare"], variables=VARIABLES, script="train.py"),
            wf("evaluate", ["train"], variables={"threshold": 0.9})]


# ----------------------------------------------------------------------------- a chain of workflows


def test_only_the_first_provider_is_enqueued(h: Dag) -> None:
    view = h.submit_dag(chain())
    assert h.enqueued() == ["prepare.provider"]
    assert view["status"] == "queued"
    assert [w["name"] for w in view["workflows"]] == ["prepare", "train", "evaluate"]
    assert {w["name"]: w["depends_on"] for w in view["workflows"]} == {
        "prepare": [], "train": ["prepare"], "evaluate": ["train"]}
    assert view["variables"] == {"threshold": 0.9}  # those of the target workflow
    assert [j["job_id"] for j in view["jobs"]] == ["prepare.provider", "train.provider", "evaluate.provider"]
    assert h.statuses() == {
        "prepare": Status.SUBMITTED, "prepare.provider": Status.QUEUED,
        "train": Status.SUBMITTED, "train.provider": Status.SUBMITTED,
        "evaluate": Status.SUBMITTED, "evaluate.provider": Status.SUBMITTED}
    assert h.task("train.provider").deps_left == 1
    assert all(h.task(w).kind is Kind.WORKFLOW for w in ("prepare", "train", "evaluate"))


def test_submission_order_does_not_matter(h: Dag) -> None:
    h.submit_dag(list(reversed(chain())), target="evaluate")
    assert h.enqueued() == ["prepare.provider"]


def test_downstream_provider_waits_for_the_provider_and_every_job(h: Dag) -> None:
    h.submit_dag(chain())
    h.provide("prepare", [spec("a", artifacts=["data"]), spec("b", ["a"]), spec("c", artifacts=["out", "logs"])])
    assert h.task("prepare.provider").status is Status.DONE
    assert h.task("train.provider").status is Status.SUBMITTED  # the jobs are not done yet
    assert h.task("prepare").status is Status.SUBMITTED
    for job in ("prepare.0", "prepare.2"):
        sent = len(h.sent)
        h.complete(job)
        assert "train.provider" not in h.enqueued(sent)
        assert h.task("train.provider").status is Status.SUBMITTED
    h.start("prepare.1")
    sent = len(h.sent)
    h.finish("prepare.1")
    assert h.task("prepare").status is Status.DONE
    assert h.enqueued(sent) == ["train.provider"]
    (provider,) = h.provider_tasks(sent)
    assert provider.workflow == "train" and provider.attempt == 1 and provider.snapshot_id == "snap-1"
    assert provider.provider == PROVIDER and provider.provider_repo is None
    assert provider.data == {"script": "train.py"}
    # the artifacts of prepare's jobs that have any, in the jobs' order
    assert provider.inputs == [ArtifactRef(RUN, "prepare.0"), ArtifactRef(RUN, "prepare.2")]
    assert provider.env == {"EPOCHS": "3", "LR": "0.01"}  # the variables, upper-cased, as text
    assert h.task("evaluate.provider").status is Status.SUBMITTED


def test_first_provider_has_no_inputs_and_its_own_variables(h: Dag) -> None:
    h.submit_dag(chain())
    (provider,) = h.provider_tasks()
    assert provider.inputs == [] and provider.env == {"SEED": "1"}
    h.provide("prepare", [spec("a", env={"X": "y"})])
    (job,) = h.job_tasks()
    assert job.inputs == [] and job.job.env == {"SEED": "1", "X": "y"}


def test_jobs_of_a_downstream_workflow_carry_variables_and_inputs(h: Dag) -> None:
    h.submit_dag(chain())
    h.provide("prepare", [spec("a", artifacts=["data"]), spec("b")])
    h.complete("prepare.0")
    h.complete("prepare.1")
    inputs = [ArtifactRef(RUN, "prepare.0")]
    sent = len(h.sent)
    h.provide("train", [spec("x", env={"EPOCHS": "999", "OTHER": "1"}, artifacts=["model"]), spec("y", ["x"])])
    (x,) = h.job_tasks(sent)
    assert x.job.job_id == "train.0"
    assert x.job.env == {"EPOCHS": "999", "LR": "0.01", "OTHER": "1"}  # the job's own value wins
    assert x.inputs == inputs
    assert h.task("train.0").job_state.job.env == x.job.env  # recorded as sent
    sent = len(h.sent)
    h.complete("train.0")
    (y,) = h.job_tasks(sent)
    assert y.job.job_id == "train.1"
    assert y.job.env == {"EPOCHS": "3", "LR": "0.01"}
    assert y.inputs == inputs + [ArtifactRef(RUN, "train.0")]  # and those of the job it depends on
    # the next workflow gets the artifacts of the workflow it depends on
    sent = len(h.sent)
    h.complete("train.1")
    (evaluate,) = h.provider_tasks(sent)
    assert evaluate.inputs == [ArtifactRef(RUN, "train.0")]
    assert evaluate.env == {"THRESHOLD": "0.9"}


def test_run_of_a_chain_ends_done(h: Dag) -> None:
    h.submit_dag(chain())
    for workflow in ("prepare", "train", "evaluate"):
        assert h.run().status is not Status.DONE
        h.provide(workflow, [spec("a"), spec("b", ["a"])])
        h.complete(f"{workflow}.0")
        h.complete(f"{workflow}.1")
        assert h.task(workflow).status is Status.DONE
    run = h.run()
    assert run.status is Status.DONE and run.reason == "" and run.finished_at is not None
    (view,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    assert view["status"] == "done"
    assert [(w["name"], w["status"]) for w in view["workflows"]] == [
        ("prepare", "done"), ("train", "done"), ("evaluate", "done")]
    assert all(j["kind"] in ("provider", "job") for j in view["jobs"])
    assert len(view["jobs"]) == 9
    assert h.notified[-1][1]["run"]["status"] == "done"
    assert all(j["job_id"] not in ("prepare", "train", "evaluate") for _, u in h.notified for j in u["jobs"])


def test_provider_from_another_repository(h: Dag) -> None:
    repo = ProviderRepo(url="https://github.com/acme/providers.git", name="scorer")
    h.submit_dag([WorkflowSpec(name="score", data={"k": 1}, provider_repo=repo)])
    (provider,) = h.provider_tasks()
    assert provider.provider is None and provider.provider_repo == repo and provider.data == {"k": 1}
    h.claim("score.provider")
    h.scheduler.handle_event(TaskStarted(RUN, "score.provider", 1, "w1", Endpoint("h"), provider_commit="abc123"))
    assert h.task("score").spec.provider_commit == "abc123"
    (view,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    assert view["workflows"][0]["provider_commit"] == "abc123"
    assert view["jobs"][0]["provider_commit"] == "abc123"


# ----------------------------------------------------------------------------- a diamond


def diamond() -> list[WorkflowSpec]:
    return [wf("a"), wf("b", ["a"]), wf("c", ["a"]), wf("d", ["b", "c"])]


def test_diamond_enqueues_the_join_once_after_both(h: Dag) -> None:
    h.submit_dag(diamond())
    assert h.enqueued() == ["a.provider"]
    h.provide("a", [spec("x", artifacts=["x"])])
    sent = len(h.sent)
    h.complete("a.0")
    assert sorted(h.enqueued(sent)) == ["b.provider", "c.provider"]
    assert h.task("d.provider").deps_left == 2
    h.provide("b", [spec("x", artifacts=["x"])])
    h.complete("b.0")
    assert h.task("b").status is Status.DONE
    assert h.task("d.provider").status is Status.SUBMITTED and h.task("d.provider").deps_left == 1
    h.provide("c", [spec("x", artifacts=["x"]), spec("y")])
    h.complete("c.0")
    sent = len(h.sent)
    h.complete("c.1")
    assert h.enqueued(sent) == ["d.provider"]
    h.finish("c.1")  # a redelivered event
    (d,) = [p for p in h.provider_tasks() if p.task_id == "d.provider"]  # once in all
    assert sorted(d.inputs, key=lambda r: r.job_id) == [ArtifactRef(RUN, "b.0"), ArtifactRef(RUN, "c.0")]
    h.provide("d", [spec("x")])
    h.complete("d.0")
    assert h.run().status is Status.DONE


def test_workflow_dependency_listed_twice_is_waited_for_once(h: Dag) -> None:
    h.submit_dag([wf("a"), wf("b", ["a", "a"])])
    h.provide("a", [spec("x")])
    sent = len(h.sent)
    h.complete("a.0")
    assert h.enqueued(sent) == ["b.provider"]


# ----------------------------------------------------------------------------- failures


def failing() -> list[WorkflowSpec]:
    return [wf("prepare"), wf("train", ["prepare"]), wf("other"), wf("report", ["train", "other"])]


def test_failed_job_fails_downstream_workflows_while_independent_ones_go_on(h: Dag) -> None:
    h.submit_dag(failing())
    assert sorted(h.enqueued()) == ["other.provider", "prepare.provider"]
    h.provide("prepare", [spec("a"), spec("b")])
    h.start("other.provider", worker="w2")
    h.start("prepare.1")
    h.start("prepare.0")
    h.finish("prepare.0", status="failed", exit_code=3, reason="exit code 3")
    records = h.records()
    assert records["prepare"].status is Status.FAILED
    assert records["prepare"].reason == "dependency prepare.0 failed"
    assert records["train.provider"].status is Status.FAILED
    assert records["train.provider"].reason == "workflow prepare failed"
    assert records["train"].status is Status.FAILED
    assert records["report.provider"].status is Status.FAILED
    assert records["report.provider"].reason == "workflow train failed"
    assert records["report"].status is Status.FAILED
    # the independent workflow and the other job of prepare go on
    assert records["other.provider"].status is Status.RUNNING
    assert records["prepare.1"].status is Status.RUNNING
    assert h.run().status is Status.RUNNING
    h.finish("prepare.1")
    assert h.run().status is Status.RUNNING  # other still runs
    h.finish("other.provider", jobs=[spec("x")])
    sent = len(h.sent)
    h.start("other.0")
    assert h.run().status is Status.RUNNING
    h.finish("other.0")
    assert h.enqueued(sent) == []  # report was failed: not enqueued
    assert h.task("other").status is Status.DONE
    run = h.run()
    assert run.status is Status.FAILED and run.finished_at is not None


def test_run_reason_names_the_failure_not_a_cancelled_dependent(h: Dag) -> None:
    h.submit_dag([wf("prepare"), wf("train", ["prepare"])])
    h.provide("prepare", [spec("a")])
    h.start("prepare.0")
    h.finish("prepare.0", status="failed", exit_code=3, reason="exit code 3")
    run = h.run()
    assert run.status is Status.FAILED
    assert run.reason == "prepare.0: exit code 3"


def test_failed_provider_fails_downstream(h: Dag) -> None:
    h.submit_dag(chain())
    h.start("prepare.provider")
    sent = len(h.sent)
    h.finish("prepare.provider", status="failed", exit_code=2, reason="bad data")
    assert h.enqueued(sent) == []
    records = h.records()
    assert records["prepare"].reason == "dependency prepare.provider failed"
    assert records["train.provider"].reason == "workflow prepare failed"
    assert records["evaluate.provider"].reason == "workflow train failed"
    assert all(r.status is Status.FAILED for r in records.values())
    run = h.run()
    assert run.status is Status.FAILED
    assert run.reason == "prepare.provider: bad data"


def test_stop_of_a_dag_stops_what_has_not_started(h: Dag) -> None:
    h.submit_dag(chain())
    h.start("prepare.provider", worker="w9")
    sent = len(h.sent)
    h.scheduler.handle_request(StopRun(RUN))
    assert h.messages(sent) == [(worker_queue("w9"), CONTROL_ACTOR, StopTask(RUN, "prepare.provider", 1, False))]
    assert h.task("train.provider").status is Status.STOPPED
    assert h.task("evaluate.provider").status is Status.STOPPED
    h.finish("prepare.provider", status="stopped", exit_code=143)
    assert all(s is Status.STOPPED for s in h.statuses().values())
    assert h.run().status is Status.STOPPED


def test_resubmission_of_a_dag_is_idempotent(h: Dag) -> None:
    first = h.submit_dag(chain())
    second = h.submit_dag(chain())
    assert second["run_name"] == first["run_name"] and second["workflows"] == first["workflows"]
    assert h.enqueued() == ["prepare.provider"]
    assert len(h.records()) == 6


def test_events_naming_a_workflow_record_are_ignored(h: Dag) -> None:
    h.submit_dag(chain())
    h.scheduler.handle_event(TaskStarted(RUN, "prepare", 1, "w1", Endpoint("h")))
    h.scheduler.handle_event(TaskFinished(RUN, "prepare", 1, Status.DONE, exit_code=0))
    assert h.task("prepare").status is Status.SUBMITTED
    assert h.enqueued() == ["prepare.provider"]  # train's provider still waits for prepare's


# ----------------------------------------------------------------------------- submissions refused


def assert_nothing_recorded(h: Dag, run: str = RUN, sent: int = 0) -> None:
    with h.store.transaction():
        assert h.store.get_run(run) is None
        assert h.store.tasks_of(run) == []
    assert h.outbox() == []
    assert len(h.sent) == sent


@pytest.mark.parametrize("workflows,target,fragment", [
    ([wf("a"), wf("b", ["ghost"])], "b", "depends on ['ghost'], which are not in the run"),
    ([wf("a"), wf("b")], "c", "target workflow once"),
    ([wf("a"), wf("a")], "a", "each workflow once"),
    ([wf("a"), wf("bad name")], "a", "invalid run or workflow name"),
])
def test_bad_submission_refused_with_nothing_recorded(h: Dag, workflows: list[WorkflowSpec], target: str,
                                                      fragment: str) -> None:
    with pytest.raises(RequestRejected, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        h.submit_dag(workflows, target=target)
    assert_nothing_recorded(h)


@pytest.mark.parametrize("workflows", [[wf("a", ["b"]), wf("b", ["a"])], [wf("a", ["a"])]])
def test_submission_with_a_cycle_refused(h: Dag, workflows: list[WorkflowSpec]) -> None:
    with pytest.raises(RequestRejected, match="cycle"):
        h.submit_dag(workflows, target="a")
    assert_nothing_recorded(h)


# ----------------------------------------------------------------------------- tags

TAGGED = "tagged-run-0001"


def tagged_run(h: Dag, run: str = TAGGED) -> None:
    """A done run of workflow ``data`` whose first and third jobs have artifacts."""
    h.submit_dag([wf("data")], run=run)
    h.complete("data.provider", run=run, jobs=[spec("a", artifacts=["ds"]), spec("b"), spec("c", artifacts=["x"])])
    for job in ("data.0", "data.1", "data.2"):
        h.complete(job, run=run)
    assert h.run(run).status is Status.DONE


def test_tag_get_and_untag(h: Dag) -> None:
    tagged_run(h)
    assert h.scheduler.handle_request(TagRun(TAGGED, "best")) == {"tag": "best", "run_name": TAGGED}
    assert h.scheduler.handle_request(TagRun(TAGGED, "best")) == {"tag": "best", "run_name": TAGGED}  # again: same
    h.scheduler.handle_request(TagRun(TAGGED, "v1.0"))
    tags = h.scheduler.handle_request(GetTags())
    assert [(t["tag"], t["run_name"], t["status"], t["workflows"]) for t in tags] == [
        ("best", TAGGED, "done", ["data"]), ("v1.0", TAGGED, "done", ["data"])]
    assert all(isinstance(t["created_at"], float) for t in tags)
    assert h.scheduler.handle_request(UntagRun("best")) == {"tag": "best"}
    assert [t["tag"] for t in h.scheduler.handle_request(GetTags())] == ["v1.0"]
    with pytest.raises(RequestRejected, match="no tag named 'best'"):
        h.scheduler.handle_request(UntagRun("best"))


def test_tag_refused(h: Dag) -> None:
    tagged_run(h)
    with pytest.raises(RequestRejected, match="no run named 'ghost'"):
        h.scheduler.handle_request(TagRun("ghost", "best"))
    for bad in ("bad tag", "", "-x", "a/b", "x" * 64):
        with pytest.raises(RequestRejected, match="must be letters, digits"):
            h.scheduler.handle_request(TagRun(TAGGED, bad))
    assert h.scheduler.handle_request(GetTags()) == []


def test_tag_of_another_run_refused(h: Dag) -> None:
    tagged_run(h)
    tagged_run(h, run="second-run-0002")
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    with pytest.raises(RequestRejected, match=f"tag 'best' names run {TAGGED} already; `dstack untag best` first"):
        h.scheduler.handle_request(TagRun("second-run-0002", "best"))
    assert [(t["tag"], t["run_name"]) for t in h.scheduler.handle_request(GetTags())] == [("best", TAGGED)]
    h.scheduler.handle_request(UntagRun("best"))
    h.scheduler.handle_request(TagRun("second-run-0002", "best"))  # once untagged, it may move
    assert [t["run_name"] for t in h.scheduler.handle_request(GetTags())] == ["second-run-0002"]


def test_submission_with_an_unknown_tag_refused_with_nothing_recorded(h: Dag) -> None:
    tagged_run(h)
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    sent = len(h.sent)
    with pytest.raises(RequestRejected) as info:
        h.submit_dag([wf("train", tagged=[TagRef("data", "bset")])])
    assert "workflow 'train' depends on data:bset, but there is no tag 'bset' (known tags: best)" in str(info.value)
    assert_nothing_recorded(h, sent=sent)


def test_submission_with_a_tag_whose_workflow_is_not_done_refused(h: Dag) -> None:
    h.submit_dag([wf("data")], run=TAGGED)  # still queued
    h.scheduler.handle_request(TagRun(TAGGED, "wip"))
    sent = len(h.sent)
    with pytest.raises(RequestRejected, match=f"tag 'wip' names run {TAGGED}, but workflow 'data' is submitted there"):
        h.submit_dag([wf("train", tagged=[TagRef("data", "wip")])])
    with pytest.raises(RequestRejected, match="workflow 'prepare' is not part of it"):
        h.submit_dag([wf("train", tagged=[TagRef("prepare", "wip")])])
    assert_nothing_recorded(h, sent=sent)


def test_submission_with_a_tag_whose_workflow_failed_refused(h: Dag) -> None:
    h.submit_dag([wf("data")], run=TAGGED)
    h.complete("data.provider", run=TAGGED, status="failed", exit_code=1, reason="boom")
    h.scheduler.handle_request(TagRun(TAGGED, "bad"))
    with pytest.raises(RequestRejected, match="workflow 'data' is failed there"):
        h.submit_dag([wf("train", tagged=[TagRef("data", "bad")])])


def test_tagged_input_lists_the_tagged_runs_artifacts(h: Dag) -> None:
    tagged_run(h)
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    sent = len(h.sent)
    view = h.submit_dag([wf("prepare"), wf("train", ["prepare"], tagged=[TagRef("data", "best")])])
    assert view["workflows"][1]["tagged"] == ["data:best"]
    assert h.enqueued(sent) == ["prepare.provider"]  # a tag is no wait: only in-run dependencies are
    h.provide("prepare", [spec("p", artifacts=["p"])])
    # the tag moving after the submission changes nothing for this run
    h.scheduler.handle_request(UntagRun("best"))
    sent = len(h.sent)
    h.complete("prepare.0")
    (train,) = h.provider_tasks(sent)
    expected = [ArtifactRef(TAGGED, "data.0"), ArtifactRef(TAGGED, "data.2"), ArtifactRef(RUN, "prepare.0")]
    assert train.inputs == expected
    sent = len(h.sent)
    h.provide("train", [spec("t")])
    (job,) = h.job_tasks(sent)
    assert job.inputs == expected


def test_tagged_input_alone_enqueues_at_once(h: Dag) -> None:
    tagged_run(h)
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    sent = len(h.sent)
    h.submit_dag([wf("train", tagged=[TagRef("data", "best")])])
    (train,) = h.provider_tasks(sent)
    assert train.inputs == [ArtifactRef(TAGGED, "data.0"), ArtifactRef(TAGGED, "data.2")]


# ----------------------------------------------------------------------------- restart


def failed_chain(h: Dag) -> None:
    """prepare (jobs a, b) -> train -> evaluate, where prepare.1 failed and prepare.0 is done."""
    h.submit_dag(chain())
    h.provide("prepare", [spec("a", artifacts=["a"]), spec("b", artifacts=["b"])])
    h.complete("prepare.0")
    h.complete("prepare.1", status="failed", exit_code=1, reason="flaky")
    assert h.run().status is Status.FAILED


def test_restart_refused_while_running(h: Dag) -> None:
    h.submit_dag(chain())
    with pytest.raises(RequestRejected, match=f"run {RUN} is queued; restart it once it has ended"):
        h.scheduler.handle_request(RestartRun(RUN))
    h.start("prepare.provider")
    with pytest.raises(RequestRejected, match="is running"):
        h.scheduler.handle_request(RestartRun(RUN))


def test_restart_refused_when_nothing_failed(h: Dag) -> None:
    h.submit_dag([wf("a")])
    h.provide("a", [spec("x")])
    h.complete("a.0")
    sent = len(h.sent)
    with pytest.raises(RequestRejected, match=f"nothing to restart in {RUN}: every part is done"):
        h.scheduler.handle_request(RestartRun(RUN))
    assert len(h.sent) == sent and h.run().status is Status.DONE


def test_restart_refused_for_an_unknown_run_or_workflow(h: Dag) -> None:
    failed_chain(h)
    with pytest.raises(RequestRejected, match="no run named 'ghost'"):
        h.scheduler.handle_request(RestartRun("ghost"))
    with pytest.raises(RequestRejected, match=f"run {RUN} has no workflow 'trian' "
                                              r"\(it has: evaluate, prepare, train\)"):
        h.scheduler.handle_request(RestartRun(RUN, "trian"))
    assert h.run().status is Status.FAILED


@pytest.mark.parametrize("name", ["prepare.1", "prepare.provider"])
def test_restart_of_a_task_id_is_not_a_workflow(h: Dag, name: str) -> None:
    failed_chain(h)
    with pytest.raises(RequestRejected, match=f"has no workflow '{name}'"):
        h.scheduler.handle_request(RestartRun(RUN, name))


def test_restart_runs_the_failed_job_and_its_cancelled_dependents(h: Dag) -> None:
    failed_chain(h)
    before = h.records()
    sent = len(h.sent)
    view = h.scheduler.handle_request(RestartRun(RUN))
    assert view["status"] in ("queued", "running") and view["reason"] == "" and view["finished_at"] is None
    assert h.enqueued(sent) == ["prepare.1"]  # done parts are not enqueued again
    (job,) = h.job_tasks(sent)
    assert job.attempt == 2 and job.job.job_id == "prepare.1"
    records = h.records()
    for done in ("prepare.provider", "prepare.0"):
        assert records[done].status is Status.DONE and records[done].attempt == 1
        assert records[done].finished_at == before[done].finished_at
    assert records["prepare.1"].status is Status.QUEUED and records["prepare.1"].attempt == 2
    assert records["prepare.1"].worker_id is None and records["prepare.1"].exit_code is None
    assert records["prepare.1"].reason == ""
    for waiting in ("prepare", "train", "evaluate", "train.provider", "evaluate.provider"):
        assert records[waiting].status is Status.SUBMITTED and records[waiting].reason == "", waiting
        assert records[waiting].finished_at is None
    assert records["train.provider"].attempt == 2 and records["train.provider"].deps_left == 1
    assert records["prepare"].deps_left == 1  # only prepare.1 left
    run = h.run()
    assert not run.status.finished and (run.reason, run.finished_at) == ("", None)

    h.start("prepare.1", attempt=2)
    assert h.run().status is Status.RUNNING
    sent = len(h.sent)
    h.finish("prepare.1", attempt=2)
    (train,) = h.provider_tasks(sent)
    assert train.attempt == 2
    assert train.inputs == [ArtifactRef(RUN, "prepare.0"), ArtifactRef(RUN, "prepare.1")]
    h.provide("train", [spec("t")], attempt=2)
    h.complete("train.0")
    h.provide("evaluate", [spec("e")], attempt=2)
    h.complete("evaluate.0")
    assert h.run().status is Status.DONE


def test_stale_events_of_the_first_attempt_are_ignored_after_restart(h: Dag) -> None:
    failed_chain(h)
    h.scheduler.handle_request(RestartRun(RUN))
    sent = len(h.sent)
    h.finish("prepare.1", attempt=1)  # a late copy of the first attempt's end
    h.finish("prepare.1", status="failed", attempt=1, exit_code=1)
    h.scheduler.handle_event(TaskStarted(RUN, "prepare.1", 1, "w-old", Endpoint("old")))
    assert h.claim("prepare.1", "w-old", attempt=1) == {"granted": False, "reason": "no such task (attempt)",
                                                        "secrets": {}}
    task = h.task("prepare.1")
    assert task.status is Status.QUEUED and task.attempt == 2 and task.worker_id is None
    assert h.task("train.provider").status is Status.SUBMITTED
    assert len(h.sent) == sent
    assert not h.run().status.finished
    assert h.claim("prepare.1", "w-new", attempt=2)["granted"]


def test_restart_within_a_workflow_reruns_the_failed_job_then_its_dependents(h: Dag) -> None:
    h.submit_dag([wf("w")])
    h.provide("w", [spec("a"), spec("b", ["a"]), spec("c")])
    h.complete("w.2")
    h.complete("w.0", status="failed", exit_code=1, reason="boom")
    assert h.task("w.1").reason == "dependency w.0 failed"
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    assert h.enqueued(sent) == ["w.0"]
    assert h.task("w.1").status is Status.SUBMITTED and h.task("w.1").deps_left == 1
    assert h.task("w.2").status is Status.DONE and h.task("w.2").attempt == 1
    sent = len(h.sent)
    h.complete("w.0", attempt=2)
    assert [(j.job.job_id, j.attempt) for j in h.job_tasks(sent)] == [("w.1", 2)]
    h.complete("w.1", attempt=2)
    assert h.run().status is Status.DONE


def test_restart_of_a_failed_provider(h: Dag) -> None:
    h.submit_dag(chain())
    h.complete("prepare.provider", status="failed", exit_code=2, reason="bad")
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    (provider,) = h.provider_tasks(sent)
    assert provider.task_id == "prepare.provider" and provider.attempt == 2
    h.provide("prepare", [spec("a")], attempt=2)
    assert [j.job.job_id for j in h.job_tasks(sent)] == ["prepare.0"]


def test_restart_of_one_workflow_and_what_is_downstream_of_it(h: Dag) -> None:
    h.submit_dag([wf("a"), wf("b"), wf("c", ["a"]), wf("top", ["b"])], target="top")
    h.provide("a", [spec("x")])
    h.provide("b", [spec("x")])
    h.complete("a.0", status="failed", exit_code=1, reason="a broke")
    h.complete("b.0", status="failed", exit_code=1, reason="b broke")
    assert h.run().status is Status.FAILED
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN, "a"))
    assert h.enqueued(sent) == ["a.0"]
    statuses = h.statuses()
    assert statuses["a.0"] is Status.QUEUED and h.task("a.0").attempt == 2
    assert statuses["a"] is statuses["c"] is statuses["c.provider"] is Status.SUBMITTED
    # b and what depends on it are left as they are
    assert statuses["b.0"] is statuses["b"] is statuses["top.provider"] is statuses["top"] is Status.FAILED
    assert h.task("b.0").attempt == 1
    h.complete("a.0", attempt=2)
    h.provide("c", [spec("x")], attempt=2)
    h.complete("c.0")
    assert h.task("c").status is Status.DONE
    run = h.run()
    assert run.status is Status.FAILED and run.reason.startswith("b.0: ")
    # then the rest
    with pytest.raises(RequestRejected, match="nothing to restart .*workflow a is done"):
        h.scheduler.handle_request(RestartRun(RUN, "a"))
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN, "b"))
    assert h.enqueued(sent) == ["b.0"]
    h.complete("b.0", attempt=2)
    h.provide("top", [spec("x")], attempt=2)
    h.complete("top.0")
    assert h.run().status is Status.DONE


def test_restart_of_a_workflow_below_a_failed_one_does_not_hang(h: Dag) -> None:
    failed_chain(h)  # prepare failed, train and evaluate were cancelled
    sent = len(h.sent)
    try:
        h.scheduler.handle_request(RestartRun(RUN, "train"))
    except RequestRejected as e:  # refusing (naming prepare) is a fine answer too
        assert "prepare" in str(e)
        assert h.run().status is Status.FAILED
        return
    assert h.enqueued(sent), "nothing was enqueued: the run can never end"


def test_restart_of_a_stopped_run(h: Dag) -> None:
    h.submit_dag(chain())
    h.scheduler.handle_request(StopRun(RUN))
    assert h.run().status is Status.STOPPED
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    run = h.run()
    assert not run.stop_requested and run.status is Status.QUEUED
    assert h.enqueued(sent) == ["prepare.provider"]
    assert h.task("prepare.provider").attempt == 2


def test_restart_of_a_follower_whose_master_is_done_does_not_hang(h: Dag) -> None:
    h.submit_dag([wf("train")])
    h.provide("train", [spec("master", ports=[29500]), spec("follower", master="master")])
    h.start("train.0", hostname="m", ports=[30000])
    h.complete("train.1", status="failed", exit_code=1, reason="nccl timeout")
    h.finish("train.0")
    assert h.run().status is Status.FAILED
    h.scheduler.handle_request(RestartRun(RUN))
    master, follower = h.task("train.0"), h.task("train.1")
    assert follower.attempt == 2
    # either the master runs again (and the follower after it), or the follower ends at once: it must not
    # wait for a master that has ended
    assert not (follower.status is Status.SUBMITTED and master.status.finished), (master.status, follower.status)


# ----------------------------------------------------------------------------- the work of one event


def test_one_completion_costs_the_same_whatever_the_run_size(h: Dag) -> None:
    """Finishing one job of a 200-job fan-out/fan-in issues as many SQL statements for the 10th job
    as for the 190th, and none of them reads all of the run's tasks."""
    h.submit_dag([wf("fan"), wf("after", ["fan"])])
    width = 200
    jobs = [spec("root")] + [spec(f"m{i}", ["root"], artifacts=["out"]) for i in range(width)] + \
        [spec("sink", [f"m{i}" for i in range(width)])]
    h.provide("fan", jobs)
    h.complete("fan.0")
    middle = [f"fan.{i + 1}" for i in range(width)]
    for job in middle:
        h.start(job)

    statements: list[str] = []
    db: sqlite3.Connection = h.store._db

    def measured(job: str) -> list[str]:
        statements.clear()
        db.set_trace_callback(statements.append)
        try:
            h.finish(job)
        finally:
            db.set_trace_callback(None)
        return list(statements)

    counts = {}
    for index, job in enumerate(middle, start=1):
        if index in (10, 190):
            counts[index] = measured(job)
        else:
            h.finish(job)
    assert len(counts[10]) == len(counts[190]), (counts[10], counts[190])
    assert len(counts[190]) < 40
    for sql in counts[10] + counts[190]:  # tasks are read one by one (or by edge), never the run's or a workflow's
        if sql.startswith("SELECT") and " tasks " in sql:
            assert "task_id = " in sql, sql
    sink = h.task(f"fan.{width + 1}")
    assert sink.status is Status.QUEUED and sink.deps_left == 0
    h.complete(f"fan.{width + 1}")
    assert h.task("fan").status is Status.DONE
    (after,) = [p for p in h.provider_tasks() if p.task_id == "after.provider"]
    assert len(after.inputs) == width


# ----------------------------------------------------------------------------- the artifacts of a job's dependencies


def test_a_job_starts_with_the_artifacts_of_the_jobs_it_depends_on(h: Dag) -> None:
    """Early dstack's rule: the artifacts of the jobs a job depends on are its input, after its
    workflow's own inputs and in the order it names them (a later input wins a path)."""
    h.submit_dag([wf("prepare"), wf("train", ["prepare"])])
    h.provide("prepare", [spec("p", artifacts=["data"])])
    h.complete("prepare.0")
    h.provide("train", [spec("a", artifacts=["a"]), spec("b", artifacts=["b"]), spec("plain"),
                        spec("consumer", ["b", "plain", "a", "b"])])
    for job in ("train.0", "train.1", "train.2"):
        h.complete(job)
    (consumer,) = [t for t in h.job_tasks() if t.job.job_id == "train.3"]
    assert consumer.inputs == [ArtifactRef(RUN, "prepare.0"), ArtifactRef(RUN, "train.1"), ArtifactRef(RUN, "train.0")]
    roots = [t for t in h.job_tasks() if t.job.job_id in ("train.0", "train.1", "train.2")]
    assert len(roots) == 3 and all(t.inputs == [ArtifactRef(RUN, "prepare.0")] for t in roots)  # nothing more


def test_a_retried_or_restarted_job_gets_the_same_inputs(h: Dag) -> None:
    h.submit_dag([wf("train")])
    h.provide("train", [spec("a", artifacts=["a"]),
                        spec("b", ["a"], retry=RetryPolicy(limit=1, backoff_s=0), artifacts=["b"])])
    h.complete("train.0")
    expected = [ArtifactRef(RUN, "train.0")]
    (first,) = [t for t in h.job_tasks() if t.job.job_id == "train.1"]
    assert first.inputs == expected
    h.complete("train.1", status="failed", exit_code=1, reason="flaky")
    sent = len(h.sent)
    h.scheduler.tick()  # its backoff of 0 s has passed
    (retry,) = h.job_tasks(sent)
    assert (retry.job.job_id, retry.attempt, retry.inputs) == ("train.1", 2, expected)
    h.complete("train.1", attempt=2, status="failed", exit_code=1, reason="flaky again")
    assert h.run().status is Status.FAILED
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    (restarted,) = h.job_tasks(sent)
    assert (restarted.job.job_id, restarted.attempt, restarted.inputs) == ("train.1", 3, expected)


# ----------------------------------------------------------------------------- runs named for their artifacts


def runs_spec(name: str, runs: Sequence[str], depends_on: Sequence[str] = ()) -> WorkflowSpec:
    return WorkflowSpec(name=name, data={"runs": list(runs)}, provider=PROVIDER, depends_on=list(depends_on),
                        runs=list(runs))


def test_named_runs_are_inputs_each_in_its_own_folder(h: Dag) -> None:
    tagged_run(h)
    tagged_run(h, "other-run-0002")
    h.scheduler.handle_request(TagRun("other-run-0002", "best"))
    sent = len(h.sent)
    h.submit_dag([wf("prepare"), runs_spec("board", [TAGGED, "data:best", TAGGED], ["prepare"])])
    h.provide("prepare", [spec("p", artifacts=["p"])])
    h.complete("prepare.0")
    (board,) = [p for p in h.provider_tasks(sent) if p.workflow == "board"]
    expected = [ArtifactRef(RUN, "prepare.0"),
                ArtifactRef(TAGGED, "data.0", ".dstack/runs/tagged-run-0001"),
                ArtifactRef(TAGGED, "data.2", ".dstack/runs/tagged-run-0001"),
                ArtifactRef("other-run-0002", "data.0", ".dstack/runs/data@best"),
                ArtifactRef("other-run-0002", "data.2", ".dstack/runs/data@best")]
    assert board.inputs == expected
    sent = len(h.sent)
    h.provide("board", [spec("serve")])
    (job,) = h.job_tasks(sent)
    assert job.inputs == expected


def test_a_failed_run_counts_with_the_jobs_whose_container_ended(h: Dag) -> None:
    run = "failed-run-0003"
    h.submit_dag([wf("train")], run=run)
    h.complete("train.provider", run=run, jobs=[spec("a", artifacts=["logs"]), spec("b", artifacts=["logs"]),
                                                spec("c", ["b"], artifacts=["logs"])])
    h.complete("train.0", run=run)
    h.complete("train.1", run=run, status="failed", exit_code=1, reason="diverged")  # c never starts
    assert h.run(run).status is Status.FAILED
    sent = len(h.sent)
    h.submit_dag([runs_spec("board", [run])])
    (board,) = h.provider_tasks(sent)
    folder = ".dstack/runs/" + run
    assert board.inputs == [ArtifactRef(run, "train.0", folder), ArtifactRef(run, "train.1", folder)]


@pytest.mark.parametrize("entry, message", [
    ("no-such-run", "workflow 'board' names run 'no-such-run' in runs, but there is no run named 'no-such-run'"),
    ("../x", "workflow 'board' names run '../x' in runs, but there is no run named '../x'"),
    ("data:nope", "workflow 'board' names in runs data:nope, but there is no tag 'nope' (known tags: best)"),
    ("data:bad tag", "workflow 'board' names 'data:bad tag' in runs: write a run name, WORKFLOW:TAG or :TAG"),
    ("going-run-0004", "workflow 'board' names run 'going-run-0004' in runs, which is queued; name it once it "
                       "has finished"),
])
def test_a_named_run_that_is_unknown_or_not_finished_is_refused(h: Dag, entry: str, message: str) -> None:
    tagged_run(h)
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    h.submit_dag([wf("data")], run="going-run-0004")
    sent = len(h.sent)
    with pytest.raises(RequestRejected) as info:
        h.submit_dag([wf("prepare"), runs_spec("board", [entry], ["prepare"])])
    assert message in str(info.value)
    assert_nothing_recorded(h, sent=sent)
