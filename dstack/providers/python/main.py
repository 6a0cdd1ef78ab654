"""The ``python`` provider: a Python script in one job."""
import argparse
from typing import Any

from dstack import Job
from dstack.providers.common import (
    BuiltinProvider,
    add_script_arguments,
    pip_install,
    python_image,
    script_command,
    script_parameters,
)


class PythonProvider(BuiltinProvider):
    name = "python"
    summary = "Run a Python script: `dstack run python [-r requirements.txt] train.py [ARGS...]`."

    def create_jobs(self) -> list[Job]:
        data = self.data
        commands = pip_install(data.get("requirements")) + [script_command(["python3", data["file"]], data.get("args"))]
        return [self.job(python_image(data.get("version")), commands, ports=[0] * data.get("ports", 0))]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_script_arguments(parser)

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        return script_parameters(args)


if __name__ == "__main__":
    PythonProvider().start()
