"""deploy/ for real: the image of deploy/Dockerfile, built with no package index (deploy/build-wheelhouse.sh,
then `docker build --network none`), runs the scheduler and a worker as containers, started by hand as
deploy/README.md says and by deploy/compose.yaml; a run goes through each, driven by the CLI on this machine.

The CLI and the image are built from the same checkout; the containers use the host's network (the only one
here), this machine's RabbitMQ (a vhost of their own) and the session's S3 server."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import docker
import pytest

from dstack.names import WORKER_LABEL
from tests.harness import storage_env
from tests.s3server import MotoServer
from tests.services import REPO_ROOT, Cluster, Vhost, queue_consumers, run_name_of, wait_for, write_project

pytestmark = pytest.mark.integration

#: The image the tests build (a tag of its own: compose.yaml's dstack:local stays the user's).
IMAGE = "dstack:deploy-test"
#: The base the tests build it on: made locally by scripts/build-images.sh (Python 3.11, as the host's).
BASE_IMAGE = "dstack/base:bookworm"
COMPOSE_OVERRIDE = Path(__file__).with_name("compose.test.yaml")

WORKFLOWS = """\
workflows:
  - name: hello
    provider: bash
    commands:
      - echo "hello from $(cat input.txt)"
      - mkdir -p out && cp input.txt out/result.txt
    artifacts: [out]
"""


def _tail(result: subprocess.CompletedProcess, lines: int = 60) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


@pytest.fixture(scope="module")
def image(docker_engine: docker.DockerClient) -> str:
    """The dstack image of this checkout, as deploy/README.md builds it, with no network in the build."""
    try:
        docker_engine.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {BASE_IMAGE} is missing; run scripts/build-images.sh")
    wheels = subprocess.run(["bash", "deploy/build-wheelhouse.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert wheels.returncode == 0, f"deploy/build-wheelhouse.sh failed:\n{_tail(wheels)}"
    try:
        previous: Optional[str] = docker_engine.images.get(IMAGE).id
    except docker.errors.ImageNotFound:
        previous = None
    # Layers unchanged since the last session come from the cache (the same options give the same cache).
    build = subprocess.run(["docker", "build", "--network", "none", "--force-rm", "-f", "deploy/Dockerfile",
                            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-t", IMAGE, "."],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"docker build failed:\n{_tail(build)}"
    if previous and previous != docker_engine.images.get(IMAGE).id:
        try:  # the image of an older checkout, untagged now: no pile of them session after session
            docker_engine.images.remove(previous)
        except docker.errors.APIError:
            pass  # still used by a container (of a session beside this one)
    return IMAGE


class Compose:
    """``docker-compose`` of deploy/compose.yaml with the test's override, as a project of its own. Its variables
    come only from ``env_file`` (not from deploy/.env, nor from this process's environment)."""

    def __init__(self, project: str, env_file: Path) -> None:
        self.project, self.env_file = project, env_file
        self.env = {key: value for key, value in os.environ.items()
                    if key in ("PATH", "HOME") or key.startswith("DOCKER_")}

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "--env-file", str(self.env_file), "-f", "deploy/compose.yaml",
                               "-f", str(COMPOSE_OVERRIDE.relative_to(REPO_ROOT)), "-p", self.project, *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, env=self.env, timeout=timeout)


