"""Who may do what, as the scheduler decides it from the sender RabbitMQ vouched for (scheduler/access.py).

The broker's half (what each account may publish, declare and consume) is in
tests/integration/test_broker_accounts.py; the whole, with real accounts, in tests/integration/test_teams.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.errors import NotAllowed, RequestRejected
from dstack.messages import (
    AddUser,
    Allocation,
    ClaimTask,
    DeleteRuns,
    DeleteSecret,
    Endpoint,
    GetRuns,
    GetSecrets,
    GetTags,
    GetUsers,
    Inventory,
    RemoveUser,
    Resources,
    RestartRun,
    SetSecret,
    StopRun,
    SubmitRun,
    TagRun,
    TaskFinished,
    TaskStarted,
    UntagRun,
    WorkerReport,
    WorkflowSpec,
)
from dstack.scheduler.access import Caller, Role
from dstack.states import Status
from tests.scheduler_harness import PROVIDER, PROVIDER_TASK, RUN, WF, Harness

BOB_RUN = "bobs-run-0001"


def team(tmp_path: Path, **options: object) -> Harness:
    """A scheduler whose own account is guest, with alice and bob (users), root (admin) and w1 (worker)."""
    h = Harness(tmp_path / "state.db", **options)
    for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin"), ("w1", "worker")):
        h.scheduler.handle_request(AddUser(name, role))
    return h


def ask(h: Harness, request: object, sender: str) -> object:
    return h.scheduler.handle_request(request, sender)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    h = team(tmp_path)
    h.submit(sender="alice")
    h.submit(run=BOB_RUN, sender="bob")
    return h


def test_a_run_belongs_to_who_submitted_it(h: Harness) -> None:
    owners = {run["run_name"]: run["owner"] for run in ask(h, GetRuns(), "bob")}  # type: ignore[union-attr]
    assert owners == {RUN: "alice", BOB_RUN: "bob"}  # everyone sees every run by default
    assert [r["run_name"] for r in ask(h, GetRuns(owner="bob"), "bob")] == [BOB_RUN]  # type: ignore[union-attr]


@pytest.mark.parametrize("request_", [StopRun(RUN), StopRun(RUN, workflow=WF), TagRun(RUN, "best"),
                                      DeleteRuns([RUN])], ids=["stop", "stop-workflow", "tag", "delete"])
def test_bob_cannot_change_alices_run_and_it_goes_on(h: Harness, request_: object) -> None:
    with pytest.raises(RequestRejected, match="alice"):
        ask(h, request_, "bob")
    assert h.run().status.value == "queued" and not h.run().stop_requested
    assert ask(h, GetTags(), "bob") == []


def test_bob_cannot_restart_or_untag_alices_run(h: Harness) -> None:
    ask(h, StopRun(RUN), "alice")
    ask(h, TagRun(RUN, "best"), "alice")
    with pytest.raises(NotAllowed, match="only its owner or an admin"):
        ask(h, RestartRun(RUN), "bob")
    with pytest.raises(NotAllowed):
        ask(h, UntagRun("best"), "bob")
    assert [t["tag"] for t in ask(h, GetTags(), "bob")] == ["best"]  # type: ignore[union-attr]


def test_an_admin_may_change_anyones_run(h: Harness) -> None:
    ask(h, TagRun(RUN, "best"), "root")
    ask(h, UntagRun("best"), "root")
    ask(h, StopRun(RUN), "root")
    assert h.run().status.value == "stopped"
    ask(h, RestartRun(RUN), "root")
    ask(h, StopRun(RUN), "guest")  # the scheduler's own account is the administrator
    assert ask(h, DeleteRuns([RUN]), "root") == {"run_names": [RUN], "tags": []}


def test_the_owner_may_change_their_run(h: Harness) -> None:
    ask(h, TagRun(RUN, "mine"), "alice")
    ask(h, StopRun(RUN), "alice")
    assert h.run().status.value == "stopped"


def test_an_account_that_is_no_user_is_refused(h: Harness) -> None:
    with pytest.raises(NotAllowed, match="dstack users add mallory"):
        ask(h, GetRuns(), "mallory")
    ask(h, RemoveUser("bob"), "root")
    with pytest.raises(NotAllowed, match="no dstack user"):
        ask(h, GetRuns(), "bob")
    assert h.run(BOB_RUN).status.value == "queued"  # removing a user stops nothing they started


def test_users_may_not_send_what_workers_send_nor_workers_what_users_send(h: Harness) -> None:
    report = WorkerReport(worker_id="w1", host="h", resources=Inventory(cpu=1, memory_mib=1), slots=1, in_use=[],
                          started_at=0.0)
    for request in (ClaimTask(RUN, PROVIDER_TASK, 1, "fake"), report):
        with pytest.raises(NotAllowed, match="alice is a user"):
            ask(h, request, "alice")
    assert h.task(PROVIDER_TASK).worker_id is None
    with pytest.raises(NotAllowed, match="w1 is a worker"):
        ask(h, SubmitRun(run_name="w-run-0001", workflow=WF, snapshot_id="s", submitted_at=1.0,
                         workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER)]), "w1")
    assert ask(h, ClaimTask(RUN, PROVIDER_TASK, 1, "w1"), "w1")["granted"]  # type: ignore[index]


def test_only_admins_manage_users(h: Harness) -> None:
    with pytest.raises(NotAllowed, match="for admins only"):
        ask(h, AddUser("eve", "admin"), "alice")
    answer = ask(h, GetUsers(), "alice")
    assert answer["caller"] == {"name": "alice", "role": "user", "added_at": 0.0}  # type: ignore[index]
    assert [(u["name"], u["role"]) for u in answer["users"]] == [  # type: ignore[index]
        ("guest", "admin"), ("alice", "user"), ("bob", "user"), ("root", "admin"), ("w1", "worker")]
    with pytest.raises(RequestRejected, match="role of user, admin, worker"):
        ask(h, AddUser("eve", "superuser"), "root")
    with pytest.raises(RequestRejected, match="scheduler's own account"):
        ask(h, AddUser("guest", "user"), "root")


def test_with_visibility_own_a_user_sees_only_their_runs(tmp_path: Path) -> None:
    h = team(tmp_path, visibility="own")
    h.submit(sender="alice")
    h.submit(run=BOB_RUN, sender="bob")
    ask(h, TagRun(RUN, "alices"), "alice")
    assert [r["run_name"] for r in ask(h, GetRuns(), "bob")] == [BOB_RUN]  # type: ignore[union-attr]
    with pytest.raises(RequestRejected, match=f"no run named '{RUN}'"):
        ask(h, GetRuns(run_name=RUN), "bob")
    with pytest.raises(RequestRejected, match=f"no run named '{RUN}'"):
        ask(h, StopRun(RUN), "bob")
    assert ask(h, GetTags(), "bob") == []
    assert {r["run_name"] for r in ask(h, GetRuns(), "root")} == {RUN, BOB_RUN}  # type: ignore[union-attr]


def test_secrets_reach_only_the_jobs_of_their_owner_and_the_teams_reach_all(h: Harness) -> None:
    ask(h, SetSecret("TOKEN", "alices-token"), "alice")
    ask(h, SetSecret("SHARED", "for-all", team=True), "root")
    ask(h, SetSecret("SHARED", "alices-own"), "alice")  # hers wins over the team's for her jobs
    with pytest.raises(NotAllowed, match="only admins"):
        ask(h, SetSecret("SHARED", "x", team=True), "bob")
    assert ask(h, ClaimTask(BOB_RUN, PROVIDER_TASK, 1, "w1"), "w1")["secrets"] == {}  # type: ignore[index]
    h.start(PROVIDER_TASK, worker="w1", run=BOB_RUN)
    h.finish(PROVIDER_TASK, jobs=[_job("a")], run=BOB_RUN)
    h.start(PROVIDER_TASK, worker="w1")
    h.finish(PROVIDER_TASK, jobs=[_job("a")])
    bobs = ask(h, ClaimTask(BOB_RUN, "train.0", 1, "w1"), "w1")
    alices = ask(h, ClaimTask(RUN, "train.0", 1, "w1"), "w1")
    assert bobs["secrets"] == {"SHARED": "for-all"}  # type: ignore[index]
    assert alices["secrets"] == {"SHARED": "alices-own", "TOKEN": "alices-token"}  # type: ignore[index]
    names = {(s["name"], s["owner"]) for s in ask(h, GetSecrets(), "bob")}  # type: ignore[union-attr]
    assert names == {("SHARED", "")}  # bob sees the team's, not alice's
    with pytest.raises(RequestRejected, match="bob has no secret named 'TOKEN'"):
        ask(h, DeleteSecret("TOKEN"), "bob")
    assert len(ask(h, GetSecrets(), "root")) == 3  # type: ignore[arg-type]


def _job(job_id: str) -> object:
    from tests.scheduler_harness import spec
    return spec(job_id)


def test_a_caller_may_send_by_role() -> None:
    alice, w1 = Caller("alice", Role.USER), Caller("w1", Role.WORKER)
    report = WorkerReport(worker_id="w1", host="h", resources=Inventory(cpu=1, memory_mib=1), slots=1,
                          in_use=[Allocation(RUN, "a", 1, Resources())], started_at=0.0)
    assert alice.may_send(GetRuns()) and not alice.may_send(report) and not alice.may_send(AddUser("x"))
    assert w1.may_send(report) and not w1.may_send(GetRuns())
    assert Caller("root", Role.ADMIN).may_send(AddUser("x")) and not Caller("root", Role.ADMIN).may_send(report)


def test_a_worker_speaks_for_itself_only_and_events_of_another_worker_are_ignored(h: Harness) -> None:
    ask(h, AddUser("w2", "worker"), "root")
    with pytest.raises(NotAllowed, match="may not speak for worker w2"):
        ask(h, ClaimTask(RUN, PROVIDER_TASK, 1, "w2"), "w1")
    assert ask(h, ClaimTask(RUN, PROVIDER_TASK, 1, "w1"), "w1")["granted"]  # type: ignore[index]
    h.scheduler.handle_event(TaskStarted(RUN, PROVIDER_TASK, 1, "w2", Endpoint("elsewhere", [])))
    assert h.task(PROVIDER_TASK).status.value == "queued"
    h.scheduler.handle_event(TaskFinished(RUN, PROVIDER_TASK, 1, Status.FAILED, worker_id="w2"))
    assert h.task(PROVIDER_TASK).status.value == "queued"
    h.scheduler.handle_event(TaskStarted(RUN, PROVIDER_TASK, 1, "w1", Endpoint("here", [])))
    h.scheduler.handle_event(TaskFinished(RUN, PROVIDER_TASK, 1, Status.FAILED, worker_id="w1"))
    assert h.task(PROVIDER_TASK).status.value == "failed"
