"""The commands about runs: run, restart, status, logs, stop, and the tags that name runs."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import click

from dstack import builtin_providers
from dstack.cli.context import Context, err, out, pass_context
from dstack.cli.follow import LogPrinter, follow
from dstack.cli.render import print_runs
from dstack.cli.workflows import asks_help, describe
from dstack.errors import ConfigError
from dstack.messages import GetRuns, GetTags, RestartRun, StopRun, SubmitRun, TagRun, UntagRun, WorkflowSpec, plain
from dstack.names import new_run_name
from dstack.planning import parse_overrides, plan_builtin_run, plan_run
from dstack.project import Project, find_root, load_project
from dstack.rpc import RpcClient
from dstack.snapshot import upload_snapshot
from dstack.states import Status
from dstack.views import RunView, TagView


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workflow")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-d", "--detach", is_flag=True, help="Return right after submitting; do not follow.")
@pass_context
def run(context: Context, workflow: str, args: tuple[str, ...], detach: bool) -> None:
    """Run WORKFLOW of the project in the current folder (and the workflows it depends on), or a
    built-in provider with ARGS, and follow the run to the end.

    \b
    dstack run train --epochs 100       a workflow; ARGS override .dstack/variables.yaml (--name value)
    dstack run python train.py --lr 1   a built-in provider (no workflow file needed): bash, curl,
    dstack run bash -c "make data"      docker, python, tensorboard, torchrun; `dstack run python -h`
                                        shows its options, which go before the script
    dstack run train --help             what workflow train is for, its parameters and variables

    -d goes before WORKFLOW, or at the end of a workflow's variables. Exits 0 when the run is done,
    1 when it failed or was stopped. Ctrl-C stops following, not the run.
    """
    cwd = Path.cwd()
    root = find_root(cwd, required=False)
    project = load_project(root) if root is not None and (root / ".dstack" / "workflows.yaml").exists() else None
    if project is not None and workflow in project.workflows and asks_help(list(args)):
        click.echo(describe(project, workflow))  # and nothing is submitted
        return
    root, workflows, detached = _plan(workflow, list(args), cwd, project)
    with context.rpc() as rpc:  # reaching the broker before uploading anything
        snapshot_id, files, uploaded = upload_snapshot(root, context.storage)
        run_name = new_run_name()
        rpc.call(SubmitRun(run_name=run_name, workflow=workflow, workflows=workflows, snapshot_id=snapshot_id,
                           submitted_at=time.time(), project=str(root)))
        err.print(f"[dim]snapshot: {files} files, {uploaded} uploaded[/]")
        out.print(run_name)
        if not (detach or detached):
            _follow_to_end(context, rpc, run_name)


def _plan(name: str, args: list[str], cwd: Path, project: Optional[Project]) -> tuple[Path, list[WorkflowSpec], bool]:
    """What ``dstack run NAME ARGS`` in ``cwd`` submits: the project root, the workflows, and whether ARGS asked
    to detach. NAME is a workflow of ``project`` (the one ``cwd`` is in, if it has workflows) if it has one,
    else a built-in provider.

    Raises:
        ConfigError: neither, or the project or ARGS are wrong.
    """
    if builtin_providers.is_builtin(name) and (project is None or name not in project.workflows):
        root = find_root(cwd, required=False) or cwd
        return root, plan_builtin_run(name, args, working_dir=cwd.relative_to(root).as_posix()), False
    if project is None:
        raise ConfigError(f"no .dstack/workflows.yaml in {cwd} or above it, and '{name}' is not a built-in provider "
                          f"({', '.join(builtin_providers.names())}); run dstack inside a project, or a built-in "
                          "provider, e.g. `dstack run python train.py`")
    project.workflow(name)  # an unknown name is told as such, before its arguments
    variables = [a for a in args if a not in ("-d", "--detach")]  # -d may follow a workflow's variables
    return project.root, plan_run(project, name, parse_overrides(variables)), len(variables) < len(args)


@click.command()
@click.argument("run_name")
@click.argument("workflow", required=False)
@click.option("-d", "--detach", is_flag=True, help="Return right away; do not follow.")
@pass_context
def restart(context: Context, run_name: str, workflow: Optional[str], detach: bool) -> None:
    """Run the failed and stopped parts of RUN_NAME again (those of WORKFLOW and what depends on
    it, if given). Parts that are done stay done, and their artifacts are used again."""
    with context.rpc() as rpc:
        rpc.call(RestartRun(run_name=run_name, workflow=workflow))
        out.print(run_name)
        if not detach:
            _follow_to_end(context, rpc, run_name)


def _follow_to_end(context: Context, rpc: RpcClient, run_name: str) -> None:
    try:
        final = follow(rpc, context.settings.broker_url, context.storage, run_name, err=err)
    except KeyboardInterrupt:
        err.print(f"\nDetached; {run_name} goes on. Follow it with `dstack logs {run_name} -f`, "
                  f"stop it with `dstack stop {run_name}`.")
        sys.exit(130)
    done = final.status is Status.DONE
    message = f"{run_name} {final.status.value}" + (f": {final.reason}" if final.reason else "")
    err.print(f"[{'green' if done else 'red'}]{message}[/]")
    sys.exit(0 if done else 1)


@click.command()
@click.argument("run_name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of runs, each with its jobs.")
@click.option("-n", "--limit", default=20, show_default=True, help="How many recent runs to list.")
@pass_context
def status(context: Context, run_name: Optional[str], as_json: bool, limit: int) -> None:
    """List recent runs with their jobs, or the run RUN_NAME.

    The --json output is the stable interface for scripts: a list of runs, each with
    run_name, workflow, status, reason, submitted_at, started_at, finished_at and jobs
    (each with job_id, status, exit_code, reason, hostname, ports, ...).
    """
    with context.rpc() as rpc:
        runs: list[RunView] = rpc.call(GetRuns(run_name=run_name, limit=limit))
    if as_json:
        click.echo(json.dumps(plain(runs), indent=2))
    else:
        print_runs(out, runs, detailed=bool(run_name))


@click.command()
@click.argument("run_name")
@click.argument("job", required=False)
@click.option("-f", "--follow", "live", is_flag=True, help="Keep printing new lines until the run ends.")
@pass_context
def logs(context: Context, run_name: str, job: Optional[str], live: bool) -> None:
    """Print the logs of RUN_NAME (or of its JOB), each line marked with its job."""
    if live:
        with context.rpc() as rpc:
            try:
                follow(rpc, context.settings.broker_url, context.storage, run_name, job=job, show_status=False)
            except KeyboardInterrupt:
                sys.exit(130)
        return
    printer = LogPrinter(context.storage, run_name, job)
    printer.catch_up()
    if not printer.seen:
        with context.rpc() as rpc:
            rpc.call(GetRuns(run_name=run_name))  # an unknown run is an error
        err.print(f"no logs stored yet for {run_name}" + (f" job {job}" if job else ""))


@click.command()
@click.argument("run_name")
@click.option("--abort", is_flag=True, help="Do not upload the artifacts of the stopped jobs.")
@pass_context
def stop(context: Context, run_name: str, abort: bool) -> None:
    """Stop RUN_NAME: running jobs get SIGTERM (SIGKILL after a grace period); queued jobs never start."""
    with context.rpc() as rpc:
        view: RunView = rpc.call(StopRun(run_name=run_name, abort=abort))
    out.print(f"{run_name}: stop requested (now {view.status.value})")


@click.command()
@click.argument("run_name")
@click.argument("tag")
@pass_context
def tag(context: Context, run_name: str, tag: str) -> None:
    """Name RUN_NAME with TAG, so that workflows can use its artifacts with `depends-on: [WORKFLOW:TAG]`."""
    with context.rpc() as rpc:
        rpc.call(TagRun(run_name=run_name, tag=tag))
    out.print(f"{tag} -> {run_name}")


@click.command()
@click.argument("tag")
@pass_context
def untag(context: Context, tag: str) -> None:
    """Remove TAG (the run itself stays)."""
    with context.rpc() as rpc:
        rpc.call(UntagRun(tag=tag))
    out.print(f"{tag} removed")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of tags.")
@pass_context
def tags(context: Context, as_json: bool) -> None:
    """List tags with their runs and the workflows those runs hold."""
    with context.rpc() as rpc:
        listing: list[TagView] = rpc.call(GetTags())
    if as_json:
        click.echo(json.dumps(plain(listing), indent=2))
        return
    if not listing:
        out.print("No tags yet. Tag a run with [bold]dstack tag RUN NAME[/].")
    for item in listing:
        click.echo(f"{item.tag}\t{item.run_name}\t{item.status}\t{', '.join(item.workflows)}")
