"""The CLI of a daily user, without services: durations and times, log selection, what prune picks, the prompts
of `dstack stop --all` and of Ctrl-C while following (a fake scheduler), and the scheduler's side: deleting runs,
stopping one workflow, tags in the run views."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from click.testing import CliRunner

from dstack.cli import cleanup, context, follow, runs
from dstack.cli.main import cli
from dstack.cli.render import human_size, runs_table
from dstack.cli.timespec import parse_duration, parse_since
from dstack.errors import DstackError, RequestRejected
from dstack.logs import LogChunk
from dstack.messages import (
    DeleteRuns,
    Endpoint,
    GetRuns,
    GetUsers,
    JobSpec,
    StopRun,
    SubmitRun,
    TagRun,
    TaskFinished,
    TaskStarted,
    WorkflowSpec,
)
from dstack.names import log_chunk_key
from dstack.scheduler.model import Status
from dstack.storage.local import LocalStorage
from dstack.views import AppView, DeletedRuns, JobView, RunView, UsersAnswer, UserView, WorkflowView
from tests.scheduler_harness import PROVIDER, RUN, Harness, spec

# ----------------------------------------------------------------------------- durations and times


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("7d", 604800),
                                           ("1h30m", 5400), ("1.5h", 5400), ("2w", 14 * 86400), (" 12H ", 43200)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 minutes", "-5m", "5x", "1h 30m"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration: write a number and a unit"):
        parse_duration(text)


def test_since_a_duration_ago_or_an_iso_time() -> None:
    now = 1_700_000_000.0
    assert parse_since("5m", now=now) == now - 300
    assert parse_since("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc).timestamp()
    assert parse_since("2024-05-01 12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc).timestamp()
    assert parse_since("2024-05-01T10:00") == datetime(2024, 5, 1, 10).timestamp()  # local time
    with pytest.raises(ValueError, match="neither a duration .* nor an ISO time"):
        parse_since("yesterday")


def test_a_bad_since_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["logs", "some-run", "--since", "yesterday"])
    assert result.exit_code == 2 and "neither a duration" in result.output


def test_human_sizes() -> None:
    assert [human_size(n) for n in (None, 0, 999, 1000, 1_500_000, 2_000_000_000, 3 * 10**12)] == [
        "-", "0 B", "999 B", "1.0 KB", "1.5 MB", "2.0 GB", "3.0 TB"]


# ----------------------------------------------------------------------------- which log lines are printed


@pytest.fixture
def stored_logs(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "storage")
    for task, number, lines in [("train.provider", 0, [(100.0, "provider says")]),
                                ("train.0", 0, [(101.0, "train 0 early"), (200.0, "train 0 late")]),
                                ("train.1", 0, [(150.0, "train 1")]),
                                ("eval.0", 0, [(300.0, "eval")])]:
        storage.put_bytes(log_chunk_key(RUN, task, number), LogChunk(task, number, lines).encode())
    return storage


def printed(capsys: pytest.CaptureFixture[str], printer: follow.LogPrinter) -> list[str]:
    printer.catch_up()
    return capsys.readouterr().out.splitlines()


def test_log_lines_of_a_workflow_a_job_or_since_a_time(stored_logs: LocalStorage,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, follow.LogPrinter(stored_logs, RUN)) == [
        "train.provider | provider says", "train.0 | train 0 early", "train.1 | train 1", "train.0 | train 0 late",
        "eval.0 | eval"]
    assert printed(capsys, follow.LogPrinter(stored_logs, RUN, follow.WorkflowTasks("train"))) == [
        "train.provider | provider says", "train.0 | train 0 early", "train.1 | train 1", "train.0 | train 0 late"]
    assert printed(capsys, follow.LogPrinter(stored_logs, RUN, {"train.0"})) == [
        "train.0 | train 0 early", "train.0 | train 0 late"]
    since = follow.LogPrinter(stored_logs, RUN, follow.WorkflowTasks("train"), since=150.0)
    assert printed(capsys, since) == ["train.1 | train 1", "train.0 | train 0 late"]
    assert since.seen == {"train.provider": 1, "train.0": 1, "train.1": 1}  # read, not printed twice later


def test_live_lines_are_selected_too(stored_logs: LocalStorage, capsys: pytest.CaptureFixture[str]) -> None:
    printer = follow.LogPrinter(stored_logs, RUN, follow.WorkflowTasks("train"), since=150.0)
    printer.catch_up()
    capsys.readouterr()
    printer.live(LogChunk("eval.0", 1, [(400.0, "not train")]))
    printer.live(LogChunk("train.2", 0, [(149.0, "too early"), (401.0, "a new job of train")]))
    printer.live(LogChunk("train.0", 1, [(402.0, "more")]))
    assert capsys.readouterr().out.splitlines() == ["train.2 | a new job of train", "train.0 | more"]


def run_view(status: Status = Status.RUNNING, **fields: Any) -> RunView:
    jobs = [JobView(job_id="train.provider", kind="provider", workflow="train", status=Status.DONE),
            JobView(job_id="train.0", kind="job", workflow="train", status=status,
                    apps=[AppView(name="tensorboard", url="http://host-1:6006/" if status is Status.RUNNING
                                  else None)])]
    return RunView(run_name=RUN, workflow="train", status=status, jobs=jobs,
                   workflows=[WorkflowView(name="prepare", status=Status.DONE),
                              WorkflowView(name="train", status=status)],
                   **fields)


def test_a_part_of_a_run_is_a_job_or_a_workflow() -> None:
    assert runs.select_tasks(run_view(), "train.0") == {"train.0"}
    assert isinstance(runs.select_tasks(run_view(), "prepare"), follow.WorkflowTasks)
    with pytest.raises(DstackError, match=f"run {RUN} has no workflow or job 'trian' "
                                          r"\(workflows: prepare, train; jobs: train.provider, train.0\)"):
        runs.select_tasks(run_view(), "trian")


# ----------------------------------------------------------------------------- what the commands do, on a fake


class FakeScheduler:
    """An RpcClient answering from ``runs``, recording every request."""

    #: the broker account it sends as, and its role
    user = "guest"
    role = "admin"

    def __init__(self, views: Sequence[RunView]) -> None:
        self.views = list(views)
        self.requests: list[Any] = []

    def call(self, request: Any) -> Any:
        self.requests.append(request)
        if isinstance(request, GetRuns):
            return [v for v in self.views if request.run_name in (None, v.run_name)
                    and request.owner in (None, v.owner)]
        if isinstance(request, GetUsers):
            return UsersAnswer(users=[], caller=UserView(self.user, self.role))
        if isinstance(request, StopRun):
            return next(v for v in self.views if v.run_name == request.run_name)
        raise AssertionError(f"unexpected {request!r}")

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeScheduler:
    scheduler = FakeScheduler([run_view(),
                               RunView(run_name="calm-seal-1000", workflow="w", status=Status.QUEUED),
                               RunView(run_name="old-ibis-2000", workflow="w", status=Status.DONE)])
    monkeypatch.setattr(context.Context, "client", lambda self: scheduler)
    return scheduler


def test_stop_all_asks_on_a_terminal(fake: FakeScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "on_terminal", lambda: True)
    result = CliRunner().invoke(cli, ["stop", "--all"], input="n\n")
    assert f"Stop 2 runs ({RUN}, calm-seal-1000)? [y/N]" in result.output
    assert result.exit_code == 1 and "Nothing stopped" in result.output
    assert not any(isinstance(r, StopRun) for r in fake.requests)
    result = CliRunner().invoke(cli, ["stop", "--all"], input="y\n")
    assert result.exit_code == 0, result.output
    assert [r.run_name for r in fake.requests if isinstance(r, StopRun)] == [RUN, "calm-seal-1000"]


def test_stop_all_does_not_ask_with_yes_or_off_a_terminal(fake: FakeScheduler,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "on_terminal", lambda: True)
    result = CliRunner().invoke(cli, ["stop", "--all", "-y"])
    assert result.exit_code == 0 and "[y/N]" not in result.output
    monkeypatch.setattr(runs, "on_terminal", lambda: False)
    result = CliRunner().invoke(cli, ["stop", "--all"])
    assert result.exit_code == 0 and "[y/N]" not in result.output
    assert [r.run_name for r in fake.requests if isinstance(r, StopRun)] == [RUN, "calm-seal-1000"] * 2


def test_stop_all_of_a_user_stops_their_own_runs(fake: FakeScheduler) -> None:
    fake.user, fake.role = "bob", "user"
    fake.views[0].owner = "bob"
    result = CliRunner().invoke(cli, ["stop", "--all", "-y"])
    assert result.exit_code == 0, result.output
    assert GetRuns(limit=None, owner="bob") in fake.requests
    assert [r.run_name for r in fake.requests if isinstance(r, StopRun)] == [RUN]


def test_stop_needs_a_run_or_all(fake: FakeScheduler) -> None:
    assert CliRunner().invoke(cli, ["stop"]).exit_code == 2
    assert CliRunner().invoke(cli, ["stop", RUN, "--all"]).exit_code == 2
    result = CliRunner().invoke(cli, ["stop", RUN, "train"])
    assert result.exit_code == 0 and fake.requests == [StopRun(run_name=RUN, workflow="train")]


def test_tag_without_a_name_uses_the_run_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class Recorder(FakeScheduler):
        def call(self, request: Any) -> Any:
            calls.append(request)

    monkeypatch.setattr(context.Context, "client", lambda self: Recorder([]))
    result = CliRunner().invoke(cli, ["tag", RUN])
    assert result.exit_code == 0 and calls == [TagRun(run_name=RUN, tag=RUN)]


def test_app_urls(fake: FakeScheduler) -> None:
    result = CliRunner().invoke(cli, ["app", RUN])
    assert result.exit_code == 0 and result.output == "train.0\ttensorboard\thttp://host-1:6006/\n"
    result = CliRunner().invoke(cli, ["app", RUN, "train.1"])
    assert result.exit_code == 1 and "has no job 'train.1' (its jobs: train.0)" in result.output
    fake.views[0] = run_view(Status.DONE)
    result = CliRunner().invoke(cli, ["app", RUN])
    assert result.exit_code == 1
    assert "No app of witty-otter-1234 runs now (done): train.0 tensorboard get URLs while their jobs run" \
        in result.output
    result = CliRunner().invoke(cli, ["app", "calm-seal-1000"])
    assert result.exit_code == 1 and "calm-seal-1000 has no apps" in result.output


def test_status_is_plain_text_with_tags_and_sizes_when_piped(fake: FakeScheduler) -> None:
    fake.views[0] = run_view(Status.DONE, tags=["best", "v1"], artifacts_size=1_500_000)
    result = CliRunner().invoke(cli, ["status", "--all"])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output and "[bold]" not in result.output and "[green]" not in result.output
    header, first = result.output.splitlines()[:2]
    assert header.split() == ["RUN", "/", "JOB", "WORKFLOW", "OWNER", "STATUS", "EXIT", "SUBMITTED", "DURATION",
                              "TAGS", "ARTIFACTS", "PORTS", "/", "URL", "REASON"]
    assert RUN in first and "best, v1" in first and "1.5 MB" in first
    assert fake.requests == [GetRuns(limit=None)]
    CliRunner().invoke(cli, ["status", "-n", "3"])
    assert fake.requests[-1] == GetRuns(limit=3)
    CliRunner().invoke(cli, ["status", "--mine"])
    assert fake.requests[-1] == GetRuns(limit=20, owner="guest")  # the broker account of DSTACK_BROKER_URL


def test_status_is_coloured_on_a_terminal() -> None:
    from rich.console import Console
    console = Console(force_terminal=True, color_system="standard", width=200)
    with console.capture() as captured:
        console.print(runs_table([run_view(Status.FAILED)]))
    assert "\x1b[31mfailed" in captured.get()


def test_prune_picks_finished_untagged_runs_older_than_asked() -> None:
    now = 1_700_000_000.0
    views = [RunView(run_name="a", workflow="w", status=Status.DONE, finished_at=now - 10 * 86400),
             RunView(run_name="b", workflow="w", status=Status.FAILED, finished_at=now - 3600),
             RunView(run_name="c", workflow="w", status=Status.DONE, finished_at=now - 20 * 86400, tags=["keep"]),
             RunView(run_name="d", workflow="w", status=Status.RUNNING),
             RunView(run_name="e", workflow="w", status=Status.STOPPED, finished_at=now - 30 * 86400)]
    assert [r.run_name for r in cleanup.prunable(views, None, now)] == ["e", "a", "b"]
    assert [r.run_name for r in cleanup.prunable(views, 7 * 86400, now)] == ["e", "a"]
    assert cleanup.prunable(views, 60 * 86400, now) == []


# ----------------------------------------------------------------------------- Ctrl-C while following


class Interrupted:
    """``follow`` that raises KeyboardInterrupt ``times`` times, then returns the run ``final``."""

    def __init__(self, times: int, final: Status) -> None:
        self.times, self.final, self.calls = times, final, 0
        self.printers: list[Any] = []

    def __call__(self, rpc: Any, broker_url: str, storage: Any, run_name: str, **options: Any) -> RunView:
        self.calls += 1
        self.printers.append(options.get("printer"))
        if self.calls <= self.times:
            raise KeyboardInterrupt
        return RunView(run_name=run_name, workflow="w", status=self.final)


@pytest.fixture
def following(monkeypatch: pytest.MonkeyPatch, fake: FakeScheduler) -> Iterator[Any]:
    monkeypatch.setattr(context.Context, "storage", property(lambda self: LocalStorage("/nonexistent")))

    def run(interrupts: int, terminal: bool, answer: Optional[str]) -> tuple[int, str, Interrupted]:
        followed = Interrupted(interrupts, Status.STOPPED)
        monkeypatch.setattr(follow, "follow", followed)  # runs imports it when it follows
        monkeypatch.setattr(runs, "on_terminal", lambda: terminal)
        command = runs.click.Command("f", callback=lambda: runs._follow_to_end(context.Context(), fake, RUN))
        result = CliRunner().invoke(command, [], input=answer)
        return result.exit_code, result.output, followed
    yield run


def test_ctrl_c_on_a_terminal_asks_and_yes_stops_the_run(following: Any, fake: FakeScheduler) -> None:
    code, output, followed = following(1, True, "y\n")
    assert f"Stop {RUN}? [y/N]" in output
    assert StopRun(run_name=RUN) in fake.requests
    assert code == 1 and f"{RUN} stopped" in output  # followed to its end
    assert followed.calls == 2 and followed.printers[0] is followed.printers[1]  # nothing printed twice


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])  # no, the default, end of input
def test_ctrl_c_on_a_terminal_answered_no_detaches(following: Any, fake: FakeScheduler, answer: str) -> None:
    code, output, _ = following(1, True, answer)
    assert code == 130 and f"Detached; {RUN} goes on" in output
    assert not any(isinstance(r, StopRun) for r in fake.requests)


def test_a_second_ctrl_c_while_stopping_detaches(following: Any, fake: FakeScheduler) -> None:
    code, output, followed = following(2, True, "y\n")
    assert code == 130 and f"Detached; {RUN} goes on" in output and followed.calls == 2
    assert output.count("[y/N]") == 1


def test_ctrl_c_without_a_terminal_detaches_without_asking(following: Any, fake: FakeScheduler) -> None:
    code, output, _ = following(1, False, None)
    assert code == 130 and "[y/N]" not in output and f"Detached; {RUN} goes on" in output
    assert not any(isinstance(r, StopRun) for r in fake.requests)


# ----------------------------------------------------------------------------- the scheduler's side


def submit(h: Harness, workflows: list[WorkflowSpec], run: str = RUN) -> Any:
    return h.scheduler.handle_request(SubmitRun(run_name=run, workflow=workflows[-1].name, workflows=workflows,
                                                snapshot_id="snap-1", submitted_at=time.time(), project="/p"))


def wf(name: str, depends_on: Sequence[str] = ()) -> WorkflowSpec:
    return WorkflowSpec(name=name, data={}, provider=PROVIDER, depends_on=list(depends_on))


def complete(h: Harness, task_id: str, run: str = RUN, status: str = "done",
             jobs: Optional[list[JobSpec]] = None) -> None:
    h.start(task_id, run=run)
    h.scheduler.handle_event(TaskFinished(run_name=run, task_id=task_id, attempt=1, status=Status(status),
                                          exit_code=0, jobs=jobs))


def finished_run(h: Harness, run: str) -> None:
    submit(h, [wf("w")], run=run)
    complete(h, "w.provider", run=run, jobs=[spec("a")])
    complete(h, "w.0", run=run)
    assert h.run(run).status is Status.DONE


def test_delete_runs_forgets_finished_runs_all_or_none(h: Harness) -> None:
    finished_run(h, "old-ibis-2000")
    finished_run(h, "old-seal-3000")
    submit(h, [wf("w")], run="busy-lynx-4000")
    h.scheduler.handle_request(TagRun(run_name="old-seal-3000", tag="best"))
    with pytest.raises(RequestRejected) as refused:
        h.scheduler.handle_request(DeleteRuns(["old-ibis-2000", "old-seal-3000", "busy-lynx-4000", "ghost"]))
    assert str(refused.value) == (
        "nothing deleted: old-seal-3000 is tagged (best); untag it first, or delete it with --force; "
        "busy-lynx-4000 is queued; stop it first (`dstack stop busy-lynx-4000`); no run named 'ghost'")
    assert len(h.scheduler.handle_request(GetRuns())) == 3
    assert h.scheduler.handle_request(DeleteRuns(["old-ibis-2000"])) == {"run_names": ["old-ibis-2000"],
                                                                         "tags": []}
    assert h.scheduler.handle_request(DeleteRuns(["old-seal-3000"], force=True)) == {
        "run_names": ["old-seal-3000"], "tags": ["best"]}
    assert [r["run_name"] for r in h.scheduler.handle_request(GetRuns())] == ["busy-lynx-4000"]
    with h.store.transaction():
        assert h.store.tasks_of("old-ibis-2000") == [] and h.store.list_tags() == []
        edges = h.store._db.execute("SELECT count(*) FROM edges WHERE run_name LIKE 'old-%'").fetchone()[0]
    assert edges == 0
    with pytest.raises(RequestRejected, match="no run named 'old-ibis-2000'"):
        h.scheduler.handle_request(GetRuns(run_name="old-ibis-2000"))
    finished_run(h, "old-ibis-2000")  # the name can be used again


def test_run_views_carry_their_tags(h: Harness) -> None:
    finished_run(h, "old-ibis-2000")
    for tag in ("v2", "best"):
        h.scheduler.handle_request(TagRun(run_name="old-ibis-2000", tag=tag))
    (view,) = h.scheduler.handle_request(GetRuns(run_name="old-ibis-2000"))
    assert view["tags"] == ["best", "v2"]
    assert h.scheduler.handle_request(GetRuns(limit=None))[0]["tags"] == ["best", "v2"]


def chain(h: Harness) -> None:
    """prepare -> train -> evaluate, and report (independent); prepare done, train's job running."""
    submit(h, [wf("prepare"), wf("train", ["prepare"]), wf("evaluate", ["train"]), wf("report"),
               wf("all", ["evaluate", "report"])])
    complete(h, "prepare.provider", jobs=[spec("p")])
    complete(h, "prepare.0")
    complete(h, "train.provider", jobs=[spec("t")])
    h.start("train.0", worker="w7")


