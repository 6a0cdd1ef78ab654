"""``dstack``: run workflows, follow them, fetch their artifacts; run the services."""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import click
from rich.console import Console

from dstack import __version__
from dstack.cli.follow import LogPrinter, follow
from dstack.cli.render import print_runs, print_workers
from dstack import builtin_providers
from dstack.errors import ConfigError, DstackError
from dstack.messages import (DeleteSecret, GetRuns, GetSecrets, GetTags, GetWorkers, RestartRun, SetSecret, StopRun,
                             SubmitRun, TagRun, UntagRun, WorkflowSpec)
from dstack.names import artifact_key, manifests_prefix, new_run_name
from dstack.planning import parse_overrides, plan_builtin_run, plan_run
from dstack.project import find_root, load_project
from dstack.rpc import RpcClient
from dstack.settings import Settings, load_settings
from dstack.snapshot import safe_join, upload_snapshot
from dstack.storage import Storage, open_storage

#: Width used when the output is not a terminal (pipes, files), so tables are not folded.
PIPE_WIDTH = 200
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)


class Context:
    """Settings, and the clients built from them when first needed."""

    def __init__(self) -> None:
        self.settings: Settings = load_settings()
        self._storage: Optional[Storage] = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings.storage_url)
        return self._storage

    def rpc(self) -> RpcClient:
        return RpcClient(self.settings.broker_url)


pass_context = click.make_pass_decorator(Context, ensure=True)


