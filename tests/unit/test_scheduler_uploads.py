"""scheduler: local data recorded as a done run (`RecordUpload`), the tags listing with sizes and kinds, and
``depends-on: [:TAG]`` (every job of the tagged run that left artifacts) as inputs of a workflow."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dstack.errors import RequestRejected
from dstack.messages import (
    UPLOAD_WORKFLOW,
    ArtifactRef,
    GetRuns,
    GetTags,
    RecordUpload,
    RestartRun,
    TagRef,
    TagRun,
    TaskFinished,
    WorkflowSpec,
)
from dstack.scheduler.model import Status
from tests.scheduler_harness import RUN, spec
from tests.unit.test_scheduler_dags import TAGGED, Dag, assert_nothing_recorded, tagged_run, wf

UPLOADED = "quiet-heron-1234"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Dag]:
    harness = Dag(tmp_path / "scheduler" / "state.db")
    yield harness
    harness.store.close()


def upload(h: Dag, tag: str = "dataset", run: str = UPLOADED, size: int = 1234,
           artifacts: Any = ("data", "notes.txt")) -> Any:
    return h.scheduler.handle_request(RecordUpload(run_name=run, tag=tag, artifacts=list(artifacts), size=size,
                                                   submitted_at=1700000000.0, project="/home/me/project"))


def test_an_upload_is_a_done_run_with_one_done_job_and_its_tag(h: Dag) -> None:
    answer = upload(h)
    assert answer["tag"] == "dataset" and answer["run_name"] == UPLOADED
    assert (answer["kind"], answer["size"], answer["status"], answer["workflows"]) == (
        "upload", 1234, "done", [UPLOAD_WORKFLOW])
    (run,) = h.scheduler.handle_request(GetRuns(run_name=UPLOADED))
    assert (run["status"], run["workflow"], run["artifacts_size"], run["project"]) == (
        "done", "upload", 1234, "/home/me/project")
    (job,) = run["jobs"]
    assert (job["job_id"], job["kind"], job["status"], job["artifacts_size"]) == ("upload.0", "job", "done", 1234)
    assert h.statuses(UPLOADED) == {"upload": Status.DONE, "upload.0": Status.DONE}
    assert h.records(UPLOADED)["upload.0"].job_state.job.artifacts == ["data", "notes.txt"]
    assert h.sent == [] and h.outbox() == []  # nothing runs
    with h.store.transaction():
        assert h.store.count_unfinished(UPLOADED)[0] == 0
    assert h.scheduler.handle_request(GetTags()) == [answer]
    with pytest.raises(RequestRejected, match="nothing to restart"):
        h.scheduler.handle_request(RestartRun(UPLOADED))


def test_a_resent_upload_finds_its_run(h: Dag) -> None:
    first = upload(h)
    assert upload(h) == first
    assert len(h.scheduler.handle_request(GetTags())) == 1


def test_an_existing_tag_refuses_an_upload_with_nothing_recorded(h: Dag) -> None:
    upload(h)
    with pytest.raises(RequestRejected, match=f"tag 'dataset' names run {UPLOADED} already; choose another name, "
                                              "or `dstack untag dataset` first"):
        upload(h, run="other-run-0001")
    assert_nothing_recorded(h, run="other-run-0001")
    tagged_run(h)
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    sent = len(h.sent)
    with pytest.raises(RequestRejected, match=f"tag 'best' names run {TAGGED} already"):
        upload(h, tag="best", run="other-run-0002")
    assert_nothing_recorded(h, run="other-run-0002", sent=sent)


@pytest.mark.parametrize("fields,fragment", [
    ({"tag": "bad tag"}, "must be letters, digits"),
    ({"run": "bad/run"}, "invalid run name"),
    ({"artifacts": []}, "relative paths"),
    ({"artifacts": ["../etc"]}, "relative paths"),
    ({"artifacts": ["/abs"]}, "relative paths"),
])
def test_a_bad_upload_is_refused(h: Dag, fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RequestRejected, match=fragment):
        upload(h, **fields)
    assert h.scheduler.handle_request(GetTags()) == []


def test_an_upload_over_an_existing_run_is_refused(h: Dag) -> None:
    tagged_run(h)
    with pytest.raises(RequestRejected, match=f"a run named '{TAGGED}' exists already"):
        upload(h, run=TAGGED)


def test_tags_list_run_tags_with_the_size_their_jobs_reported(h: Dag) -> None:
    h.submit_dag([wf("data")], run=TAGGED)
    h.complete("data.provider", run=TAGGED, jobs=[spec("a", artifacts=["ds"]), spec("b", artifacts=["x"])])
    for job, size in (("data.0", 1000), ("data.1", 24)):
        h.start(job, run=TAGGED)
        h.scheduler.handle_event(TaskFinished(run_name=TAGGED, task_id=job, attempt=1, status=Status.DONE,
                                              exit_code=0, artifacts_size=size))
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    upload(h, size=5)
    tags = h.scheduler.handle_request(GetTags())
    assert [(t["tag"], t["kind"], t["size"], t["workflows"]) for t in tags] == [
        ("best", "run", 1024, ["data"]), ("dataset", "upload", 5, ["upload"])]


# ----------------------------------------------------------------------------- depends-on: [:TAG]


def test_a_colon_tag_gives_the_uploaded_files_to_the_provider_and_its_jobs(h: Dag) -> None:
    upload(h)
    h.submit_dag([wf("train", tagged=[TagRef("", "dataset")])])
    (provider,) = [p for p in h.provider_tasks() if p.run_name == RUN]
    assert provider.inputs == [ArtifactRef(UPLOADED, "upload.0", "")]
    since = len(h.sent)
    h.complete("train.provider", jobs=[spec("a")])
    (job,) = h.job_tasks(since)
    assert job.inputs == [ArtifactRef(UPLOADED, "upload.0", "")]
    (run,) = h.scheduler.handle_request(GetRuns(run_name=RUN))
    assert run["workflows"][0]["tagged"] == [":dataset"]


def test_a_colon_tag_of_a_run_gives_every_job_that_left_artifacts(h: Dag) -> None:
    tagged_run(h)  # data.0 and data.2 have artifacts, data.1 none
    h.scheduler.handle_request(TagRun(TAGGED, "best"))
    h.submit_dag([wf("train", tagged=[TagRef("", "best"), TagRef("data", "best")])])
    (provider,) = [p for p in h.provider_tasks() if p.run_name == RUN]
    refs = [ArtifactRef(TAGGED, "data.0", ""), ArtifactRef(TAGGED, "data.2", "")]
    assert provider.inputs == refs + refs


def test_a_colon_tag_that_cannot_be_had_is_refused_with_nothing_recorded(h: Dag) -> None:
    upload(h)
    with pytest.raises(RequestRejected, match=r"workflow 'train' depends on :nope, but there is no tag 'nope' "
                                              r"\(known tags: dataset\)"):
        h.submit_dag([wf("train", tagged=[TagRef("", "nope")])])
    assert_nothing_recorded(h)
    h.submit_dag([wf("data")], run=TAGGED)  # still queued
    h.scheduler.handle_request(TagRun(TAGGED, "wip"))
    sent = len(h.sent)
    with pytest.raises(RequestRejected, match=f"run {TAGGED}, which tag 'wip' names, is queued; use it once"):
        h.submit_dag([wf("train", tagged=[TagRef("", "wip")])])
    assert_nothing_recorded(h, sent=sent)


def test_a_colon_tag_of_a_run_without_artifacts_is_refused(h: Dag) -> None:
    h.submit_dag([wf("data")], run=TAGGED)
    h.complete("data.provider", run=TAGGED, jobs=[spec("a")])
    h.complete("data.0", run=TAGGED)
    h.scheduler.handle_request(TagRun(TAGGED, "empty"))
    with pytest.raises(RequestRejected, match="left no artifacts"):
        h.submit_dag([wf("train", tagged=[TagRef("", "empty")])])


def test_runs_accept_a_colon_tag(h: Dag) -> None:
    upload(h)
    h.submit_dag([WorkflowSpec(name="board", data={}, provider=wf("x").provider, runs=[":dataset"])])
    (provider,) = [p for p in h.provider_tasks() if p.run_name == RUN]
    assert provider.inputs == [ArtifactRef(UPLOADED, "upload.0", ".dstack/runs/@dataset")]
