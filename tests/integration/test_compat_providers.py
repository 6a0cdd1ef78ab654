"""Projects written for early dstack, with the built-in providers' older parameters, run unchanged through
the real services (scheduler, workers, Docker, S3, RabbitMQ); ambiguous ones are refused before anything
is submitted. See docs/compatibility.md."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.s3server import free_port
from tests.services import Cluster, run_name_of, wait_for, write_project
from tests.wheels import make_wheel, pip_from

pytestmark = pytest.mark.integration

#: a worker that declares four K80s (no real device: its jobs are told their GPUs, as in test_placement.py)
FOUR_K80 = "{cpu: 4, memory: 8GB, gpu: {count: 4, name: Tesla K80, memory: 11441MB}}"


def test_python_script_and_a_numeric_python_version(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: train
    provider: python
    python_script: train.py
    python: 3.9
    args: --epochs 2
""",
        "train.py": "import sys\nprint('trained', sys.argv[1:])\n",
    })

    result = cluster.dstack("run", "train", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr
    run_name = run_name_of(result)
    assert "trained ['--epochs', '2']" in cluster.job_logs(run_name)["train.0"]
    assert cluster.status(run_name)["jobs"][1]["image"] == "python:3.9"


def test_bash_with_python_and_requirements(fleet: Cluster, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "dstack_early", "0.1.0", {"dstack_early.py": "WORD = 'early'\n"})
    fleet.start_worker(**pip_from(wheels))
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: prepare
    provider: bash
    python: 3.9
    requirements: requirements.txt
    commands:
      - python3 -c "import dstack_early; print('imported', dstack_early.WORD)"
""",
        "requirements.txt": "dstack-early==0.1.0\n",
    })

    result = fleet.dstack("run", "prepare", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    logs = fleet.job_logs(run_name)["prepare.0"]
    assert any("Successfully installed dstack-early-0.1.0" in line for line in logs), logs
    assert "imported early" in logs
    assert fleet.status(run_name)["jobs"][1]["image"] == "python:3.9"


def test_docker_ports_as_a_list_of_numbers(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": f"""\
workflows:
  - name: serve
    provider: docker
    image: python:3.9
    ports: [{port}]
    commands:
      - echo "port $JOB_PORT_0"
      - (python3 -m http.server "$JOB_PORT_0" > /dev/null 2>&1 &)
      - python3 -c "import time, urllib.request as u; time.sleep(1); print(u.urlopen('http://127.0.0.1:$JOB_PORT_0/').status)"
""",
    })

    result = cluster.dstack("run", "serve", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    logs = cluster.job_logs(run_name_of(result))["serve.0"]
    assert f"port {port}" in logs and "200" in logs


def test_interruptible_and_model_gpu_resources(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("cpu-only", "{cpu: 2, memory: 2GB, gpu: 0}")
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: w
    provider: bash
    commands:
      - echo gpus=$NVIDIA_VISIBLE_DEVICES
    resources:
      interruptible: true
      K80/gpu: 4
""",
    })
    run_name = fleet.submit(project)

    # no live worker has four K80s: the job waits, its needs shown
    def waiting() -> dict | None:
        job = next((j for j in fleet.status(run_name)["jobs"] if j["job_id"] == "w.0"), None)
        return job if job and job["status"] == "queued" and job["reason"] else None

    job = wait_for(waiting, 60, "the job to wait for capacity")
    assert job["resources"]["interruptible"] is True
    assert (job["resources"]["gpu_count"], job["resources"]["gpu_name"]) == (4, "K80")
    assert job["reason"] == "waiting for capacity: no live worker has 4xK80", job

    fleet.start_reporting_worker("four-k80", FOUR_K80)  # interruptible changes nothing of where it runs
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    assert run["status"] == "done", json.dumps(run, indent=1) + fleet.logs()
    assert run["jobs"][-1]["worker"] == "four-k80"
    assert "gpus=0,1,2,3" in fleet.job_logs(run_name)["w.0"]


def test_ambiguous_spellings_are_refused_and_3_10_is_warned_of(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: two-files
    provider: python
    file: train.py
    script: other.py
  - name: two-gpus
    provider: bash
    commands: [nvidia-smi]
    resources:
      gpu: 1
      K80/gpu: 4
  - name: ten
    provider: python
    file: train.py
    version: 3.10
    pull_policy: never  # python:3.10 is on no registry this machine reaches
""",
        "train.py": "print('never')\n",
    })
    before = json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout)

    files = cluster.dstack("run", "two-files", cwd=project)
    gpus = cluster.dstack("run", "two-gpus", cwd=project)

    assert files.returncode == 1 and files.stdout == ""
    assert ".dstack/workflows.yaml:5 (workflows.two-files.script)" in files.stderr
    assert "'file' and 'script' both give the file ('train.py' and 'other.py'); keep one: 'file'" in files.stderr
    assert gpus.returncode == 1 and ".dstack/workflows.yaml:9 (workflows.two-gpus.resources)" in gpus.stderr
    assert "'K80/gpu' and 'gpu' both say which GPUs the job needs" in gpus.stderr
    after = json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout)
    assert len(after) == len(before)  # nothing was submitted

    ten = cluster.dstack("run", "ten", "-d", cwd=project)  # python:3.10 is not on this worker: not followed
    assert ten.returncode == 0, ten.stderr
    assert ("warning: .dstack/workflows.yaml:15 (workflows.ten.version): 3.1 read as 3.10; quote it: '3.10'"
            in ten.stderr)
    run_name = run_name_of(ten)
    run = cluster.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    assert run["jobs"][-1]["image"] == "python:3.10"  # the provider read it as the CLI did
