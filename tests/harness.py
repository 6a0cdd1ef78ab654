"""Cluster set-ups shared by the fixtures (tests/conftest.py, tests/faults/conftest.py) and by tests
that build a cluster of their own. No pytest here: conftest files hold only fixtures and hooks."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from tests.s3server import MotoServer
from tests.services import Cluster, Vhost

#: Seconds of silence after which the scheduler counts a worker lost, in the tests of tests/faults/.
WORKER_TIMEOUT = 6


def storage_env(s3: MotoServer, bucket: str) -> dict[str, str]:
    """The environment of a cluster that keeps its storage in ``bucket`` (made here) of the S3 server."""
    s3.create_bucket(bucket)
    return {**s3.env(), "DSTACK_STORAGE_URL": f"s3://{bucket}/dstack"}


def start_cluster(root: Path, broker_url: str, storage_env: dict[str, str], **worker_options: object) -> Cluster:
    """A scheduler and one worker; on failure, everything started is stopped and the logs are shown."""
    cluster = Cluster(root, broker_url, storage_env)
    try:
        cluster.start_scheduler()
        cluster.start_worker(**worker_options)  # type: ignore[arg-type]
    except BaseException:
        cluster.stop()
        raise AssertionError("the cluster did not start:\n" + cluster.logs()) from None
    return cluster


@contextlib.contextmanager
def scheduler_only(root: Path, s3: MotoServer, env: Optional[dict[str, str]] = None,
                   **scheduler_env: str) -> Iterator[Cluster]:
    """A cluster of its own (own vhost and bucket) with a scheduler and no worker yet: its tests start
    the workers they need. Everything is stopped and deleted on exit."""
    host = Vhost()
    cluster = Cluster(root, host.url, storage_env(s3, f"dstack-{host.name[-8:]}"))
    cluster.env.update(env or {})
    try:
        cluster.start_scheduler(**scheduler_env)
        yield cluster
    finally:
        cluster.stop()
        host.delete()