def test_stop_of_a_workflow_stops_it_and_what_depends_on_it(h: Harness) -> None:
    chain(h)
    view = h.scheduler.handle_request(StopRun(run_name=RUN, workflow="train"))
    assert view["status"] == "running"
    statuses = {t.task_id: t.status for t in h.records().values()}
    assert statuses["prepare"] is Status.DONE and statuses["prepare.0"] is Status.DONE
    assert statuses["train.0"] is Status.RUNNING  # its worker was told to stop it
    assert statuses["evaluate.provider"] is Status.STOPPED and statuses["all.provider"] is Status.STOPPED
    assert statuses["report.provider"] is Status.QUEUED  # independent: goes on
    assert any(getattr(m, "task_id", None) == "train.0" and type(m).__name__ == "StopTask"
               for _, _, m in h.messages())
    h.scheduler.handle_event(TaskFinished(run_name=RUN, task_id="train.0", attempt=1, status=Status.STOPPED,
                                          exit_code=143))
    complete(h, "report.provider", jobs=[spec("r")])
    complete(h, "report.0")
    assert h.run().status is Status.STOPPED
    with pytest.raises(RequestRejected, match=r"has no workflow 'trian' \(it has: all, evaluate, prepare, report"):
        h.scheduler.handle_request(StopRun(run_name=RUN, workflow="trian"))