class DstackGroup(click.Group):
    """Shows dstack errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DstackError as e:
            err.print(f"[red]error:[/] {e}")
            sys.exit(1)


@click.group(cls=DstackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dstack")
def cli() -> None:
    """dstack runs the workflows of a project as jobs in containers on a fleet of workers.

    A project keeps .dstack/workflows.yaml and .dstack/providers.yaml. `dstack run WORKFLOW`
    snapshots the project, and the workflow's provider turns it into jobs. Configuration comes
    from DSTACK_BROKER_URL, DSTACK_STORAGE_URL and DSTACK_HOME (see the README).
    """


# --------------------------------------------------------------------------- runs


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workflow")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-d", "--detach", is_flag=True, help="Return right after submitting; do not follow.")
@pass_context
def run(context: Context, workflow: str, args: Tuple[str, ...], detach: bool) -> None:
    """Run WORKFLOW of the project in the current folder (and the workflows it depends on), or a
    built-in provider with ARGS, and follow the run to the end.

    \b
    dstack run train --epochs 100       a workflow; ARGS override .dstack/variables.yaml (--name value)
    dstack run python train.py --lr 1   a built-in provider (no workflow file needed): bash, curl,
    dstack run bash -c "make data"      docker, python, tensorboard, torchrun; `dstack run python -h`
                                        shows its options, which go before the script

    -d goes before WORKFLOW, or at the end of a workflow's variables. Exits 0 when the run is done,
    1 when it failed or was stopped. Ctrl-C stops following, not the run.
    """
    root, workflows, detached = _plan(workflow, list(args))
    with context.rpc() as rpc:  # reaching the broker before uploading anything
        snapshot_id, files, uploaded = upload_snapshot(root, context.storage)
        run_name = new_run_name()
        rpc.call(SubmitRun(run_name=run_name, workflow=workflow, workflows=workflows, snapshot_id=snapshot_id,
                           submitted_at=time.time(), project=str(root)))
        err.print(f"[dim]snapshot: {files} files, {uploaded} uploaded[/]")
        out.print(run_name)
        if not (detach or detached):
            _follow_to_end(context, rpc, run_name)


def _plan(name: str, args: List[str]) -> Tuple[Path, List[WorkflowSpec], bool]:
    """What ``dstack run NAME ARGS`` submits: the project root, the workflows, and whether ARGS asked to
    detach. NAME is a workflow of the project in the current folder if it has one, else a built-in provider.

    Raises:
        ConfigError: neither, or the project or ARGS are wrong.
    """
    cwd = Path.cwd()
    root = find_root(cwd, required=False)
    project = load_project(root) if root is not None and (root / ".dstack" / "workflows.yaml").exists() else None
    if builtin_providers.is_builtin(name) and (project is None or name not in project.workflows):
        root = root or cwd
        return root, plan_builtin_run(name, args, working_dir=cwd.relative_to(root).as_posix()), False
    if project is None:
        raise ConfigError(f"no .dstack/workflows.yaml in {cwd} or above it, and '{name}' is not a built-in provider "
                          f"({', '.join(builtin_providers.names())}); run dstack inside a project, or a built-in "
                          "provider, e.g. `dstack run python train.py`")
    project.workflow(name)  # an unknown name is told as such, before its arguments
    variables = [a for a in args if a not in ("-d", "--detach")]  # -d may follow a workflow's variables
    return project.root, plan_run(project, name, parse_overrides(variables)), len(variables) < len(args)


@cli.command()
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
    status = final["status"]
    message = f"{run_name} {status}" + (f": {final['reason']}" if final.get("reason") else "")
    err.print(f"[{'green' if status == 'done' else 'red'}]{message}[/]")
    sys.exit(0 if status == "done" else 1)


@cli.command()
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
        runs = rpc.call(GetRuns(run_name=run_name, limit=limit))
    if as_json:
        click.echo(json.dumps(runs, indent=2))
    else:
        print_runs(out, runs, detailed=bool(run_name))


@cli.command()
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


@cli.command()
@click.argument("run_name")
@click.option("--abort", is_flag=True, help="Do not upload the artifacts of the stopped jobs.")
@pass_context
def stop(context: Context, run_name: str, abort: bool) -> None:
    """Stop RUN_NAME: running jobs get SIGTERM (SIGKILL after a grace period); queued jobs never start."""
    with context.rpc() as rpc:
        view = rpc.call(StopRun(run_name=run_name, abort=abort))
    out.print(f"{run_name}: stop requested (now {view['status']})")


# --------------------------------------------------------------------------- tags


@cli.command()
@click.argument("run_name")
@click.argument("tag")
@pass_context
def tag(context: Context, run_name: str, tag: str) -> None:
    """Name RUN_NAME with TAG, so that workflows can use its artifacts with `depends-on: [WORKFLOW:TAG]`."""
    with context.rpc() as rpc:
        rpc.call(TagRun(run_name=run_name, tag=tag))
    out.print(f"{tag} -> {run_name}")


@cli.command()
@click.argument("tag")
@pass_context
def untag(context: Context, tag: str) -> None:
    """Remove TAG (the run itself stays)."""
    with context.rpc() as rpc:
        rpc.call(UntagRun(tag=tag))
    out.print(f"{tag} removed")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of tags.")
@pass_context
def tags(context: Context, as_json: bool) -> None:
    """List tags with their runs and the workflows those runs hold."""
    with context.rpc() as rpc:
        listing = rpc.call(GetTags())
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    if not listing:
        out.print("No tags yet. Tag a run with [bold]dstack tag RUN NAME[/].")
    for item in listing:
        click.echo(f"{item['tag']}\t{item['run_name']}\t{item['status']}\t{', '.join(item['workflows'])}")


# --------------------------------------------------------------------------- secrets


@cli.group()
def secrets() -> None:
    """Secrets: values every job gets as environment variables, never shown in logs or status."""


@secrets.command("set")
@click.argument("name")
@pass_context
def secrets_set(context: Context, name: str) -> None:
    """Set secret NAME to the value read from standard input (asked for, hidden, on a terminal)."""
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {name}", hide_input=True)
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise click.UsageError("the value is empty; give it on standard input, e.g. `printf %s VALUE | "
                               f"dstack secrets set {name}`")
    with context.rpc() as rpc:
        rpc.call(SetSecret(name=name, value=value))
    err.print(f"secret {name} set; jobs that start from now on get it")


@secrets.command("list")
@pass_context
def secrets_list(context: Context) -> None:
    """The names of the secrets (never their values)."""
    with context.rpc() as rpc:
        for item in rpc.call(GetSecrets()):
            click.echo(item["name"])


@secrets.command("delete")
@click.argument("name")
@pass_context
def secrets_delete(context: Context, name: str) -> None:
    with context.rpc() as rpc:
        rpc.call(DeleteSecret(name=name))


# --------------------------------------------------------------------------- artifacts


@cli.group()
def artifacts() -> None:
    """List and download the artifacts of a run (straight from storage)."""


@artifacts.command("list")
@click.argument("run_name")
@pass_context
def artifacts_list(context: Context, run_name: str) -> None:
    """List the artifact files of RUN_NAME: job, path, size."""
    manifests = _manifests(context.storage, run_name)
    for manifest in manifests:
        for entry in manifest["files"]:
            click.echo(f"{manifest['job_id']}\t{entry['path']}\t{entry['size']}")


@artifacts.command("download")
@click.argument("run_name")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to download into, as OUTPUT/JOB_ID/PATH.")
@pass_context
def artifacts_download(context: Context, run_name: str, output: Path) -> None:
    """Download the artifacts of RUN_NAME into OUTPUT/JOB_ID/PATH (streaming)."""
    count = 0
    for manifest in _manifests(context.storage, run_name):
        folder = safe_join(output.resolve(), manifest["job_id"])
        for entry in manifest["files"]:
            context.storage.get_file(artifact_key(run_name, manifest["job_id"], entry["path"]),
                                     safe_join(folder, entry["path"]))
            count += 1
    err.print(f"{count} file(s) downloaded into {output}")


def _manifests(storage: Storage, run_name: str) -> list:
    manifests = [json.loads(storage.get_bytes(info.key)) for info in storage.list(manifests_prefix(run_name))]
    if not manifests:
        raise DstackError(f"no artifacts stored for run '{run_name}' in {storage.url}")
    return manifests


# --------------------------------------------------------------------------- services


def _serve(service: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.shutdown())
    service.run()


@cli.command()
@pass_context
def scheduler(context: Context) -> None:
    """Run the scheduler (one per broker): it owns the state of runs and jobs."""
    from scheduler.main import SchedulerService

    _serve(SchedulerService(context.settings))


@cli.command()
@click.option("--slots", type=int, default=None, help="Tasks run at once (default: DSTACK_WORKER_SLOTS or 4).")
@click.option("--resources", default=None, metavar="YAML",
              help="What the worker offers, declared or restricted, e.g. '{cpu: 8, memory: 64GB, gpu: 2}' or "
                   "'{gpu: {count: 2, name: A100, memory: 40GB}}' (default: DSTACK_WORKER_RESOURCES, else what "
                   "the machine has).")
@pass_context
def worker(context: Context, slots: Optional[int], resources: Optional[str]) -> None:
    """Run a worker: it takes the tasks that fit what it has free and runs them in Docker containers."""
    from dstack.settings import with_overrides, yaml_mapping
    from workers.service import Worker

    settings = context.settings
    if slots:
        settings = with_overrides(settings, worker_slots=slots)
    if resources is not None:
        settings = with_overrides(settings, worker_resources=yaml_mapping(resources, "--resources"))
    _serve(Worker(settings))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of workers.")
@pass_context
def workers(context: Context, as_json: bool) -> None:
    """The live workers: what each has, what is in use and by which job, and when it last reported."""
    with context.rpc() as rpc:
        found = rpc.call(GetWorkers())
    if as_json:
        out.print_json(json.dumps(found))
    else:
        print_workers(out, found)


@cli.command()
@pass_context
def up(context: Context) -> None:
    """Run a scheduler and one worker on this machine, in the foreground, until Ctrl-C."""
    children = [subprocess.Popen([sys.executable, "-m", "dstack.cli.main", name]) for name in ("scheduler", "worker")]
    stop_all: Callable[..., None] = lambda *_: [c.send_signal(signal.SIGTERM) for c in children if c.poll() is None]
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while all(c.poll() is None for c in children):
        time.sleep(0.5)
    stop_all()
    codes = [c.wait() for c in children]
    sys.exit(max(codes))


def main() -> None:
    cli(prog_name="dstack")


if __name__ == "__main__":
    main()
