"""The ``torchrun`` provider with real PyTorch: two nodes (two containers) train together on CPU.

The containers reach no package index: the worker mounts a wheelhouse holding a CPU build of PyTorch
(a wheel kept on this machine) and what it needs (downloaded once by the host's pip) and points pip
at it, as a closed site would.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import Cluster, run_name_of, write_project
from tests.wheels import pip_from, wheelhouse

pytestmark = pytest.mark.integration

TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
#: What the torch wheel requires (its METADATA); never ``torch`` itself, which pip would fetch as a
#: multi-GB CUDA build.
TORCH_REQUIREMENTS = ("filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3",
                      "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5")

TRAIN_SCRIPT = """\
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([rank + 1.0])
dist.all_reduce(value)  # a sum over the nodes: 1 + 2
print(f"rank {rank} of {world}: sum={value.item()}", flush=True)
os.makedirs("out", exist_ok=True)
with open(f"out/rank{rank}.txt", "w") as f:
    f.write(f"{world} {value.item()}\\n")
dist.barrier()
dist.destroy_process_group()
"""


def torchrun_project(root: Path, script: str) -> Path:
    """A project whose workflow ``train`` runs ``script`` on two nodes with torchrun, ``out`` its artifacts."""
    return write_project(root, {
        ".dstack/workflows.yaml": """\
workflows:
  - name: train
    provider: torchrun
    file: train.py
    nodes: 2
    requirements: requirements.txt
    artifacts: [out]
""",
        "requirements.txt": "torch==2.13.0\n",  # matches 2.13.0+cpu: a local version is ignored
        "train.py": script,
    })


@pytest.mark.skipif(not TORCH_WHEEL.exists(), reason=f"the PyTorch CPU wheel {TORCH_WHEEL} is not on this machine")
def test_torchrun_with_pytorch(fleet: Cluster, tmp_path: Path) -> None:
    """A master and a follower join one gloo process group and sum a tensor across the two nodes."""
    wheels = wheelhouse("torch", TORCH_REQUIREMENTS, files=[TORCH_WHEEL])
    fleet.start_worker(slots=2, **pip_from(wheels))
    # No GLOO_SOCKET_IFNAME in the workflow's environment: with host networking gloo binds to the address
    # the container's host name resolves to, the worker's address (DSTACK_WORKER_HOST, 127.0.0.1 here)
    project = torchrun_project(tmp_path / "project", TRAIN_SCRIPT)

    # each node pip-installs a 190 MB wheel and imports torch: about half a minute here, more elsewhere
    result = fleet.dstack("run", "train", cwd=project, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    run = fleet.status(run_name)
    assert run["status"] == "done", run
    logs = fleet.job_logs(run_name)
    assert "rank 0 of 2: sum=3.0" in logs.get("train.0", []), logs.get("train.0")
    assert "rank 1 of 2: sum=3.0" in logs.get("train.1", []), logs.get("train.1")
    out = tmp_path / "out"
    assert fleet.dstack("artifacts", "download", run_name, "-o", str(out)).returncode == 0
    assert (out / "train.0" / "out" / "rank0.txt").read_text() == "2 3.0\n"
    assert (out / "train.1" / "out" / "rank1.txt").read_text() == "2 3.0\n"
