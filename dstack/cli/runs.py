"""The commands about runs: run, restart, status, logs, stop, and the tags that name runs.

What only ``run`` and following need (the project, planning, snapshots, logs) is imported in the functions
that use it, so that ``dstack status`` and the tag commands load neither jsonschema nor YAML (issue 14).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Container
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from dstack.cli.context import Context, complete_run_names, confirm, err, on_terminal, out, pass_context
from dstack.cli.render import print_runs, print_tags
from dstack.cli.timespec import Since
from dstack.errors import ConfigError, DstackError, RunNameTaken
from dstack.messages import (
    GetRuns,
    GetTags,
    GetUsers,
    RestartRun,
    StopRun,
    SubmitRun,
    TagRun,
    UntagRun,
    WorkflowSpec,
    plain,
)
from dstack.states import Status
from dstack.views import RunView, TagView, UserView

if TYPE_CHECKING:
    from dstack.project import Project
    from dstack.rpc import RpcClient


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workflow")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-d", "--detach", is_flag=True, help="Return right after submitting; do not follow.")
@click.option("--cache/--no-cache", default=None,
              help="Reuse the results of earlier identical jobs (--cache), or run every job (--no-cache), whatever "
                   "the workflows' `cache:` says (docs/caching.md).")
@pass_context
def run(context: Context, workflow: str, args: tuple[str, ...], detach: bool, cache: Optional[bool]) -> None:
    """Run WORKFLOW of the project in the current folder (and the workflows it depends on), or a
    built-in provider with ARGS, and follow the run to the end.

    \b
    dstack run train --epochs 100       a workflow; ARGS override .dstack/variables.yaml (--name value)
    dstack run train --gpu 2            options of its built-in provider override its parameters
    dstack run python train.py --lr 1   a built-in provider (no workflow file needed): bash, curl,
    dstack run bash -c "make data"      docker, python, tensorboard, torchrun; `dstack run python -h`
                                        shows its options, which go before the script
    dstack run train --help             what workflow train is for, its parameters, variables and
                                        the options of its provider
    dstack run shell ARG --flag x       a provider of .dstack/providers.yaml (that is no workflow);
                                        ARGS that are no variables go to a custom provider as they
                                        are (self.provider_args in the SDK)

    -d, --cache and --no-cache go before WORKFLOW, or among a workflow's ARGS (before `--`, after
    which ARGS go to the provider as written). Exits 0 when the run is done, 1 when it failed or was
    stopped. Ctrl-C asks whether to stop the run on a terminal; otherwise (or when told no) it stops
    following, not the run.
    """
    import shlex

    from rich.markup import escape

    from dstack import validated
    from dstack.cli.workflows import asks_help, describe
    from dstack.planning import provider_project
    from dstack.project import find_root, has_project_files, load_project
    from dstack.snapshot import SNAPSHOT_STATE_DIR, upload_snapshot

    validated.remember_in(context.settings.home / validated.FILE)  # an unchanged project is not checked again
    cwd = Path.cwd()
    root = find_root(cwd, required=False)
    project = load_project(root) if root is not None and has_project_files(root) else None
    if project is not None and workflow not in project.workflows and workflow in project.providers:
        project = provider_project(project, workflow)  # a provider of .dstack/providers.yaml, run with ARGS
    if project is not None and workflow in project.workflows and asks_help(list(args)):
        click.echo(describe(project, workflow))  # and nothing is submitted
        return
    root, workflows, detached = _plan(workflow, list(args), cwd, project)
    for spec in workflows:
        provider = spec.provider or spec.provider_repo
        if spec.provider_args and provider is not None:  # shown, so that a misspelt variable is seen
            shown = escape(shlex.join(spec.provider_args))
            err.print(f"[dim]arguments of provider {escape(provider.name)}: {shown}[/]")
    if cache is not None:  # --cache/--no-cache: for every workflow of the run
        for spec in workflows:
            spec.cache = cache
    with context.rpc() as rpc:  # reaching the broker before uploading anything
        snapshot_id, files, uploaded = upload_snapshot(root, context.storage,
                                                        context.settings.home / SNAPSHOT_STATE_DIR)
        run_name = _submit(rpc, SubmitRun(run_name="", workflow=workflow, workflows=workflows,
                                          snapshot_id=snapshot_id, submitted_at=0.0, project=str(root)))
        err.print(f"[dim]snapshot: {files} files, {uploaded} uploaded[/]")
        out.print(run_name)
        if not (detach or detached):
            _follow_to_end(context, rpc, run_name)


#: Names drawn for one submission before giving up (each is taken with a chance of runs kept / 3.6 million).
NAME_DRAWS = 5


def _submit(rpc: RpcClient, request: SubmitRun) -> str:
    """Send ``request`` under a fresh run name, another one while the one drawn is taken; the name."""
    from dstack.names import new_run_name

    def send_as(name: str) -> str:
        request.run_name, request.submitted_at = name, time.time()  # a resend of it would carry both again
        rpc.call(request)
        return name

    for _ in range(NAME_DRAWS - 1):
        try:
            return send_as(new_run_name())
        except RunNameTaken:
            continue
    return send_as(new_run_name())  # the last draw: a taken name is the error


def _plan(name: str, args: list[str], cwd: Path, project: Optional[Project]) -> tuple[Path, list[WorkflowSpec], bool]:
    """What ``dstack run NAME ARGS`` in ``cwd`` submits: the project root, the workflows, and whether ARGS asked
    to detach. NAME is a workflow of ``project`` (the one ``cwd`` is in, if it has workflows; a provider of its
    providers.yaml is one by then: :func:`~dstack.planning.provider_project`) if it has one, else a built-in
    provider. ARGS are split by :func:`~dstack.planning.split_args`.

    Raises:
        ConfigError: neither, or the project or ARGS are wrong.
    """
    from dstack import builtin_providers
    from dstack.planning import plan_builtin_run, plan_run, split_args
    from dstack.project import find_root

    if builtin_providers.is_builtin(name) and (project is None or name not in project.workflows):
        root = find_root(cwd, required=False) or cwd
        return root, plan_builtin_run(name, args, working_dir=cwd.relative_to(root).as_posix()), False
    if project is None:
        raise ConfigError(f"no .dstack/workflows.yaml in {cwd} or above it, and '{name}' is not a built-in provider "
                          f"({', '.join(builtin_providers.names())}); run dstack inside a project, or a built-in "
                          "provider, e.g. `dstack run python train.py`")
    project.workflow(name)  # an unknown name is told as such, before its arguments
    split = split_args(project, name, args)
    specs = plan_run(project, name, split.variables, split.provider_args)
    if split.cache is not None:  # --cache/--no-cache among ARGS, as before the name (which win over these)
        for spec in specs:
            spec.cache = split.cache
    return project.root, specs, split.detach


@click.command()
@click.argument("run_name", shell_complete=complete_run_names)
@click.argument("workflow", required=False)
@click.option("-d", "--detach", is_flag=True, help="Return right away; do not follow.")
@click.option("--clear", is_flag=True,
              help="Start the jobs that run again from nothing: delete their synced artifacts instead of "
                   "putting them back in place.")
@pass_context
def restart(context: Context, run_name: str, workflow: Optional[str], detach: bool, clear: bool) -> None:
    """Run the failed and stopped parts of RUN_NAME again (those of WORKFLOW and what depends on
    it, if given). Parts that are done stay done, and their artifacts are used again.

    Each job that runs again starts with its own last synced artifacts in place (a training script that
    resumes from its checkpoints continues), unless --clear."""
    with context.rpc() as rpc:
        rpc.call(RestartRun(run_name=run_name, workflow=workflow, clear=clear))
        out.print(run_name)
        if not detach:
            _follow_to_end(context, rpc, run_name)


def _follow_to_end(context: Context, rpc: RpcClient, run_name: str) -> None:
    """Follow the run to its end and exit 0 (done) or 1. Ctrl-C asks, on a terminal, whether to stop the run:
    yes stops it and follows it to its end; no (or Ctrl-C again, or no terminal) detaches, exit 130."""
    from dstack.cli.follow import LogPrinter, follow  # here: `dstack status` and the others do not follow

    printer = LogPrinter(context.storage, run_name)  # one for every try: no line is printed twice
    stopping = False
    while True:
        try:
            final = follow(rpc, context.settings.broker_url, context.storage, run_name, err=err, printer=printer)
            break
        except KeyboardInterrupt:
            if stopping or not on_terminal() or not confirm(f"\nStop {run_name}?"):
                err.print(f"\nDetached; {run_name} goes on. Follow it with `dstack logs {run_name} -f`, "
                          f"stop it with `dstack stop {run_name}`.")
                sys.exit(130)
        stopping = True
        rpc = context.new_client()  # the interrupted call may have left the old one midway
        rpc.call(StopRun(run_name=run_name))
        err.print(f"stopping {run_name}; Ctrl-C again detaches")
    from rich.markup import escape

    done = final.status is Status.DONE
    message = f"{run_name} {final.status.value}" + (f": {final.reason}" if final.reason else "")
    err.print(f"[{'green' if done else 'red'}]{escape(message)}[/]")
    sys.exit(0 if done else 1)


@click.command()
@click.argument("run_name", required=False, shell_complete=complete_run_names)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of runs, each with its jobs.")
@click.option("-n", "--limit", default=20, show_default=True, help="How many recent runs to list.")
@click.option("-a", "--all", "every", is_flag=True, help="List every run, not only the recent ones.")
@click.option("--mine", is_flag=True, help="Only the runs I submitted.")
@pass_context
def status(context: Context, run_name: Optional[str], as_json: bool, limit: int, every: bool, mine: bool) -> None:
    """List recent runs with their jobs, tags and artifact sizes, or the run RUN_NAME. Statuses are coloured on a
    terminal, plain text otherwise.

    The --json output is the stable interface for scripts: a list of runs, each with
    run_name, workflow, owner, status, reason, submitted_at, started_at, finished_at, tags, artifacts_size and jobs
    (each with job_id, status, exit_code, reason, hostname, ports, artifacts_size, ...).
    """
    if limit < 1:
        raise click.BadParameter("must be at least 1", param_hint="'-n'")
    with context.rpc() as rpc:
        runs: list[RunView] = rpc.call(GetRuns(run_name=run_name, limit=None if every else limit,
                                               owner=rpc.user if mine else None))
    if as_json:
        click.echo(json.dumps(plain(runs), indent=2))
    else:
        print_runs(out, runs, detailed=bool(run_name))


@click.command()
@click.argument("run_name", shell_complete=complete_run_names)
@click.argument("part", metavar="[WORKFLOW|JOB]", required=False)
@click.option("-f", "--follow", "live", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--since", type=Since(), metavar="WHEN",
              help="Only lines logged since WHEN: a duration ago (30s, 5m, 2h, 1d) or an ISO time "
                   "(2024-05-01T10:00; local time unless it names a zone).")
@pass_context
def logs(context: Context, run_name: str, part: Optional[str], live: bool, since: Optional[float]) -> None:
    """Print the logs of RUN_NAME, each line marked with its job: of every job, of a WORKFLOW's jobs (and its
    provider), or of one JOB.

    \b
    dstack logs witty-otter-1234                  every line
    dstack logs witty-otter-1234 train -f         the workflow train's jobs, until the run ends
    dstack logs witty-otter-1234 train.0 --since 10m
    """
    from dstack.cli.follow import LogPrinter, follow

    tasks: Optional[Container[str]] = None
    if part is not None:
        with context.rpc() as rpc:
            run: RunView = rpc.call(GetRuns(run_name=run_name))[0]  # an unknown run is an error
        tasks = select_tasks(run, part)
    if live:
        with context.rpc() as rpc:
            try:
                follow(rpc, context.settings.broker_url, context.storage, run_name, tasks=tasks, since=since,
                       show_status=False)
            except KeyboardInterrupt:
                sys.exit(130)
        return
    printer = LogPrinter(context.storage, run_name, tasks, since)
    printer.catch_up()
    if not printer.seen:
        if part is None:
            with context.rpc() as rpc:
                rpc.call(GetRuns(run_name=run_name))  # an unknown run is an error
        err.print(f"no logs stored yet for {run_name}" + (f" {part}" if part else ""))
    elif not printer.printed and since is not None:
        err.print(f"no lines of {run_name}" + (f" {part}" if part else "") + " since "
                  + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)))


def select_tasks(run: RunView, part: str) -> Container[str]:
    """The tasks ``dstack logs RUN PART`` prints: the job named ``part``, or the tasks of the workflow so named.

    Raises:
        DstackError: the run has neither; the message names those it has.
    """
    if any(job.job_id == part for job in run.jobs):
        return {part}
    if any(workflow.name == part for workflow in run.workflows):
        from dstack.cli.follow import WorkflowTasks

        return WorkflowTasks(part)
    workflows = ", ".join(w.name for w in run.workflows) or "none"
    jobs = ", ".join(j.job_id for j in run.jobs) or "none yet"
    raise DstackError(f"run {run.run_name} has no workflow or job '{part}' (workflows: {workflows}; jobs: {jobs})")


@click.command()
@click.argument("run_name", required=False, shell_complete=complete_run_names)
@click.argument("workflow", required=False)
@click.option("--all", "every", is_flag=True, help="Stop every unfinished run.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask (--all asks first on a terminal).")
@click.option("--abort", is_flag=True, help="Do not upload the artifacts of the stopped jobs.")
@pass_context
def stop(context: Context, run_name: Optional[str], workflow: Optional[str], every: bool, yes: bool,
         abort: bool) -> None:
    """Stop RUN_NAME (or only its WORKFLOW and what depends on it; the rest goes on), or with --all every
    unfinished run you may stop (your own; an admin's: everyone's): running jobs get SIGTERM (SIGKILL after a
    grace period); queued jobs never start."""
    if every == (run_name is not None):
        raise click.UsageError("name a run to stop, or give --all (not both)")
    with context.rpc() as rpc:
        if run_name is not None:
            view: RunView = rpc.call(StopRun(run_name=run_name, abort=abort, workflow=workflow))
            what = f"{run_name} workflow {workflow}" if workflow else run_name
            out.print(f"{what}: stop requested (the run is {view.status.value})")
            return
        caller: UserView = rpc.call(GetUsers()).caller
        owner = None if caller.role == "admin" else caller.name
        runs = [run.run_name for run in rpc.call(GetRuns(limit=None, owner=owner)) if not run.status.finished]
        if not runs:
            out.print("No unfinished runs.")
            return
        listed = ", ".join(runs[:10]) + (f", and {len(runs) - 10} more" if len(runs) > 10 else "")
        if not yes and on_terminal() and not confirm(f"Stop {len(runs)} run{'s' * (len(runs) != 1)} ({listed})?"):
            err.print("Nothing stopped.")
            sys.exit(1)
        for name in runs:
            view = rpc.call(StopRun(run_name=name, abort=abort))
            out.print(f"{name}: stop requested (now {view.status.value})")


@click.command()
@click.argument("run_name", shell_complete=complete_run_names)
@click.argument("tag", required=False)
@pass_context
def tag(context: Context, run_name: str, tag: Optional[str]) -> None:
    """Name RUN_NAME with TAG (the run's own name if not given), so that workflows can use its artifacts with
    `depends-on: [WORKFLOW:TAG]`."""
    tag = tag or run_name
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
    """List tags: of runs (`dstack tag`) and of local data (`dstack artifacts upload --tag`), with the run each
    names, its status, the size of its artifacts and its workflows. Piped, each line is TAG, RUN, STATUS,
    WORKFLOWS, KIND and BYTES separated by tabs."""
    with context.rpc() as rpc:
        listing: list[TagView] = rpc.call(GetTags())
    if as_json:
        click.echo(json.dumps(plain(listing), indent=2))
    elif listing and not out.is_terminal:
        for item in listing:
            click.echo(f"{item.tag}\t{item.run_name}\t{item.status}\t{', '.join(item.workflows)}\t{item.kind}"
                       f"\t{item.size}")
    else:
        print_tags(out, listing)
