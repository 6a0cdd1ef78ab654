"""What a hands-on review of the daily CLI found (issue 13): text of runs and jobs is never read as rich markup
(a reason or an error quoting `[/x]` crashed `dstack status` and `dstack run`), a failed job's reason shows its
last line in the status table, `dstack artifacts list RUN` of an unknown run says so, `--cache`/`--no-cache` are
read among a workflow's ARGS as `-d` is, and a worker starts while another one removes its containers."""
from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from rich.console import Console

from dstack.cli import artifacts, follow, runs
from dstack.cli.render import runs_table, short_reason
from dstack.cli.workflows import asks_help, describe
from dstack.messages import ArtifactManifest, GetRuns
from dstack.names import artifacts_manifest_key, run_prefix
from dstack.planning import split_args
from dstack.project import load_project
from dstack.scheduler.model import Status
from dstack.views import JobView, RunView
from dstack.workers.runtime import DockerRuntime
from tests.scheduler_harness import RUN
from tests.unit.test_artifacts_cli import FakeContext, context, dstack, h  # noqa: F401 (fixtures)

MARKUP = "field 'commands': '[/x] oops' is not of type 'array'"
REASON = "exit code 2; last lines:\nusage: dstack run web NAME\nerror: [red]the following arguments are required[/]"


def job(**fields: Any) -> JobView:
    values: dict[str, Any] = dict(job_id="web.provider", kind="provider", workflow="web", status=Status.FAILED,
                                  exit_code=2, reason=REASON)
    values.update(fields)
    return JobView(**values)


def rendered(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=400, force_terminal=True, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- markup in reasons and errors


def test_reasons_are_shown_as_written_with_their_last_line() -> None:
    run = RunView(run_name=RUN, workflow="web", status=Status.FAILED, reason=f"web.provider: {MARKUP}",
                  jobs=[job()])
    text = rendered(runs_table([run]))
    assert MARKUP in text
    assert "exit code 2; last lines: ... error: [red]the following arguments are required[/]" in text


def test_short_reason() -> None:
    assert short_reason("") == "" and short_reason("stopped by request") == "stopped by request"
    assert short_reason("exit code 137; last lines:\nstep 1\nstep 2\n") == "exit code 137; last lines: ... step 2"


def test_status_lines_of_dstack_run_show_reasons_as_written() -> None:
    console = Console(file=io.StringIO(), width=400, color_system=None)
    follow._show_changes([job(reason=MARKUP)], {}, console)
    assert f"web.provider failed (exit code 2): {MARKUP}" in console.file.getvalue()  # type: ignore[attr-defined]


def test_an_error_quoting_markup_is_printed_as_written(context: FakeContext) -> None:  # noqa: F811
    result = dstack(context, "artifacts", "list", RUN, "[/x]")
    assert result.exit_code == 1, result.output
    assert "no workflow or job named '[/x]'" in " ".join(result.stderr.split())


# ----------------------------------------------------------------------------- artifacts of an unknown run


def test_artifacts_of_an_unknown_run_and_of_a_run_without_any(context: FakeContext) -> None:  # noqa: F811
    result = dstack(context, "artifacts", "download", "ghost-run-0001")
    assert result.exit_code == 1 and "no run named 'ghost-run-0001'" in result.stderr
    context.storage.delete_prefix(run_prefix(RUN))
    result = dstack(context, "artifacts", "list", RUN)
    assert result.exit_code == 1 and f"no artifacts stored for run '{RUN}'" in result.stderr
    assert context.fake_rpc.calls[-1] == GetRuns.__name__  # the run was asked for only when nothing was found


# ----------------------------------------------------------------------------- --cache among ARGS


WORKFLOWS = """\
workflows:
  - name: hello
    provider: bash
    commands: [echo hi]
    cache: true
  - name: train
    provider: bash
    depends-on: [hello]
    commands: [echo train]
"""


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(WORKFLOWS)
    return tmp_path


def test_cache_flags_among_args_apply_to_every_workflow_of_the_run(project_dir: Path) -> None:
    project = load_project(project_dir)
    assert split_args(project, "train", []).cache is None
    assert split_args(project, "train", ["--cache", "-d"]).cache is True
    assert split_args(project, "train", ["--cache", "--no-cache"]).cache is False
    assert split_args(project, "train", ["--", "--cache"]).provider_args == ["--cache"]
    _, specs, detach = runs._plan("train", ["--no-cache", "-d"], project_dir, project)
    assert detach and [(s.name, s.cache, s.provider_args) for s in specs] == [("hello", False, []),
                                                                             ("train", False, [])]
    _, specs, _ = runs._plan("train", [], project_dir, project)
    assert [s.cache for s in specs] == [True, False]  # as the workflows say
    _, specs, _ = runs._plan("train", ["--cache"], project_dir, project)
    assert [s.cache for s in specs] == [True, True]


def test_a_variable_named_cache_takes_its_value(project_dir: Path) -> None:
    (project_dir / ".dstack" / "variables.yaml").write_text("variables:\n  global:\n    cache: warm\n")
    split = split_args(load_project(project_dir), "train", ["--cache", "cold"])
    assert split.cache is None and split.variables == {"cache": "cold"}


# ----------------------------------------------------------------------------- a worker's start


class _Api:
    """Docker's API: two containers listed, the first removed before it is inspected."""

    def containers(self, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"Id": "gone"}, {"Id": "kept"}]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if container_id == "gone":
            raise docker.errors.NotFound("No such container: gone")
        return {"Id": container_id, "Name": "/dstack-kept", "Config": {"Labels": {"ai.dstack.task": "x"}}}