class Deployment(Cluster):
    """The CLI's side of a cluster whose scheduler and worker (``worker_id``) run in containers (by name in
    ``containers``, whose logs a failed test shows); ``storage`` is the storage's environment, ``compose`` the
    compose project they belong to, if any."""

    def __init__(self, root: Path, broker_url: str, storage: dict[str, str], worker_id: str,
                 compose: Optional[Compose] = None) -> None:
        super().__init__(root, broker_url, storage)
        self.storage, self.worker_id, self.compose = storage, worker_id, compose
        self.containers: list[str] = []

    def logs(self) -> str:
        parts = []
        for name in self.containers:
            result = subprocess.run(["docker", "logs", "--tail", "100", name], capture_output=True, text=True)
            parts.append(f"----- {name}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def wait_for_worker(self) -> None:
        wait_for(lambda: queue_consumers(self.broker_url, "dstack.rpc") > 0, 60, "the scheduler")
        wait_for(lambda: self.worker_id in {w["worker_id"] for w in self.workers()}, 60, f"{self.worker_id} to report")


def remove_job_containers(engine: docker.DockerClient, worker_id: str) -> None:
    """Remove what a worker of a test may have left (nothing, when it stopped as it should)."""
    for container in engine.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={worker_id}"}):
        container.remove(force=True)


def run_end_to_end(deployment: Deployment, tmp_path: Path) -> None:
    """A run from the CLI on this machine: the snapshot of a project, the bash provider, a job that logs a line
    and leaves an artifact; then `dstack logs` and `dstack artifacts download`."""
    token = f"deploy-{secrets.token_hex(4)}"
    project = write_project(tmp_path / "project", {".dstack/workflows.yaml": WORKFLOWS, "input.txt": token})
    result = deployment.dstack("run", "hello", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "snapshot: 2 files, " in result.stderr
    run_name = run_name_of(result)
    run = deployment.status(run_name)
    assert run["status"] == "done"
    assert {job["job_id"]: job["status"] for job in run["jobs"]} == {"hello.provider": "done", "hello.0": "done"}

    assert f"hello from {token}" in deployment.job_lines(run_name, "hello.0")
    assert any("created 1 job(s)" in line for line in deployment.job_lines(run_name, "hello.provider"))

    out = tmp_path / "download"
    download = deployment.dstack("artifacts", "download", run_name, "-o", str(out))
    assert download.returncode == 0, download.stderr
    assert (out / "hello.0" / "out" / "result.txt").read_text() == token
    assert [w["worker_id"] for w in deployment.workers()] == [deployment.worker_id]


# --- the image, started with docker run (deploy/README.md, 2b) --------------------------------------------


@pytest.fixture
def containers(tmp_path: Path, s3: MotoServer, image: str, docker_engine: docker.DockerClient) -> Iterator[Deployment]:
    """A scheduler and a worker as containers of the image, with their own vhost and bucket."""
    host = Vhost()
    name = f"dstack-deploy-test-{host.name[-8:]}"
    deployment = Deployment(tmp_path / "cli", host.url, storage_env(s3, name), worker_id=name)
    try:
        yield deployment
    finally:
        for container in reversed(deployment.containers):  # the worker first, then the scheduler
            subprocess.run(["docker", "stop", "-t", "30", container], capture_output=True, timeout=60)
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
        remove_job_containers(docker_engine, name)
        host.delete()


def docker_run(deployment: Deployment, name: str, options: list[str], env: dict[str, str], command: str) -> None:
    args = ["docker", "run", "-d", "--name", name, "--init", "--network", "host"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    deployment.containers.append(name)
    started = subprocess.run([*args, *options, IMAGE, command], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr


def test_the_image_runs_the_scheduler_and_a_worker(containers: Deployment, tmp_path: Path) -> None:
    deployment = containers
    worker_id = deployment.worker_id
    # The scheduler: the image's user (dstack) and home (/var/lib/dstack, in the container).
    docker_run(deployment, f"{worker_id}-scheduler", [], {"DSTACK_BROKER_URL": deployment.broker_url}, "scheduler")
    # The worker: root, the host's engine through its socket, a home at the same path on both sides.
    home = tmp_path / "worker-home"
    home.mkdir()
    docker_run(deployment, f"{worker_id}-worker",
               ["--user", "0:0", "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", f"{home}:{home}"],
               {"DSTACK_BROKER_URL": deployment.broker_url, "DSTACK_HOME": str(home), "DSTACK_WORKER_ID": worker_id,
                "DSTACK_WORKER_HOST": "127.0.0.1", **deployment.storage}, "worker")
    deployment.wait_for_worker()
    uid = subprocess.run(["docker", "exec", f"{worker_id}-scheduler", "id", "-u"], capture_output=True, text=True)
    assert uid.stdout.strip() == "10001", "the scheduler runs as the image's user dstack"

    run_end_to_end(deployment, tmp_path)
    assert (home / "workers" / worker_id / "tasks").is_dir(), "the worker keeps its tasks in its home on the host"


# --- deploy/compose.yaml (deploy/README.md, 1b) -----------------------------------------------------------


@pytest.fixture
def composed(tmp_path: Path, s3: MotoServer, image: str, docker_engine: docker.DockerClient) -> Iterator[Deployment]:
    """The CLI's side (with the URLs of deploy/compose.yaml's header) of a compose project of its own: a vhost, a
    worker home under tmp_path, a unique worker id. ``.compose`` runs docker-compose; the project is brought up
    by the test and always torn down here (`down -v`: containers and volumes)."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing; run scripts/setup.sh")
    host = Vhost()
    project = f"dstack-deploy-test-{host.name[-8:]}"
    settings = {
        "DSTACK_TEST_IMAGE": image, "DSTACK_TEST_BROKER_URL": host.url, "DSTACK_TEST_S3_ENDPOINT": s3.endpoint_url,
        "MINIO_ROOT_USER": "testing", "MINIO_ROOT_PASSWORD": "testing-secret",
        "DSTACK_WORKER_ID": project, "DSTACK_WORKER_HOME": str(tmp_path / "worker-home"), "DSTACK_WORKER_SLOTS": "2",
    }
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    storage = {**s3.env(), "DSTACK_STORAGE_URL": "s3://dstack/runs",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
    compose = Compose(project, env_file)
    deployment = Deployment(tmp_path / "cli", host.url, storage, worker_id=project, compose=compose)
    deployment.containers += [f"{project}_{service}_1" for service in ("minio-init", "scheduler", "worker")]
    try:
        yield deployment
    finally:
        down = compose("down", "-v", "--remove-orphans", "-t", "30", timeout=240)
        left = docker_engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
        for container in left:
            container.remove(force=True, v=True)
        remove_job_containers(docker_engine, project)
        host.delete()
        assert down.returncode == 0 and not left, f"docker-compose down failed:\n{_tail(down)}"


def test_compose_brings_up_the_scheduler_and_a_worker(composed: Deployment, tmp_path: Path) -> None:
    compose = composed.compose
    assert compose
    config = compose("config")
    assert config.returncode == 0, config.stderr
    assert f"context: {REPO_ROOT}\n" in config.stdout and "dockerfile: deploy/Dockerfile" in config.stdout

    up = compose("up", "-d")
    assert up.returncode == 0, f"docker-compose up failed:\n{_tail(up)}"
    composed.wait_for_worker()
    run_end_to_end(composed, tmp_path)
    assert (tmp_path / "worker-home" / "workers" / composed.worker_id / "tasks").is_dir()
