"""The built-in providers through the real services: scheduler, worker, Docker, S3 (moto), RabbitMQ."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.services import Cluster, FileServer, http_get, run_name_of, wait_for, write_project
from tests.wheels import make_wheel, pip_from, wheelhouse

pytestmark = pytest.mark.integration

ARGV_SCRIPT = "import json, sys\nprint('argv=' + json.dumps(sys.argv[1:]))\n"


def test_bash_with_the_common_parameters(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: build
    provider: bash
    before_run:
      - echo "before $GREETING" > out/before.txt
    commands:
      - pwd > out/pwd.txt
      - echo "$GREETING, $TARGET" | tee out/hello.txt
      - test -f ../README.md && echo "project root is one folder up"
    environment:
      GREETING: Hello
      TARGET: world
    working_dir: src
    artifacts: [src/out]
    resources:
      cpu: 1
      memory: 256MB
""",
        "README.md": "a project\n",
        "src/out/.keep": "",
    })

    result = cluster.dstack("run", "build", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    logs = cluster.job_lines(run_name, "build.0")
    assert "Hello, world" in logs and "project root is one folder up" in logs
    job = cluster.status(run_name)["jobs"][1]
    assert job["image"] == "python:3.11"
    assert job["resources"]["cpu"] == 1 and job["resources"]["memory_mib"] == 256
    out = tmp_path / "out"
    assert cluster.dstack("artifacts", "download", run_name, "-o", str(out)).returncode == 0
    files = out / "build.0" / "src" / "out"
    assert (files / "before.txt").read_text() == "before Hello\n"  # before_run ran first, in working_dir
    assert (files / "pwd.txt").read_text() == "/workflow/src\n"
    assert (files / "hello.txt").read_text() == "Hello, world\n"


def test_bash_without_a_workflow_file(cluster: Cluster, tmp_path: Path) -> None:
    # a providers/ folder of the user's own hides nothing of dstack's (the CLI runs here, as `python -m`)
    folder = write_project(tmp_path / "plain", {"data.txt": "one\ntwo\nthree\n", "providers/mine/main.py": ""})

    result = cluster.dstack("run", "bash", "-c", "echo lines=$(wc -l < data.txt)", "-e", "A=1", cwd=folder)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    assert "lines=3" in cluster.job_lines(run_name, "bash.0")
    run = cluster.status(run_name)
    assert run["workflow"] == "bash" and run["status"] == "done"


def test_python_script_with_arguments_from_the_command_line(cluster: Cluster, tmp_path: Path) -> None:
    folder = write_project(tmp_path / "plain", {"train.py": ARGV_SCRIPT})

    result = cluster.dstack("run", "python", "train.py", "--epochs", "3", "-d", "x y", cwd=folder)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)  # -d after the script is the script's, not dstack's: the run was followed
    assert f"{run_name} done" in result.stderr
    assert 'argv=["--epochs", "3", "-d", "x y"]' in cluster.job_lines(run_name, "python.0")


def test_python_from_a_subfolder_of_a_project_runs_there(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": "workflows:\n  - name: other\n    provider: bash\n    commands: [ls]\n",
        "src/models/train.py": "import os\nprint('cwd=' + os.getcwd())\n",
        "data.txt": "at the root\n",
    })

    result = cluster.dstack("run", "python", "train.py", cwd=project / "src" / "models")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "cwd=/workflow/src/models" in cluster.job_lines(run_name_of(result), "python.0")
    assert cluster.status(run_name_of(result))["project"] == str(project)  # the whole project was snapshotted


