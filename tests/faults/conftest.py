"""A scheduler that counts a worker lost after a few seconds of silence, and workers that report
every second; each test starts the workers it needs and kills what it must."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.harness import WORKER_TIMEOUT, scheduler_only
from tests.s3server import MotoServer
from tests.services import Cluster


@pytest.fixture
def fleet(tmp_path: Path, s3: MotoServer, docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    with scheduler_only(tmp_path / "fleet", s3, env={"DSTACK_HEARTBEAT_INTERVAL": "1"},
                        DSTACK_WORKER_TIMEOUT=str(WORKER_TIMEOUT)) as cluster:
        yield cluster
