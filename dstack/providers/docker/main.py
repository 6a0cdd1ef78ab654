"""The ``docker`` provider: commands in one job, in an image of your choice."""
import argparse
import shlex
from typing import Any

from dstack import Job
from dstack.providers.common import BuiltinProvider, given, job_ports


class DockerProvider(BuiltinProvider):
    name = "docker"
    summary = ("Run a command in an image of your choice: `dstack run docker IMAGE [COMMAND [ARGS...]]` "
               "(without a command, the image's own).")

    def create_jobs(self) -> list[Job]:
        return [self.job(self.data["image"], self.data.get("commands", []), ports=job_ports(self.data.get("ports")))]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-p", "--ports", type=int, metavar="COUNT", help="how many ports the job opens")
        parser.add_argument("image", help="the Docker image (it must be on the worker)")
        parser.add_argument("command", nargs=argparse.REMAINDER,
                            help="the command and its arguments (default: the image's own)")

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        data: dict[str, Any] = {"image": args.image}
        if args.command:
            data["commands"] = [shlex.join(args.command)]
        return {**data, **given(args, ports="ports")}


if __name__ == "__main__":
    DockerProvider().start()
