"""``dstack``: run workflows, follow them, fetch their artifacts; run the services.

The commands live in one module per subject (runs, workflows, secrets, artifacts, services); this one makes
the group. A command's module is imported only when that command runs (or the group's help or shell completion
lists them all), so that ``dstack --version`` and every command load only what they use (issue 14, item 4).
"""
from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
import warnings
from typing import Any, Optional, TextIO

import click

from dstack import __version__
from dstack.errors import ConfigWarning, DstackError

#: Every command: its name, and the ``module:attribute`` that makes it, imported when first needed.
COMMANDS: dict[str, str] = {
    "run": "dstack.cli.runs:run",
    "restart": "dstack.cli.runs:restart",
    "status": "dstack.cli.runs:status",
    "logs": "dstack.cli.runs:logs",
    "stop": "dstack.cli.runs:stop",
    "tag": "dstack.cli.runs:tag",
    "untag": "dstack.cli.runs:untag",
    "tags": "dstack.cli.runs:tags",
    "delete": "dstack.cli.cleanup:delete",
    "prune": "dstack.cli.cleanup:prune",
    "app": "dstack.cli.apps:app",
    "workflows": "dstack.cli.workflows:workflows",
    "secrets": "dstack.cli.secrets:secrets",
    "users": "dstack.cli.users:users",
    "artifacts": "dstack.cli.artifacts:artifacts",
    "scheduler": "dstack.cli.services:scheduler",
    "worker": "dstack.cli.services:worker",
    "workers": "dstack.cli.services:workers",
    "up": "dstack.cli.services:up",
}


class DstackGroup(click.Group):
    """Shows dstack errors as one clear line instead of a traceback, and warnings about the project's
    files (:class:`~dstack.errors.ConfigWarning`) as ``warning:`` lines.

    Its commands are :data:`COMMANDS`, imported by name when asked for (click's lazy group pattern).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module_name, attribute = COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{COMMANDS[cmd_name]} is no click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ConfigWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except DstackError as e:
                from rich.markup import escape

                from dstack.cli.context import err
                err.print(f"[red]error:[/] {escape(str(e))}")
                sys.exit(1)


_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
    if issubclass(category, ConfigWarning):
        from rich.markup import escape

        from dstack.cli.context import err
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


def main() -> None:
    """The ``dstack`` command (the console script)."""
    try:
        cli(prog_name="dstack")  # standalone: it always ends with SystemExit
    except SystemExit as e:
        _leave(e.code)


def _leave(code: Any) -> None:
    """Exit with ``code`` as ``SystemExit`` would, without the interpreter's teardown.

    Tearing down the ~450 modules a command such as ``dstack run`` loads takes ~40 ms of every command's
    wall time (issue 14, item 2) and does nothing a finished command needs: exit handlers still run and
    the output is flushed. A command that left a thread of its own running exits the usual way, and so does
    one run under a profiler or a tracer (cProfile, coverage), which write their results at the usual exit.
    """
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as the interpreter does: the message on standard error, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: let the interpreter deal with it as usual
        raise SystemExit(status) from None
    os._exit(status)


if __name__ == "__main__":
    main()
