"""The scheduler's typed replies (dstack.views): what the server sends decodes, on the client,
into equal dataclasses; and their plain form is the JSON the CLI prints."""
from __future__ import annotations

from typing import Any

import pytest

from dstack.errors import MessageError
from dstack.messages import (
    AddUser,
    Allocation,
    ClaimTask,
    DeleteRuns,
    DeleteSecret,
    Endpoint,
    GetRuns,
    GetSecrets,
    GetStorage,
    GetTags,
    GetUsers,
    GetWorkers,
    Inventory,
    PresignStorage,
    RecordUpload,
    RemoveUser,
    Resources,
    RestartRun,
    SetSecret,
    StopRun,
    StorageOp,
    SubmitRun,
    TagRun,
    TaskStarted,
    UntagRun,
    WorkerLeaving,
    WorkerReport,
    WorkflowSpec,
    encode,
    from_dict,
    pack,
    plain,
    unpack,
)
from dstack.names import task_queue
from dstack.rpc import RpcServer
from dstack.scheduler.grants import StorageGrants
from dstack.scheduler.service import Scheduler
from dstack.states import Status
from dstack.views import (
    REPLY_TYPES,
    Acknowledged,
    ClaimAnswer,
    JobView,
    OpenQueue,
    ReportAnswer,
    RunUpdate,
    RunView,
    TagView,
    TaskRef,
    decode_reply,
)
from tests.scheduler_harness import PROVIDER, PROVIDER_TASK, RUN, WF, Harness, spec
from tests.unit.test_scheduler_grants import FakeS3


def typed(h: Harness, request: Any) -> Any:
    """The reply as the scheduler's handler returns it (before the wire)."""
    return Scheduler.handle_request(h.scheduler, request)


def over_the_wire(request: Any, reply: Any) -> Any:
    """What RpcServer sends for ``reply``, as RpcClient.call returns it."""
    server = RpcServer("amqp://unused", lambda request, sender: reply)
    answer = unpack(pack(server._answer(encode(request), "guest")))
    assert answer["ok"], answer
    return decode_reply(request, answer["result"])


def test_every_reply_of_the_scheduler_round_trips(h: Harness) -> None:
    h.provider_creates([spec("a", resources=Resources(gpu_count=1)), spec("b", ["a"])])
    report = WorkerReport(worker_id="w1", host="h1", resources=Inventory(cpu=4, memory_mib=1024), slots=2,
                          in_use=[Allocation(RUN, "ghost", 1, Resources(cpu=1.0))], started_at=1.5)
    requests = [GetRuns(), GetRuns(run_name=RUN), ClaimTask(RUN, "train.0", 1, "w1"), ClaimTask(RUN, "x", 1, "w1"),
                report, GetWorkers(), TagRun(RUN, "best"), GetTags(), SetSecret("TOKEN", "s3cret"), GetSecrets(),
                DeleteSecret("TOKEN"), UntagRun("best"), StopRun(RUN), WorkerLeaving("w1")]
    other = SubmitRun(run_name="other-run-0001", workflow=WF, snapshot_id="snap-2", submitted_at=1.0,
                      workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER)])
    requests += [other, StopRun(other.run_name), RestartRun(other.run_name)]  # its provider never started
    requests += [RecordUpload(run_name="quiet-heron-1234", tag="dataset", artifacts=["data"], size=10,
                              submitted_at=1.0)]
    requests += [GetRuns(limit=None), DeleteRuns(["quiet-heron-1234"], force=True)]  # a done run, tagged
    requests += [AddUser("alice", "admin"), GetUsers(), RemoveUser("alice")]
    h.scheduler._grants = StorageGrants(FakeS3())
    requests += [GetStorage(), PresignStorage([StorageOp("get", f"runs/{RUN}/logs/train.0/0000000000.msgpack")])]
    for request in requests:
        reply = typed(h, request)
        assert over_the_wire(request, reply) == reply, request
    assert {type(r) for r in requests} == set(REPLY_TYPES)


def test_typed_replies_have_their_types(h: Harness) -> None:
    h.provider_creates([spec("a", resources=Resources(gpu_count=1))])
    (run,) = typed(h, GetRuns(run_name=RUN))
    assert isinstance(run, RunView) and run.status is Status.RUNNING
    assert all(isinstance(j, JobView) for j in run.jobs) and run.jobs[0].job_id == PROVIDER_TASK
    assert run.jobs[1].needs == Resources(gpu_count=1)
    assert typed(h, ClaimTask(RUN, "nothing", 1, "w1")) == ClaimAnswer(granted=False, reason="no such task (attempt)")
    answer = typed(h, WorkerReport(worker_id="w1", host="h", resources=Inventory(cpu=1, memory_mib=1), slots=1,
                                   in_use=[Allocation(RUN, "gone", 3, Resources())], started_at=0.0))
    gpu = Resources(gpu_count=1)
    assert answer == ReportAnswer(queues=[OpenQueue(task_queue(gpu), gpu)], stop=[TaskRef(RUN, "gone", 3)])
    assert typed(h, WorkerLeaving("w1")) == Acknowledged()
    typed(h, TagRun(RUN, "best"))
    (tag,) = typed(h, GetTags())
    assert tag == TagView(tag="best", run_name=RUN, created_at=tag.created_at, status="running", workflows=[WF],
                          owner="guest")


def test_updates_round_trip_as_published(h: Harness) -> None:
    updates: list[RunUpdate] = []
    h.scheduler._notify = lambda run, update: updates.append(update)
    h.provider_creates([spec("a")])
    h.scheduler.handle_event(TaskStarted(RUN, "train.0", 1, "w1", Endpoint("host-1", [8080])))
    assert updates and all(isinstance(u, RunUpdate) for u in updates)
    for update in updates:
        assert update.run.jobs == [] and update.run.workflows == []
        wire = unpack(pack(plain(update)))
        assert set(wire) == {"run", "jobs"}
        assert from_dict(RunUpdate, wire) == update
    assert updates[-1].jobs[-1].status is Status.RUNNING and updates[-1].jobs[-1].ports == [8080]


def test_plain_form_keeps_the_json_keys_in_their_order(h: Harness) -> None:
    h.provider_creates([spec("a")])
    (run,) = plain(typed(h, GetRuns(run_name=RUN)))
    assert list(run) == ["run_name", "workflow", "status", "reason", "project", "submitted_at", "started_at",
                         "finished_at", "variables", "workflows", "jobs", "tags", "artifacts_size", "owner"]
    assert list(run["jobs"][1]) == ["job_id", "kind", "workflow", "status", "exit_code", "reason", "attempt",
                                    "worker", "hostname", "ports", "depends_on", "master", "image", "resources",
                                    "provider_commit", "apps", "submitted_at", "started_at", "finished_at",
                                    "artifacts_size", "cached_from"]
    assert list(run["workflows"][0]) == ["name", "status", "reason", "depends_on", "tagged", "variables",
                                         "provider_commit", "submitted_at", "finished_at"]
    assert run["status"] == "running" and type(run["status"]) is str
    assert run["jobs"][0]["resources"] == {}  # a provider asks for nothing


def test_a_reply_of_the_wrong_shape_is_a_message_error() -> None:
    with pytest.raises(MessageError):
        decode_reply(GetRuns(), {"run_name": "x"})
    with pytest.raises(MessageError):
        decode_reply(ClaimTask("r", "t", 1, "w"), {"granted": True, "surprise": 1})
    with pytest.raises(MessageError):
        decode_reply(GetRuns(), [{"run_name": "r", "workflow": "w", "status": "sleeping"}])