def test_a_workflow_stopped_while_its_provider_runs_gets_no_jobs(h: Harness) -> None:
    submit(h, [wf("train")])
    h.start("train.provider")
    h.scheduler.handle_request(StopRun(run_name=RUN, workflow="train"))
    h.scheduler.handle_event(TaskFinished(run_name=RUN, task_id="train.provider", attempt=1, status=Status.DONE,
                                          exit_code=0, jobs=[spec("a")]))  # it ended before the stop came
    assert set(h.records()) == {"train", "train.provider"}
    assert h.run().status.finished


def test_task_started_for_a_stopped_workflow_is_told_to_stop(h: Harness) -> None:
    submit(h, [wf("train")])
    h.claim("train.provider")
    h.scheduler.handle_request(StopRun(run_name=RUN, workflow="train"))
    sent = len(h.sent)
    h.scheduler.handle_event(TaskStarted(run_name=RUN, task_id="train.provider", attempt=1, worker_id="w1",
                                         endpoint=Endpoint(hostname="host-1")))
    assert [m.task_id for _, _, m in h.messages(sent) if type(m).__name__ == "StopTask"] == ["train.provider"]


# ----------------------------------------------------------------------------- shell completion


def test_completion_scripts_for_bash_and_zsh() -> None:
    for shell in ("bash", "zsh"):
        result = CliRunner().invoke(cli, [], prog_name="dstack", env={"_DSTACK_COMPLETE": f"{shell}_source"})
        assert result.exit_code == 0 and "_DSTACK_COMPLETE" in result.output and f"{shell}_complete" in result.output


