"""Several machines on this one: a scheduler, two workers and the CLI that share no folder and reach
RabbitMQ and the S3 server only by URL.

Each process has a ``DSTACK_HOME`` of its own; storage is the S3 server (never a folder); only the
workers have a ``DSTACK_WORKER_HOST``, each its own loopback address (``127.0.0.11``, ``127.0.0.12``:
the whole of 127.0.0.0/8 is this machine's, so a socket can listen on each apart), and each worker
mounts a package folder of its own (hard links of one wheelhouse) into its containers. Each worker has
one slot, and each declares an inventory the other lacks (machine A 2 CPUs, machine B 5GB+ of memory),
so a job lands on a machine of our choosing by what it asks for.

**Gloo and the address it uses.** torchrun's rendezvous goes where dstack says (``--master_addr``,
the master job's ``JOB_HOSTNAME``: its worker's address), but gloo picks the address its own sockets
listen on and advertise to the other ranks by itself: the one the host name resolves to. With host
networking a container would share the machine's ``/etc/hosts``, where the name is 127.0.0.1 here (and
127.0.1.1 on a stock Debian machine), and the follower would reach the master's gloo at a loopback
address: that works here only because both "machines" are one. A worker whose ``DSTACK_WORKER_HOST`` is
an IP address therefore gives its containers a host name that resolves to that address
(``workers/runtime.py``), and the plain ``dist.init_process_group("gloo")`` below listens there. The
script prints the TCP sockets it holds (from ``/proc``), so the test checks who listened where and who
connected to whom.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from dstack import defaults
from tests.harness import storage_env
from tests.integration.test_torchrun_pytorch import TORCH_REQUIREMENTS, TORCH_WHEEL, torchrun_project
from tests.projects import graph_workflow_project
from tests.s3server import MotoServer
from tests.services import Cluster, Vhost, run_name_of
from tests.wheels import pip_from, wheelhouse

pytestmark = pytest.mark.integration

#: worker id -> (the address it advertises, what it declares it has)
MACHINES = {
    "machine-a": ("127.0.0.11", "{cpu: 2, memory: 3GB, gpu: 0}"),
    "machine-b": ("127.0.0.12", "{cpu: 1, memory: 6GB, gpu: 0}"),
}
ADDRESS = {worker: address for worker, (address, _) in MACHINES.items()}
#: what a job asks for to land on that machine only
NEEDS: dict[str, dict[str, Any]] = {"machine-a": {"cpu": 2}, "machine-b": {"memory": "5GB"}}

TRAIN_SCRIPT = """\
import os
import socket

import torch
import torch.distributed as dist


def address(hexed):
    ip, port = hexed.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        text = text[7:] if text.startswith("::ffff:") else text
    return f"{text}:{int(port, 16)}"


def tcp_sockets():
    # (state, local, remote) of this process's TCP sockets; host networking: /proc/net is the host's
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((fields[3], address(fields[1]), address(fields[2])))
    return found


dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([rank + 1.0])
dist.all_reduce(value)  # a sum over the nodes: 1 + 2
print(f"rank {rank} of {world}: sum={value.item()}", flush=True)
print(f"MASTER_ADDR={os.environ['MASTER_ADDR']} MASTER_PORT={os.environ['MASTER_PORT']} "
      f"JOB_HOSTNAME={os.environ['JOB_HOSTNAME']}", flush=True)
held = tcp_sockets()
listening = {local for state, local, _ in held if state == "0A"}
for local in sorted(listening):
    print(f"listens on {local}", flush=True)
for state, local, remote in held:
    if state == "01" and local not in listening:  # established, and not accepted by a listener of ours
        print(f"connected to {remote}", flush=True)
os.makedirs("out", exist_ok=True)
with open(f"out/rank{rank}.txt", "w") as f:
    f.write(f"{world} {value.item()}\\n")
