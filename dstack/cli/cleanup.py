"""The commands that free storage: ``dstack delete RUN...`` and ``dstack prune``.

Order, so that nothing is lost wrongly: the scheduler first checks every run and forgets them all or none
(``DeleteRuns``: an unknown or unfinished run, or a tagged one without ``--force``, refuses the request); only then
does the CLI delete what they stored (``runs/RUN/``: logs, artifacts, manifests). A crash in between leaves objects
that no run refers to; nothing refers to a run the scheduler does not know. Snapshots (``snapshots/``, ``blobs/``)
are shared by runs and stay.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import click

from dstack.cli.context import Context, complete_run_names, confirm, err, on_terminal, out, pass_context
from dstack.cli.render import ago, human_size
from dstack.cli.timespec import Duration
from dstack.messages import DeleteRuns, GetRuns
from dstack.names import run_prefix
from dstack.storage import Storage
from dstack.views import DeletedRuns, RunView


@click.command()
@click.argument("run_names", metavar="RUN...", nargs=-1, required=True, shell_complete=complete_run_names)
@click.option("--force", is_flag=True, help="Delete tagged runs too, with their tags.")
@pass_context
def delete(context: Context, run_names: tuple[str, ...], force: bool) -> None:
    """Delete finished runs with their logs and artifacts in storage, and say how much space was freed.

    A tagged run is deleted only with --force (its tags go too); an unfinished run never (stop it first).
    If one of the runs cannot be deleted, none is.
    """
    with context.rpc() as rpc:
        deleted: DeletedRuns = rpc.call(DeleteRuns(run_names=list(run_names), force=force))
    _free(context.storage, deleted)


@click.command()
@click.option("--older-than", type=Duration(), metavar="AGE",
              help="Only runs that ended longer than AGE ago (7d, 12h, 30m). Default: every finished untagged run.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask (on a terminal, prune asks first).")
@pass_context
def prune(context: Context, older_than: Optional[float], yes: bool) -> None:
    """Delete every finished run that carries no tag (that ended longer than AGE ago, with --older-than), with its
    logs and artifacts in storage. Lists them and, on a terminal, asks first."""
    with context.rpc() as rpc:
        runs = prunable(rpc.call(GetRuns(limit=None)), older_than, time.time())
        if not runs:
            out.print("Nothing to prune: no finished untagged run" +
                      (f" that ended more than {_age(older_than)} ago." if older_than else "."))
            return
        for run in runs:
            click.echo(f"{run.run_name}\t{run.workflow}\t{run.status.value}\tended {ago(run.finished_at)}\t"
                      f"{human_size(run.artifacts_size)} of artifacts")
        these = "this run with its" if len(runs) == 1 else f"these {len(runs)} runs with their"
        if not yes and on_terminal() and not confirm(f"Delete {these} logs and artifacts?"):
            err.print("Nothing deleted.")
            sys.exit(1)
        deleted: DeletedRuns = rpc.call(DeleteRuns(run_names=[run.run_name for run in runs]))
    _free(context.storage, deleted)


def prunable(runs: list[RunView], older_than: Optional[float], now: float) -> list[RunView]:
    """The runs ``dstack prune`` deletes: finished, untagged, and (with ``older_than`` seconds) ended before
    ``now - older_than``; oldest first."""
    chosen = [run for run in runs if run.status.finished and not run.tags and
              (older_than is None or (run.finished_at or run.submitted_at) <= now - older_than)]
    return sorted(chosen, key=lambda run: run.finished_at or run.submitted_at)


def _free(storage: Storage, deleted: DeletedRuns) -> None:
    """Delete the stored objects of the runs the scheduler forgot, and say what was freed."""
    objects = size = 0
    for run_name in deleted.run_names:
        count, freed = storage.delete_prefix(run_prefix(run_name))
        objects, size = objects + count, size + freed
        out.print(f"{run_name} deleted ({count} objects, {human_size(freed)})")
    if deleted.tags:
        out.print(f"tags removed: {', '.join(deleted.tags)}")
    runs = len(deleted.run_names)
    out.print(f"Deleted {runs} run{'s' * (runs != 1)}; freed {human_size(size)} ({objects} objects) "
              f"in {storage.url}")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
