"""Placement through the real scheduler, workers, RabbitMQ and Docker: several workers with
different declared inventories on this machine; jobs land only where they fit, GPUs are never
shared, a job that fits no live worker waits and starts when one joins."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.projects import graph_workflow_project
from tests.services import Cluster, queue_counts, wait_for

pytestmark = pytest.mark.integration

CPU_ONLY = "{cpu: 2, memory: 2GB, gpu: 0}"
ONE_T4 = "{cpu: 4, memory: 8GB, gpu: {count: 1, name: Tesla T4, memory: 15360MB}}"
FOUR_A100 = "{cpu: 16, memory: 64GB, gpu: {count: 4, name: NVIDIA A100-SXM4-40GB, memory: 40960MB}}"
TWO_A100 = "{cpu: 8, memory: 32GB, gpu: {count: 2, name: NVIDIA A100-SXM4-80GB, memory: 81920MB}}"
ONE_H100 = "{cpu: 8, memory: 16GB, gpu: {count: 1, name: NVIDIA H100 80GB HBM3, memory: 81559MB}}"

#: prints where the job ran and which GPUs it was given
SHOW = "echo gpus=${NVIDIA_VISIBLE_DEVICES:-none}"


def gpus_of(lines: list[str]) -> str:
    return next(line.split("=", 1)[1] for line in lines if line.startswith("gpus="))


def test_jobs_land_only_where_they_fit(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("cpu-small", CPU_ONLY)
    fleet.start_reporting_worker("gpu-t4", ONE_T4)
    fleet.start_reporting_worker("gpu-a100", FOUR_A100)
    jobs = [
        {"commands": [SHOW]},                                                              # anywhere
        {"commands": [SHOW], "resources": {"gpu": {"count": 2, "name": "A100", "memory": "40GB"}}},
        {"commands": [SHOW], "resources": {"gpu": {"name": "T4", "memory": "16GB"}}},     # T4: 15360 MiB
        {"commands": [SHOW], "resources": {"gpu": 3}},                                     # any model, 3 of them
        {"commands": [SHOW], "resources": {"cpu": 3, "memory": "4GB"}},                   # too big for cpu-small
        {"commands": [SHOW], "resources": {"cpu": 1, "memory": "1GB"}},
    ]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=120)
    assert run["status"] == "done", json.dumps(run, indent=1) + fleet.logs()
    where = {job["job_id"]: job["worker"] for job in run["jobs"]}
    logs = fleet.job_logs(run_name)
    assert where["w.1"] == "gpu-a100" and len(set(gpus_of(logs["w.1"]).split(","))) == 2
    assert where["w.2"] == "gpu-t4" and gpus_of(logs["w.2"]) == "0"
    assert where["w.3"] == "gpu-a100" and len(gpus_of(logs["w.3"]).split(",")) == 3
    assert where["w.4"] in ("gpu-t4", "gpu-a100")
    # a job that asks for no GPU on a GPU worker is shown none; on a CPU worker nothing is said
    for job_id in ("w.0", "w.4", "w.5"):
        assert gpus_of(logs[job_id]) == ("none" if where[job_id] == "cpu-small" else "void")
    # the queues are named after what their tasks need
    queues = subprocess.run(["rabbitmqctl", "list_queues", "-p", fleet.broker_url.rsplit("/", 1)[1], "name"],
                            capture_output=True, text=True, check=True).stdout
    assert "dstack.tasks.gpu2xa100-vram40960mib" in queues and "dstack.tasks.cpu3-mem4096mib" in queues


def test_gpus_are_never_shared_under_concurrent_load(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("gpu-a100", TWO_A100, slots=8)
    job = {"commands": ['echo "gpus=$NVIDIA_VISIBLE_DEVICES start=$(date +%s.%N)"', "sleep 1",
                        'echo "end=$(date +%s.%N)"'], "resources": {"gpu": 1}}
    pair = {"commands": job["commands"], "resources": {"gpu": {"count": 2, "name": "A100"}}}
    projects = [graph_workflow_project(tmp_path / f"p{i}", [job] * 4 + [pair]) for i in range(3)]
    clis = [subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "run", "w", "-d"], cwd=p, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=fleet.env) for p in projects]
    run_names = []
    for cli in clis:
        out, errors = cli.communicate(timeout=120)
        assert cli.returncode == 0, errors
        run_names.append(out.split()[0])
    intervals: list[tuple[float, float, list[str]]] = []
    for run_name in run_names:
        run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=240)
        assert run["status"] == "done", json.dumps(run, indent=1) + fleet.logs()
        for job_id, lines in fleet.job_logs(run_name).items():
            if job_id.endswith(".provider"):
                continue
            text = " ".join(lines)
            gpus = re.search(r"gpus=(\S+)", text).group(1).split(",")
            start, end = float(re.search(r"start=(\S+)", text).group(1)), float(re.search(r"end=(\S+)", text).group(1))
            intervals.append((start, end, gpus))
    assert len(intervals) == 15
    assert all(set(gpus) <= {"0", "1"} for _, _, gpus in intervals)
    for i, (start_a, end_a, gpus_a) in enumerate(intervals):
        for start_b, end_b, gpus_b in intervals[i + 1:]:
            if start_a < end_b and start_b < end_a:  # ran at the same time: on different GPUs
                assert not set(gpus_a) & set(gpus_b), (gpus_a, gpus_b)
    # the two GPUs were used at once (the worker did not run one job at a time)
    assert any(s_a < e_b and s_b < e_a
               for i, (s_a, e_a, _) in enumerate(intervals) for s_b, e_b, _ in intervals[i + 1:])
    # every GPU was given back (as the next periodic report says)
    wait_for(lambda: not fleet.workers()[0]["in_use"], 30, "the GPUs to be given back")


def test_job_waits_for_capacity_and_starts_when_a_worker_joins(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("cpu-small", CPU_ONLY)
    jobs = [{"commands": [SHOW], "resources": {"gpu": {"count": 1, "name": "H100", "memory": "80GB"}}}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    job = wait_for(lambda: next((j for j in fleet.status(run_name)["jobs"] if j["job_id"] == "w.0"), None),
                   60, "the job to be created")
    wait_for(lambda: fleet.status(run_name)["jobs"][-1]["status"] == "queued", 30, "the job to be queued")
    time.sleep(3)  # it neither fails nor starts
    job = fleet.status(run_name)["jobs"][-1]
    assert job["status"] == "queued", job
    assert job["reason"] == "waiting for capacity: no live worker has 1xH100 (80GB each)", job
    queue = "dstack.tasks.gpu1xh100-vram81920mib"  # nobody takes from it: no worker is sent the task in vain
    assert queue_counts(fleet.broker_url, queue) == (1, 0)
    shown = fleet.dstack("status", run_name)
    assert "waiting for capacity" in shown.stdout

    fleet.start_reporting_worker("gpu-h100", ONE_H100)
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    assert run["status"] == "done", run
    assert run["jobs"][-1]["worker"] == "gpu-h100"
    assert gpus_of(fleet.job_logs(run_name)["w.0"]) == "0"


def test_workers_lists_what_each_has_and_holds(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("gpu-a100", TWO_A100)
    jobs = [{"commands": ["sleep 30"], "resources": {"gpu": 1, "cpu": 2, "memory": "1GB"}}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    wait_for(lambda: fleet.status(run_name)["jobs"][-1]["status"] == "running", 60, "the job to run")

    def job_reported() -> list | None:
        # The report is periodic: one sent before the provider task was given back lists that task instead.
        listed = fleet.workers()
        return listed if [held["task_id"] for held in listed[0]["in_use"]] == ["w.0"] else None

    listed = wait_for(job_reported, 20, "a report that lists the job")
    worker = listed[0]
    assert worker["host"] == "127.0.0.1" and worker["slots"] == 4
    assert worker["resources"]["cpu"] == 8 and worker["resources"]["memory_mib"] == 32768
    assert [g["name"] for g in worker["resources"]["gpus"]] == ["NVIDIA A100-SXM4-80GB"] * 2
    (held,) = worker["in_use"]
    assert (held["run_name"], held["task_id"], held["gpu_ids"]) == (run_name, "w.0", ["0"])
    assert time.time() - worker["seen_at"] < 15
    table = fleet.dstack("workers").stdout
    assert "gpu-a100" in table and "2xNVIDIA A100-SXM4-80GB (81920 MiB)" in table
    assert f"{run_name}/w.0: 1xGPU, 2 CPUs, 1GB memory (GPU 0)" in table
    assert fleet.dstack("stop", run_name, "--abort").returncode == 0
    wait_for(lambda: not fleet.workers()[0]["in_use"], 30, "the GPU to be given back")
