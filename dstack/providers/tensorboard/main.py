"""The ``tensorboard`` provider: TensorBoard on a port, its URL shown by ``dstack status``."""
import argparse
import shlex
from typing import Any

from dstack import App, Job
from dstack.providers.common import BuiltinProvider, python_image

INSTALL = "python3 -c 'import tensorboard' 2>/dev/null || pip install --disable-pip-version-check tensorboard"


class TensorboardProvider(BuiltinProvider):
    name = "tensorboard"
    summary = "Serve TensorBoard for a folder of logs: `dstack run tensorboard runs`; `dstack status` shows its URL."

    def create_jobs(self) -> list[Job]:
        logdir = shlex.quote(self.data["logdir"])
        serve = f'mkdir -p {logdir} && exec tensorboard --logdir {logdir} --host 0.0.0.0 --port "$JOB_PORT_0"'
        return [self.job(python_image(self.data.get("version")), [INSTALL, serve], ports=[0],
                         apps=[App("tensorboard", port_index=0)])]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--version", metavar="VERSION", help="the Python version")
        parser.add_argument("logdir", help="the folder of the logs")

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {"logdir": args.logdir, **({"version": args.version} if args.version else {})}


if __name__ == "__main__":
    TensorboardProvider().start()
