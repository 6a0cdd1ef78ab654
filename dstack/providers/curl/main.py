"""The ``curl`` provider: download a file (the spec's example provider, built in)."""
import argparse
import posixpath
import shlex
from typing import Any

from dstack import Job
from dstack.providers.common import BuiltinProvider, python_image


class CurlProvider(BuiltinProvider):
    name = "curl"
    summary = "Download a file: `dstack run curl URL -o data/input.txt -a data`."

    def create_jobs(self) -> list[Job]:
        url, output = self.data["url"], self.data["output"]
        folder = posixpath.dirname(output)
        commands = ([f"mkdir -p {shlex.quote(folder)}"] if folder else []) + [
            f"curl --fail --location --silent --show-error {shlex.quote(url)} -o {shlex.quote(output)}"]
        return [self.job(python_image(None), commands)]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
        parser.add_argument("url", help="what to download")

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {"url": args.url, "output": args.output}


if __name__ == "__main__":
    CurlProvider().start()
