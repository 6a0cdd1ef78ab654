"""``dstack``: run workflows, follow them, fetch their artifacts; run the services.

The commands live in one module per subject (runs, secrets, artifacts, services); this one makes the group.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from dstack import __version__
from dstack.cli import artifacts, runs, secrets, services
from dstack.cli.context import err
from dstack.errors import DstackError


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


for command in (runs.run, runs.restart, runs.status, runs.logs, runs.stop, runs.tag, runs.untag, runs.tags,
                secrets.secrets, artifacts.artifacts,
                services.scheduler, services.worker, services.workers, services.up):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="dstack")


if __name__ == "__main__":
    main()
