"""The ``torchrun`` provider: a PyTorch script on one node or several."""
import argparse
from typing import Any

from dstack import Job
from dstack.providers.common import (
    BuiltinProvider,
    add_script_arguments,
    given,
    pip_install,
    python_image,
    script_command,
    script_parameters,
)


class TorchrunProvider(BuiltinProvider):
    name = "torchrun"
    summary = "Run a PyTorch script with torchrun on one node or several: `dstack run torchrun --nodes 2 train.py`."

    def create_jobs(self) -> list[Job]:
        nodes = self.data.get("nodes", 1)
        image = python_image(self.data.get("version"))
        install = pip_install(self.data.get("requirements"))
        master = self.job(image, install + [self._command(nodes, 0, "$JOB_HOSTNAME", "$JOB_PORT_0")], ports=[0])
        followers = [self.job(image, install + [self._command(nodes, rank, "$MASTER_JOB_HOSTNAME",
                                                                   "$MASTER_JOB_PORT_0")], master=master)
                     for rank in range(1, nodes)]
        return [master] + followers

    def _command(self, nodes: int, rank: int, address: str, port: str) -> str:
        processes = self.resources.gpu.count if self.resources.gpu and self.resources.gpu.count else 1
        launcher = (f"torchrun --nnodes={nodes} --node_rank={rank} --nproc_per_node={processes} "
                    f'--master_addr="{address}" --master_port="{port}"')
        return f"{launcher} {script_command([self.data['file']], self.data.get('args'))}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--nodes", "--nnodes", type=int, metavar="COUNT",
                            help="how many nodes run the script (default 1); --nnodes is torchrun's name for it")
        add_script_arguments(parser)

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {**script_parameters(args), **given(args, nodes="nodes")}


if __name__ == "__main__":
    TorchrunProvider().start()