def test_run_names_complete_from_the_scheduler(fake: FakeScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "RpcClient", lambda url, timeout: fake)
    assert context.complete_run_names(None, None, "c") == ["calm-seal-1000"]  # type: ignore[arg-type]
    assert fake.requests == [GetRuns(limit=200)]


def test_run_names_complete_to_nothing_when_the_broker_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/")
    assert context.complete_run_names(None, None, "") == []  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- delete and prune, on a fake


class Forgetting(FakeScheduler):
    """Also answers DeleteRuns, as the scheduler does when it may."""

    def call(self, request: Any) -> Any:
        if isinstance(request, DeleteRuns):
            self.requests.append(request)
            self.views = [v for v in self.views if v.run_name not in request.run_names]
            return DeletedRuns(run_names=request.run_names, tags=["best"] if request.force else [])
        return super().call(request)


def test_prune_lists_asks_and_frees_the_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    for run_name, size in (("old-ibis-2000", 1500), ("calm-seal-1000", 10), ("other-run-3000", 7)):
        storage.put_bytes(f"runs/{run_name}/artifacts/w.0/data.bin", b"x" * size)
        storage.put_bytes(f"runs/{run_name}/logs/w.0/0000000000.msgpack", b"x" * 5)
    scheduler = Forgetting([RunView(run_name="old-ibis-2000", workflow="w", status=Status.DONE,
                                    finished_at=time.time() - 3 * 86400, artifacts_size=1500),
                            RunView(run_name="calm-seal-1000", workflow="w", status=Status.FAILED,
                                    finished_at=time.time() - 60),
                            RunView(run_name="kept-lynx-5000", workflow="w", status=Status.DONE, tags=["best"]),
                            RunView(run_name="busy-lynx-4000", workflow="w", status=Status.RUNNING)])
    monkeypatch.setattr(context.Context, "client", lambda self: scheduler)
    monkeypatch.setattr(context.Context, "storage", property(lambda self: storage))
    monkeypatch.setattr(cleanup, "on_terminal", lambda: True)

    result = CliRunner().invoke(cli, ["prune"], input="n\n")
    assert result.exit_code == 1 and "Nothing deleted" in result.output
    assert "old-ibis-2000\tw\tdone\tended 3 d ago\t1.5 KB of artifacts" in result.output
    assert "calm-seal-1000" in result.output and "kept-lynx-5000" not in result.output
    assert "Delete these 2 runs with their logs and artifacts? [y/N]" in result.output
    assert not any(isinstance(r, DeleteRuns) for r in scheduler.requests)

    result = CliRunner().invoke(cli, ["prune", "--older-than", "1d"], input="y\n")
    assert result.exit_code == 0, result.output
    assert "Delete this run with its logs and artifacts? [y/N]" in result.output
    assert scheduler.requests[-1] == DeleteRuns(run_names=["old-ibis-2000"])
    assert "old-ibis-2000 deleted (2 objects, 1.5 KB)" in result.output
    assert "Deleted 1 run; freed 1.5 KB (2 objects)" in result.output
    assert list(storage.list("runs/old-ibis-2000/")) == [] and list(storage.list("runs/calm-seal-1000/"))

    result = CliRunner().invoke(cli, ["prune", "--older-than", "1d"])
    assert result.exit_code == 0 and "Nothing to prune: no finished untagged run that ended more than 1d ago" \
        in result.output
    result = CliRunner().invoke(cli, ["prune", "--older-than", "soon"])
    assert result.exit_code == 2 and "'soon' is not a duration" in result.output

    result = CliRunner().invoke(cli, ["delete", "other-run-3000", "--force"])
    assert result.exit_code == 0, result.output
    assert scheduler.requests[-1] == DeleteRuns(run_names=["other-run-3000"], force=True)
    assert "tags removed: best" in result.output and list(storage.list("runs/other-run-3000/")) == []
    assert list(storage.list("runs/calm-seal-1000/"))  # -y not given and not asked: prune did not run
