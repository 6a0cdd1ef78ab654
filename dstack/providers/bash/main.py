"""The ``bash`` provider: shell commands in one job."""
import argparse
import shlex
from typing import Any

from dstack import Job
from dstack.providers.common import (
    DEFAULT_PYTHON_VERSION,
    ArgumentError,
    BuiltinProvider,
    given,
    pip_install,
    python_image,
)


class BashProvider(BuiltinProvider):
    name = "bash"
    summary = "Run shell commands in one job: `dstack run bash -c 'echo hi'` or `dstack run bash SCRIPT [ARGS...]`."
    option_parameters = {"command": "commands"}  # `dstack run WORKFLOW -c CMD` replaces the workflow's commands

    def create_jobs(self) -> list[Job]:
        commands = pip_install(self.data.get("requirements")) + self.data["commands"]
        return [self.job(python_image(self.data.get("version")), commands, ports=[0] * self.data.get("ports", 0))]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--command", action="append", default=[], metavar="COMMAND",
                            help="a shell command (repeatable: run in order)")
        parser.add_argument("-p", "--ports", type=int, metavar="COUNT", help="how many ports the job opens")
        parser.add_argument("-r", "--requirements", metavar="FILE", help="a requirements file installed first")
        parser.add_argument("--version", metavar="VERSION",
                            help=f"the Python version of the image (default {DEFAULT_PYTHON_VERSION})")
        parser.add_argument("script", nargs="?", help="a script run with bash, relative to the working directory")
        parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        if bool(args.command) == bool(args.script):
            raise ArgumentError("give either -c COMMAND or a SCRIPT, e.g. `dstack run bash -c 'echo hi'`")
        commands = args.command or [shlex.join(["bash", args.script] + args.args)]
        return {"commands": commands, **given(args, ports="ports", requirements="requirements", version="version")}


if __name__ == "__main__":
    BashProvider().start()
