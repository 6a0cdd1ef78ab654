"""A scheduler that counts a worker lost after a few seconds of silence, and workers that report
every second; each test starts the workers it needs and kills what it must."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import docker
import pytest

from tests.conftest import scheduler_only
from tests.s3server import MotoServer
from tests.services import Cluster

#: Seconds of silence after which the scheduler counts a worker lost, in these tests.
WORKER_TIMEOUT = 6


@pytest.fixture
def fleet(tmp_path: Path, s3: MotoServer, docker_engine: docker.DockerClient) -> Iterator[Cluster]:
    with scheduler_only(tmp_path / "fleet", s3, env={"DSTACK_HEARTBEAT_INTERVAL": "1"},
                        DSTACK_WORKER_TIMEOUT=str(WORKER_TIMEOUT)) as cluster:
        yield cluster
