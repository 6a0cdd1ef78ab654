"""Workers pull the images their jobs need from real registries (Debian's docker-registry on loopback, one open
and one with htpasswd authentication): progress in the job's log, one pull for the jobs that need the same
image, credentials per workflow (from secrets) and per worker, pull policies, a clear reason for each failure,
and unused pulled images removed when the disk runs low.

Each test removes the images it pulls from the engine first: an image left by another test would be present,
and nothing would be pulled.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.projects import graph_project
from tests.registry import BASE_IMAGE, Registry, build_image, remove_image
from tests.s3server import free_port
from tests.services import Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

USER = ("alice", "s3cret")


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory,
               docker_engine: docker.DockerClient) -> Iterator[tuple[Registry, Registry]]:
    """An open registry holding ``team/app:1`` (20 MB to download) and one that wants ``alice`` holding
    ``team/private:1``; neither image stays on the engine."""
    root = tmp_path_factory.mktemp("registries")
    open_registry, private = Registry(root / "open"), Registry(root / "private", user=USER)
    for registry, image, version, size in ((open_registry, "team/app:1", "v1", 20),
                                           (private, "team/private:1", "p1", 0)):
        name = f"{registry.host}/{image}"
        build_image(docker_engine, name, version, payload_mb=size)
        registry.push(docker_engine, name)
        remove_image(docker_engine, name)
    yield open_registry, private
    open_registry.stop()
    private.stop()


def run(fleet: Cluster, project: Path, workflow: str = "w") -> tuple[int, str, str]:
    """``dstack run WORKFLOW`` to its end: (exit code, run name, what it printed on stderr)."""
    result = fleet.dstack("run", workflow, cwd=project, timeout=240)
    return result.returncode, run_name_of(result), result.stderr


def project_with(root: Path, jobs: list[dict[str, Any]], **workflow: Any) -> Path:
    return write_project(root, graph_project([{"name": "w", "jobs": jobs, **workflow}]))


def present(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_a_missing_image_is_pulled_once_for_the_jobs_that_need_it(
        fleet: Cluster, registries: tuple[Registry, Registry], docker_engine: docker.DockerClient,
        tmp_path: Path) -> None:
    open_registry, _ = registries
    image = f"{open_registry.host}/team/app:1"
    remove_image(docker_engine, image)
    before = open_registry.manifest_requests("team/app", "1")
    fleet.start_worker(slots=3)
    project = project_with(tmp_path / "p", [{"image": image, "commands": [f"echo job {i}: $(cat /version)"]}
                                            for i in range(3)])
    code, run_name, stderr = run(fleet, project)
    assert code == 0, stderr
    assert "w.0 pulling" in stderr and "w.0 running" in stderr  # the follower saw each job pulling
    lines = fleet.job_logs(run_name)
    printed = {line for job in lines.values() for line in job if line.startswith("job ")}
    assert printed == {f"job {i}: v1" for i in range(3)}
    for job in ("w.0", "w.1", "w.2"):
        assert lines[job][0] == f"dstack: pulling {image}", lines[job]
        assert any(line.startswith(f"dstack: pulled {image}: ") for line in lines[job]), lines[job]
    progress = [line for line in lines["w.0"] if line.startswith(f"dstack: pulling {image}: ")]
    assert all(" layers" in line for line in progress)
    # one pull: the registry was asked for the manifest by one pull only (HEAD, then GET)
    assert open_registry.manifest_requests("team/app", "1") - before <= 2
    assert present(docker_engine, image)
    worker = fleet.workers()[0]
    assert worker["disk_free"] > 0
    listing = fleet.dstack("workers")
    assert "DISK FREE" in listing.stdout and " GB" in listing.stdout


def test_credentials_from_a_secret_and_a_reason_for_each_failure(
        fleet: Cluster, registries: tuple[Registry, Registry], docker_engine: docker.DockerClient,
        tmp_path: Path) -> None:
    open_registry, private = registries
    image = f"{private.host}/team/private:1"
    remove_image(docker_engine, image)
    closed = f"127.0.0.1:{free_port()}"
    fleet.start_worker(slots=2, DSTACK_PULL_RETRY_TIMEOUT="3")
    assert fleet.dstack("secrets", "set", "REGISTRY_TOKEN", input=USER[1]).returncode == 0
    secret = {"username": USER[0], "password": "${{ secrets.REGISTRY_TOKEN }}"}
    cases = {
        "no-credentials": ({"image": image}, {}, "unauthorized"),
        "wrong-password": ({"image": image}, {"registry_auth": {"username": USER[0], "password": "wrong"}},
                           "unauthorized"),
        "missing-tag": ({"image": f"{open_registry.host}/team/app:nope"}, {}, "not found"),
        "unreachable": ({"image": f"{closed}/team/app:1"}, {}, "registry unreachable"),
    }
    for name, (job, workflow, reason) in cases.items():
        project = project_with(tmp_path / name, [{**job, "commands": ["true"]}], **workflow)
        code, run_name, stderr = run(fleet, project)
        status = fleet.status(run_name)
        assert code == 1 and status["status"] == "failed", (name, stderr)
        assert reason in status["reason"], (name, status["reason"])
        assert "failed to start" in status["reason"]
    # the worker survived every failure, and the secret opens the private registry
    project = project_with(tmp_path / "ok", [{"image": image, "commands": ["cat /version", "env | sort"]}],
                           registry_auth=secret)
    code, run_name, stderr = run(fleet, project)
    assert code == 0, stderr
    lines = fleet.job_lines(run_name, "w.0")
    assert "p1" in lines and not any(line.startswith("REGISTRY_TOKEN=") for line in lines)
    everything = json.dumps(fleet.status(run_name)) + fleet.dstack("logs", run_name).stdout
    assert USER[1] not in everything


def test_worker_credentials_and_pull_policies(
        fleet: Cluster, registries: tuple[Registry, Registry], docker_engine: docker.DockerClient,
        tmp_path: Path) -> None:
    open_registry, private = registries
    private_image = f"{private.host}/team/private:1"
    moving = f"{open_registry.host}/team/moving:latest"
    for image in (private_image, moving):
        remove_image(docker_engine, image)
    fleet.start_worker(slots=1, DSTACK_REGISTRY_AUTH=json.dumps(
        {private.host: {"username": USER[0], "password": USER[1]}}))
    # the worker's own credentials serve a workflow that brings none
    code, run_name, stderr = run(fleet, project_with(tmp_path / "private", [{"image": private_image,
                                                                             "commands": ["cat /version"]}]))
    assert code == 0 and "p1" in fleet.job_lines(run_name, "w.0"), stderr

    def version(policy: str) -> str:
        workflow = {"pull_policy": policy} if policy else {}
        code, run_name, stderr = run(fleet, project_with(tmp_path / f"moving-{policy}-{free_port()}", [
            {"image": moving, "commands": ["cat /version"]}], **workflow))
        assert code == 0, stderr
        return fleet.job_lines(run_name, "w.0")[-1]

    def publish(tag_version: str) -> None:
        """A new build under the same tag in the registry; the engine keeps what the tag named before."""
        try:
            here: Any = docker_engine.images.get(moving)
        except docker.errors.ImageNotFound:
            here = None
        build_image(docker_engine, moving, tag_version)
        open_registry.push(docker_engine, moving)
        remove_image(docker_engine, moving)
        if here is not None:
            here.tag(moving)

    publish("m1")
    assert version("") == "m1"  # pulled: it was missing
    publish("m2")
    assert version("if-not-present") == "m1"  # present: not pulled again
    assert version("always") == "m2"  # the tag moved: pulled again
    remove_image(docker_engine, moving)
    code, run_name, stderr = run(fleet, project_with(tmp_path / "never", [{"image": moving, "commands": ["true"]}],
                                                     pull_policy="never"))
    assert code == 1 and "pull policy is never" in fleet.status(run_name)["reason"]


def test_the_docker_config_of_the_workers_user_opens_a_private_registry(
        fleet: Cluster, registries: tuple[Registry, Registry], docker_engine: docker.DockerClient,
        tmp_path: Path) -> None:
    _, private = registries
    image = f"{private.host}/team/private:1"
    remove_image(docker_engine, image)
    config = tmp_path / "docker-config"  # what `docker login` writes, in the folder DOCKER_CONFIG names
    config.mkdir()
    token = base64.b64encode(":".join(USER).encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": token}}}))
    fleet.start_worker(slots=1, DOCKER_CONFIG=str(config))
    code, run_name, stderr = run(fleet, project_with(tmp_path / "p", [{"image": image, "commands": ["cat /version"]}]))
    assert code == 0 and "p1" in fleet.job_lines(run_name, "w.0"), stderr


def test_unused_pulled_images_go_when_the_disk_runs_low(
        fleet: Cluster, registries: tuple[Registry, Registry], docker_engine: docker.DockerClient,
        tmp_path: Path) -> None:
    open_registry, _ = registries
    old, recent = f"{open_registry.host}/team/old:1", f"{open_registry.host}/team/recent:1"
    for image, version in ((old, "o1"), (recent, "r1")):
        build_image(docker_engine, image, version)
        open_registry.push(docker_engine, image)
        remove_image(docker_engine, image)
    # the disk is always "low" here; an image unused for 2 s may go
    fleet.start_worker(slots=1, DSTACK_IMAGE_MIN_FREE="1000000TB", DSTACK_IMAGE_MAX_AGE="2")
    assert run(fleet, project_with(tmp_path / "old", [{"image": old, "commands": ["cat /version"]}]))[0] == 0
    assert present(docker_engine, old)  # just used
    project = project_with(tmp_path / "recent", [{"image": recent, "commands": ["sleep 3", "cat /version"]}])
    assert run(fleet, project)[0] == 0
    # at the end of the second job: the first image was unused for over 2 s and goes; the second was just used;
    # the base image, which the worker did not pull, stays
    assert not present(docker_engine, old)
    assert present(docker_engine, recent) and present(docker_engine, BASE_IMAGE)
    assert "removed image" in fleet.logs() and old in fleet.logs()