def test_containers_removed_while_listed_are_left_out() -> None:
    client = type("Client", (), {})()
    client.api = _Api()
    client.containers = docker.models.containers.ContainerCollection(client=client)
    runtime = DockerRuntime.__new__(DockerRuntime)
    runtime._client = client
    runtime.network = "host"
    assert [c.name for c in runtime.managed()] == ["dstack-kept"]


def test_help_after_a_cache_flag_is_help_and_says_caching_is_on(project_dir: Path) -> None:
    assert asks_help(["--no-cache", "-h"]) and asks_help(["--cache", "--help"])
    assert not asks_help(["--epochs", "-h"])  # -h as a variable's value
    project = load_project(project_dir)
    assert "Job caching: on (cache: true)" in describe(project, "hello")
    assert "Job caching" not in describe(project, "train")


# ----------------------------------------------------------------------------- artifacts that are not final


def test_partial_artifacts_are_marked_on_a_terminal_only(
        context: FakeContext, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    key = artifacts_manifest_key(RUN, "train.1")
    manifest = ArtifactManifest.from_json(context.storage.get_bytes(key))
    context.storage.put_bytes(key, dataclasses.replace(manifest, complete=False).to_json())  # as a lost job's
    result = dstack(context, "artifacts", "list", RUN, "--total")
    assert result.stdout.splitlines() == ["prepare.0\t1\t8", "train.0\t2\t3002", "train.1\t1\t10", "total\t4\t3020"]
    terminal = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    monkeypatch.setattr(artifacts, "out", terminal)
    assert dstack(context, "artifacts", "list", RUN, "--total").exit_code == 0
    assert dstack(context, "artifacts", "list", RUN, "train.1").exit_code == 0
    lines = [" ".join(line.split()) for line in terminal.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert "train.1 (partial) 1 10 B" in lines and "train.0 2 3.0 KB" in lines and "total 4 3.0 KB" in lines
    assert "train.1 (partial) logs/events 10 B" in lines


# ----------------------------------------------------------------------------- dstack up killed


PARENT = """\
import os, subprocess, sys, time
from dstack.cli.services import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         preexec_fn=die_with_parent(os.getpid()))
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has ended; only its parent has not reaped it yet


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only (PR_SET_PDEATHSIG)")
def test_the_children_of_dstack_up_end_when_it_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()  # SIGKILL: `dstack up` can forward nothing
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