def test_python_args_as_a_string_and_as_a_list_and_the_version(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: as-string
    provider: python
    file: train.py
    args: --epochs 3 --run $RUN_NAME
  - name: as-list
    provider: python
    file: train.py
    args: [--name, "two words", 7]
    version: "3.9"
""",
        "train.py": ARGV_SCRIPT,
    })

    as_string = cluster.dstack("run", "as-string", cwd=project)
    as_list = cluster.dstack("run", "as-list", cwd=project)

    assert as_string.returncode == 0 and as_list.returncode == 0, as_string.stderr + as_list.stderr
    run_name = run_name_of(as_string)
    assert f'argv=["--epochs", "3", "--run", "{run_name}"]' in cluster.job_lines(run_name, "as-string.0")
    assert 'argv=["--name", "two words", "7"]' in cluster.job_lines(run_name_of(as_list), "as-list.0")
    assert cluster.status(run_name_of(as_list))["jobs"][1]["image"] == "python:3.9"


def test_python_requirements_from_a_local_package_folder(fleet: Cluster, tmp_path: Path) -> None:
    """A worker gives every container a mounted package folder and tells pip to use it (a closed network)."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "dstack_greeting", "1.2.0", {"dstack_greeting.py": "def greet(who):\n    return f'hi {who}'\n"})
    fleet.start_worker(DSTACK_CONTAINER_MOUNTS=f"{wheels}:/wheels:ro",
                       DSTACK_CONTAINER_ENV="{PIP_NO_INDEX: 1, PIP_FIND_LINKS: /wheels, CACHE_DIR: /wheels}")
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: greet
    provider: python
    file: greet.py
    requirements: requirements.txt
""",
        "requirements.txt": "dstack-greeting==1.2.0\n",
        "greet.py": "import os, dstack_greeting\nprint(dstack_greeting.greet('there'), os.environ['CACHE_DIR'])\n",
    })

    result = fleet.dstack("run", "greet", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    logs = fleet.job_lines(run_name_of(result), "greet.0")
    assert any("Successfully installed dstack-greeting-1.2.0" in line for line in logs), logs
    assert "hi there /wheels" in logs


def test_docker_image_commands_and_ports(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: serve
    provider: docker
    image: python:3.9
    ports: 2
    commands:
      - echo "ports $JOB_PORT_0 $JOB_PORT_1"
      - python3 -c "import socket; s = socket.socket(); s.bind(('', $JOB_PORT_0)); print('bound')"
""",
    })

    result = cluster.dstack("run", "serve", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    logs = cluster.job_lines(run_name, "serve.0")
    job = cluster.status(run_name)["jobs"][1]
    assert job["image"] == "python:3.9"
    first, second = job["ports"]
    assert first != second and 0 not in (first, second)  # any free ports, chosen by the worker
    assert f"ports {first} {second}" in logs and "bound" in logs


def test_docker_without_commands_runs_the_image_s_own(cluster: Cluster, docker_engine: docker.DockerClient,
                                                      tmp_path: Path) -> None:
    image = "dstack-test/own-command:1"
    scratch = docker_engine.containers.create("python:3.9")
    try:
        scratch.commit(*image.split(":"), changes=['ENTRYPOINT ["sh", "-c"]', 'CMD ["echo own command in $PWD"]'])
    finally:
        scratch.remove()
    folder = write_project(tmp_path / "plain", {"x.txt": ""})

    result = cluster.dstack("run", "docker", image, cwd=folder)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "own command in /workflow" in cluster.job_lines(run_name_of(result), "docker.0")


def test_curl_downloads_into_an_artifact(cluster: Cluster, files: FileServer, tmp_path: Path) -> None:
    (files.folder / "input.txt").write_text("to be or not to be\n")  # type: ignore[attr-defined]
    folder = write_project(tmp_path / "plain", {"README.md": "x\n"})

    result = cluster.dstack("run", "curl", f"{files.url}/input.txt", "-o", "data/input.txt", "-a", "data",
                            cwd=folder)
    missing = cluster.dstack("run", "curl", f"{files.url}/missing.txt", "-o", "data/x.txt", cwd=folder)

    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    assert cluster.dstack("artifacts", "download", run_name_of(result), "-o", str(out)).returncode == 0
    assert (out / "curl.0" / "data" / "input.txt").read_text() == "to be or not to be\n"
    assert missing.returncode == 1  # an HTTP error fails the job
    assert "404" in cluster.status(run_name_of(missing))["jobs"][1]["reason"]


def test_torchrun_master_and_followers(cluster: Cluster, tmp_path: Path) -> None:
    """The wiring of several nodes: every node runs torchrun with its rank and the master's address
    and port. A stand-in ``torchrun`` (installed by before_run) records its arguments; the real one,
    with PyTorch, is exercised in test_torchrun_with_pytorch."""
    stand_in = "#!/bin/sh\\necho \"torchrun $*\"\\n"
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": f"""\
workflows:
  - name: train
    provider: torchrun
    file: train.py
    args: --epochs 2
    nodes: 3
    before_run:
      - printf '{stand_in}' > /usr/local/bin/torchrun && chmod +x /usr/local/bin/torchrun
""",
        "train.py": "",
    })

    result = cluster.dstack("run", "train", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    run = cluster.status(run_name)
    jobs = {j["job_id"]: j for j in run["jobs"]}
    master_port = jobs["train.0"]["ports"][0]
    assert jobs["train.1"]["master"] == jobs["train.2"]["master"] == "train.0"
    logs = cluster.job_logs(run_name)
    for rank in range(3):
        assert (f"torchrun --nnodes=3 --node_rank={rank} --nproc_per_node=1 --master_addr=127.0.0.1 "
                f"--master_port={master_port} train.py --epochs 2") in logs[f"train.{rank}"]


def test_tensorboard_url_shown_while_it_runs(fleet: Cluster, tmp_path: Path) -> None:
    wheels = wheelhouse("tensorboard", ["tensorboard"])
    fleet.start_worker(**pip_from(wheels))
    folder = write_project(tmp_path / "plain", {"runs/.keep": ""})
    # followed as a user would: `dstack run` prints the URL when the job runs; Ctrl-C detaches
    cli = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "run", "tensorboard", "runs"], cwd=folder,
                           env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_name = cli.stdout.readline().strip()  # type: ignore[union-attr]
    try:
        followed = wait_for(lambda: _line_with(cli, "tensorboard.0 running at"), 240, "tensorboard to run")
        job = next(j for j in fleet.status(run_name)["jobs"] if j["job_id"] == "tensorboard.0")
        url = f"http://127.0.0.1:{job['ports'][0]}/"
        assert followed.strip() == f"tensorboard.0 running at tensorboard {url}"
        assert job["apps"] == [{"name": "tensorboard", "url": url}]
        assert f"tensorboard {url}" in fleet.dstack("status", run_name).stdout
        page = wait_for(lambda: http_get(url), 180, "tensorboard to answer", interval=1)
        assert "<tf-tensorboard" in page or "TensorBoard" in page
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130  # detached; the run goes on
        assert fleet.status(run_name)["status"] == "running"
    finally:
        cli.kill()
        fleet.dstack("stop", run_name)
    stopped = fleet.wait_status(run_name, ("stopped", "failed", "done"), timeout=60)
    assert stopped["status"] == "stopped"
    assert stopped["jobs"][1]["apps"] == [{"name": "tensorboard", "url": None}]  # no URL once it ended
    assert "tensorboard http" not in fleet.dstack("status", run_name).stdout


def _line_with(process: subprocess.Popen, text: str) -> str:
    """The next line of the process's standard error that holds ``text`` (reading on until one does)."""
    for line in process.stderr:  # type: ignore[union-attr]
        if text in line:
            return line
    return ""


def test_a_bad_parameter_fails_before_anything_is_submitted(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: train
    provider: python
    file: train.py
    version: 3
  - name: typo
    provider: python
    file: train.py
    requirement: requirements.txt
""",
        "train.py": "print('never')\n",
    })
    before = json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout)

    version = cluster.dstack("run", "train", cwd=project)
    typo = cluster.dstack("run", "typo", cwd=project)
    memory = cluster.dstack("run", "python", "--memory", "lots", "train.py", cwd=project)
    no_file = cluster.dstack("run", "python", cwd=project)

    assert version.returncode == 1 and version.stdout == ""
    assert ".dstack/workflows.yaml:5 (workflows.train.version)" in version.stderr
    assert "3 is less than or equal to the minimum of 3" in version.stderr and "quote it" in version.stderr
    assert ".dstack/workflows.yaml:9 (workflows.typo.requirement)" in typo.stderr
    assert "did you mean 'requirements'?" in typo.stderr
    assert memory.returncode == 1 and "parameter 'resources.memory'" in memory.stderr
    assert no_file.returncode == 1 and "the following arguments are required: file" in no_file.stderr
    after = json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout)
    assert len(after) == len(before)  # nothing was submitted


def test_provider_help_and_unknown_names(cluster: Cluster, tmp_path: Path) -> None:
    folder = write_project(tmp_path / "plain", {"x.py": ""})

    helped = cluster.dstack("run", "python", "-h", cwd=folder)
    unknown = cluster.dstack("run", "pyton", "x.py", cwd=folder)

    assert helped.returncode == 0 and "usage: dstack run python" in helped.stdout
    assert "--requirements" in helped.stdout and "--gpu" in helped.stdout
    assert unknown.returncode == 1
    assert "'pyton' is not a built-in provider (bash, curl, docker, python, tensorboard, torchrun)" in unknown.stderr
    project = write_project(tmp_path / "project", {".dstack/workflows.yaml": "workflows: []\n", "x.py": ""})
    in_project = cluster.dstack("run", "pyton", "x.py", cwd=project)
    assert in_project.returncode == 1 and "no workflow named 'pyton'" in in_project.stderr  # not its arguments


def test_a_project_provider_of_the_same_name_wins(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": """\
providers:
  - name: bash
    image: python:3.9
    commands:
      - python3 mine.py
""",
        ".dstack/workflows.yaml": "workflows:\n  - name: w\n    provider: bash\n    anything: goes\n",
        "mine.py": """\
from dstack import Job, Provider

class Mine(Provider):
    def create_jobs(self):
        return [Job(image="python:3.9", commands=["echo the project provider ran"])]

Mine().start()
""",
    })

    result = cluster.dstack("run", "w", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "the project provider ran" in cluster.job_lines(run_name_of(result), "w.0")

