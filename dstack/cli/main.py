"""``dstack``: run workflows, follow them, fetch their artifacts; run the services.

The commands live in one module per subject (runs, workflows, secrets, artifacts, services); this one makes
the group.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Optional, TextIO

import click
from rich.markup import escape

from dstack import __version__
from dstack.cli import apps, artifacts, cleanup, runs, secrets, services, workflows
from dstack.cli.context import err
from dstack.errors import ConfigWarning, DstackError


class DstackGroup(click.Group):
    """Shows dstack errors as one clear line instead of a traceback, and warnings about the project's
    files (:class:`~dstack.errors.ConfigWarning`) as ``warning:`` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ConfigWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except DstackError as e:
                err.print(f"[red]error:[/] {e}")
                sys.exit(1)


_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
    if issubclass(category, ConfigWarning):
        err.print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


@click.group(cls=DstackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dstack")
def cli() -> None:
    """dstack runs the workflows of a project as jobs in containers on a fleet of workers.

    A project keeps .dstack/workflows.yaml and .dstack/providers.yaml. `dstack run WORKFLOW`
    snapshots the project, and the workflow's provider turns it into jobs. Configuration comes
    from DSTACK_BROKER_URL, DSTACK_STORAGE_URL and DSTACK_HOME (see the README).
    """


for command in (runs.run, runs.restart, runs.status, runs.logs, runs.stop, runs.tag, runs.untag, runs.tags,
                cleanup.delete, cleanup.prune, apps.app,
                workflows.workflows,
                secrets.secrets, artifacts.artifacts,
                services.scheduler, services.worker, services.workers, services.up):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="dstack")


if __name__ == "__main__":
    main()