dist.barrier()
dist.destroy_process_group()
"""


def own_copy(folder: Path, target: Path) -> Path:
    """``folder``'s files in ``target`` (hard links, or copies on another file system): a machine's own."""
    target.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copyfile(path, target / path.name)
    return target


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory, s3: MotoServer,
             docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    """The scheduler, machine A and machine B (one slot each), each with its own home, the CLI with its own."""
    wheels = wheelhouse("torch", TORCH_REQUIREMENTS, files=[TORCH_WHEEL]) if TORCH_WHEEL.exists() else None
    root = tmp_path_factory.mktemp("machines")
    vhost = Vhost()
    cluster = Cluster(root, vhost.url, storage_env(s3, f"dstack-{vhost.name[-8:]}"))
    del cluster.env["DSTACK_WORKER_HOST"]  # no address for the scheduler or the CLI: each worker has its own
    try:
        cluster.start_scheduler()
        for worker_id, (address, resources) in MACHINES.items():
            mounts = pip_from(own_copy(wheels, root / f"{worker_id}-wheels")) if wheels else {}
            cluster.start_reporting_worker(worker_id, resources, slots=1, DSTACK_WORKER_HOST=address, **mounts)
        yield cluster
        for home in root.glob("*-home"):  # everything went through the S3 server: no storage folder anywhere
            assert not (home / defaults.LOCAL_STORAGE_DIR).exists(), home
    finally:
        cluster.stop()
        vhost.delete()


def placed(run: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """job id -> (the worker it ran on, the address it was reached at)."""
    return {job["job_id"]: (job["worker"], job["hostname"]) for job in run["jobs"]}


def test_workers_advertise_their_own_addresses(machines: Cluster) -> None:
    listed = {worker["worker_id"]: worker for worker in machines.workers()}
    assert {worker_id: worker["host"] for worker_id, worker in listed.items()} == ADDRESS
    assert all(worker["slots"] == 1 for worker in listed.values())


@pytest.mark.timeout(600)
@pytest.mark.skipif(not TORCH_WHEEL.exists(), reason=f"the PyTorch CPU wheel {TORCH_WHEEL} is not on this machine")
def test_torchrun_master_and_follower_on_two_machines(machines: Cluster, tmp_path: Path) -> None:
    """The master lands on one machine, the follower (one slot each) on the other; the follower
    reaches the master at the master's worker address, and gloo talks between the two addresses."""
    project = torchrun_project(tmp_path / "project", TRAIN_SCRIPT)

    result = machines.dstack("run", "train", cwd=project, timeout=540)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    run = machines.status(run_name)
    assert run["status"] == "done", json.dumps(run, indent=1)
    assert {job["job_id"]: job["status"] for job in run["jobs"] if job["kind"] == "job"} == \
        {"train.0": "done", "train.1": "done"}
    where = placed(run)
    (master_worker, master_host), (follower_worker, follower_host) = where["train.0"], where["train.1"]
    assert {master_worker, follower_worker} == set(MACHINES), where
    assert master_host == ADDRESS[master_worker] and follower_host == ADDRESS[follower_worker], where
    master_port = next(job["ports"][0] for job in run["jobs"] if job["job_id"] == "train.0")

    logs = machines.job_logs(run_name)
    master, follower = logs.get("train.0", []), logs.get("train.1", [])
    assert "rank 0 of 2: sum=3.0" in master, master
    assert "rank 1 of 2: sum=3.0" in follower, follower
    # torchrun's rendezvous: both at the master's worker address and its job's port
    assert f"MASTER_ADDR={master_host} MASTER_PORT={master_port} JOB_HOSTNAME={master_host}" in master, master
    assert f"MASTER_ADDR={master_host} MASTER_PORT={master_port} JOB_HOSTNAME={follower_host}" in follower, follower

    def sockets(lines: list[str], what: str) -> set[str]:
        return {line.split()[-1] for line in lines if line.startswith(what)}

    master_listens, follower_listens = sockets(master, "listens on"), sockets(follower, "listens on")
    master_connects, follower_connects = sockets(master, "connected to"), sockets(follower, "connected to")
    # gloo listens on each node's own machine address, never on 127.0.0.1
    assert master_listens and {a.rsplit(":", 1)[0] for a in master_listens} == {master_host}, master
    assert follower_listens and {a.rsplit(":", 1)[0] for a in follower_listens} == {follower_host}, follower
    # the follower reached the master's store at the master's address; every connection either node
    # made went to a machine's address
    assert f"{master_host}:{master_port}" in follower_connects, follower
    assert {a.rsplit(":", 1)[0] for a in master_connects | follower_connects} <= {master_host, follower_host}, \
        (master_connects, follower_connects)
    # and the two nodes' gloo pair joined them, one connecting to the other's machine address
    assert master_listens & follower_connects or follower_listens & master_connects, (master, follower)

    out = tmp_path / "out"
    downloaded = machines.dstack("artifacts", "download", run_name, "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (out / "train.0" / "out" / "rank0.txt").read_text() == "2 3.0\n"
    assert (out / "train.1" / "out" / "rank1.txt").read_text() == "2 3.0\n"


@pytest.mark.parametrize("on, other", [("machine-a", "machine-b"), ("machine-b", "machine-a")],
                         ids=["a-to-b", "b-to-a"])
def test_a_job_reads_what_a_job_on_the_other_machine_wrote(machines: Cluster, tmp_path: Path,
                                                           on: str, other: str) -> None:
    """A job's artifacts reach the job that depends on it, on the other machine, through storage alone."""
    jobs: list[dict[str, Any]] = [
        {"commands": ["mkdir -p out", 'echo "written at $JOB_HOSTNAME" > out/note.txt'], "artifacts": ["out"],
         "resources": NEEDS[on]},
        {"commands": ["cat out/note.txt", 'echo "read at $JOB_HOSTNAME"'], "depends_on": [0],
         "resources": NEEDS[other]},
    ]
    run_name = machines.submit(graph_workflow_project(tmp_path / "project", jobs))
    run = machines.wait_status(run_name, ("done", "failed", "stopped"), timeout=120)
    assert run["status"] == "done", json.dumps(run, indent=1)
    where = placed(run)
    assert where["w.0"] == (on, ADDRESS[on]) and where["w.1"] == (other, ADDRESS[other]), where
    lines = machines.job_lines(run_name, "w.1")
    assert f"written at {ADDRESS[on]}" in lines and f"read at {ADDRESS[other]}" in lines, lines
