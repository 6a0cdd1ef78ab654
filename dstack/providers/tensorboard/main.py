"""The ``tensorboard`` provider: TensorBoard on a port, its URL shown by ``dstack status``.

It serves a folder of the project (``logdir``), or the event files in the artifacts of earlier
runs (``runs``), each run under its own name, so that their curves show in one page. The provider
container does not reach storage: the scheduler makes the runs' artifacts inputs of the workflow,
each below ``.dstack/runs/NAME`` of the project folder (``dstack.messages.run_input_folder``, which
this module cannot import and :func:`run_folder` repeats; a unit test holds them together).
"""
import argparse
import os
import posixpath
import re
import shlex
from typing import Any

from dstack import App, Job
from dstack.providers.common import ArgumentError, BuiltinProvider, python_image

INSTALL = "python3 -c 'import tensorboard' 2>/dev/null || pip install --disable-pip-version-check tensorboard"

#: Where the scheduler puts the artifacts of each of a workflow's ``runs``, in the project folder.
RUNS_FOLDER = ".dstack/runs"
#: The form of the names dstack gives runs (``dstack.names.new_run_name``: ``witty-otter-1234``).
RUN_NAME = re.compile(r"^[a-z]+-[a-z]+-[0-9]+$")


def run_label(entry: str) -> str:
    """The name a run (a run name, or ``WORKFLOW:TAG``) has in TensorBoard: ``WORKFLOW@TAG`` for a tag,
    since a colon ends a name in ``--logdir_spec``."""
    return entry.replace(":", "@")


def run_folder(entry: str) -> str:
    """The folder, relative to the project folder, that holds the artifacts of ``entry`` of ``runs``."""
    return f"{RUNS_FOLDER}/{run_label(entry)}"


def is_run(argument: str) -> bool:
    """Whether an argument of ``dstack run tensorboard`` names a run rather than a folder: a folder that
    exists (from the current one) is a folder; ``WORKFLOW:TAG`` and a name of the form dstack gives runs
    (``witty-otter-1234``) are runs; anything else is a folder (made if missing, as before runs were taken)."""
    if os.path.isdir(argument):
        return False
    return bool(RUN_NAME.match(argument)) or (":" in argument and "/" not in argument)


class TensorboardProvider(BuiltinProvider):
    name = "tensorboard"
    summary = ("Serve TensorBoard for a folder of logs (`dstack run tensorboard runs`) or for earlier runs, "
               "each under its own name (`dstack run tensorboard RUN [RUN ...]`); `dstack status` shows its URL.")
    option_parameters = {"run": "runs"}  # `dstack run WORKFLOW --run NAME` replaces the workflow's runs

    def create_jobs(self) -> list[Job]:
        runs = list(dict.fromkeys(self.data.get("runs") or []))
        if runs:  # each run's folder of logs, relative to the working directory, under its name
            here, below = self.data.get("working_dir") or ".", self.data.get("logdir") or ""
            paths = {run_label(e): posixpath.relpath(posixpath.join(run_folder(e), below), here) for e in runs}
            folders = list(paths.values())
            option = "--logdir_spec " + shlex.quote(",".join(f"{label}:{path}" for label, path in paths.items()))
        else:
            folders = [self.data["logdir"]]
            option = "--logdir " + shlex.quote(folders[0])
        serve = (f"mkdir -p {shlex.join(folders)} && "
                 f'exec tensorboard {option} --host 0.0.0.0 --port "$JOB_PORT_0"')
        return [self.job(python_image(self.data.get("version")), [INSTALL, serve], ports=[0],
                         apps=[App("tensorboard", port_index=0)])]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--version", metavar="VERSION", help="the Python version")
        parser.add_argument("--run", action="append", default=[], metavar="RUN",
                            help="a run (or WORKFLOW:TAG) to show, whatever its name (repeatable)")
        parser.add_argument("--logdir", metavar="DIR",
                            help="with runs: the folder of the logs within each run's artifacts (default: all)")
        parser.add_argument("sources", nargs="*", metavar="FOLDER_OR_RUN",
                            help="a folder of logs, or runs to compare: run names (as dstack gives them: "
                                 "witty-otter-1234) or WORKFLOW:TAG; an existing folder is a folder")

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        """Which arguments are folders and which are runs: see :func:`is_run`. ``--logdir`` is the folder
        when no run is named, else the folder within each run's artifacts."""
        runs = list(args.run) + [s for s in args.sources if is_run(s)]
        folders = [s for s in args.sources if not is_run(s)]
        if len(folders) > 1:
            raise ArgumentError(f"one folder of logs at most, not {', '.join(folders)}")
        if folders and runs:
            raise ArgumentError(f"{folders[0]} is a folder: serve either a folder or runs ({', '.join(runs)}), "
                                "not both; to name a run whose name is taken for a folder, write --run NAME")
        if folders and args.logdir:
            raise ArgumentError(f"{folders[0]} is a folder and --logdir names another one")
        if not (folders or runs or args.logdir):
            raise ArgumentError("name a folder of logs, or runs to compare (run names or WORKFLOW:TAG)")
        logdir = folders[0] if folders else args.logdir
        data: dict[str, Any] = {"runs": runs} if runs else {}
        return {**data, **({"logdir": logdir} if logdir else {}), **({"version": args.version} if args.version else {})}


if __name__ == "__main__":
    TensorboardProvider().start()
