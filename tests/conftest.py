"""Fixtures for the real services. A test that needs a missing service fails; it never skips."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.harness import scheduler_only, start_cluster, storage_env
from tests.s3server import MotoServer, start_moto_server
from tests.services import TEST_IMAGE, Cluster, FileServer, Vhost


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"the Docker engine is not reachable ({e}); run scripts/setup.sh")
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {TEST_IMAGE} is missing; run scripts/build-images.sh")
    return client


@pytest.fixture(scope="session")
def vhost() -> Iterator[Vhost]:
    host = Vhost()
    yield host
    host.delete()


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoServer]:
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, vhost: Vhost, s3: MotoServer,
            docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    """One scheduler and one worker (4 slots) shared by the tests that do not kill anything."""
    started = start_cluster(tmp_path_factory.mktemp("cluster"), vhost.url, storage_env(s3, "dstack-shared"))
    yield started
    started.stop()


@pytest.fixture
def private_cluster(tmp_path: Path, s3: MotoServer, docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    """A cluster of its own (own vhost, bucket and home), for tests that kill or restart parts."""
    host = Vhost()
    started = start_cluster(tmp_path / "cluster", host.url, storage_env(s3, f"dstack-{host.name[-8:]}"))
    yield started
    started.stop()
    host.delete()


@pytest.fixture
def fleet(tmp_path: Path, s3: MotoServer, docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    with scheduler_only(tmp_path / "fleet", s3) as cluster:
        yield cluster


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    folder = tmp_path / "www"
    folder.mkdir()
    server = FileServer(folder)
    server.folder = folder  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report shows the logs of the clusters it used."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, Cluster):
                report.sections.append((f"logs of {name}", value.logs()))
