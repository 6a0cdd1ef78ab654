"""Request/reply through a real RabbitMQ (`dstack/rpc.py`): a client that had answers recently sends without
asking whether a scheduler is there, and still learns within about a second that none is, instead of waiting
for its whole timeout."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from dstack.errors import RunNameTaken, SchedulerUnavailable
from dstack.messages import GetRuns, SubmitRun
from dstack.rpc import RpcClient, RpcServer
from tests.services import Vhost

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost() -> Iterator[Vhost]:
    v = Vhost()
    yield v
    v.delete()


def serve(url: str, handler: object) -> tuple[RpcServer, threading.Thread]:
    server = RpcServer(url, handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    return server, thread


def test_a_scheduler_gone_since_the_last_reply_is_named_not_waited_for(vhost: Vhost) -> None:
    server, thread = serve(vhost.url, lambda request, sender: [])
    with RpcClient(vhost.url, timeout=30) as rpc:
        assert rpc.call(GetRuns()) == []
        server.stop()
        thread.join(10)
        # within the 2 s after a reply the request is sent without a check; the slow reply triggers one
        began = time.monotonic()
        with pytest.raises(SchedulerUnavailable, match="no scheduler is running"):
            rpc.call(GetRuns())
        assert time.monotonic() - began < 10  # told within about a second, not after its 30 s timeout


def test_a_refusal_keeps_its_kind_across_the_wire(vhost: Vhost) -> None:
    def refuse(request: object, sender: str) -> None:
        raise RunNameTaken("a run named 'x' exists already")

    server, thread = serve(vhost.url, refuse)
    try:
        with RpcClient(vhost.url, timeout=30) as rpc:
            with pytest.raises(RunNameTaken, match="exists already"):
                rpc.call(SubmitRun(run_name="x", workflow="w", workflows=[], snapshot_id="s", submitted_at=1.0))
    finally:
        server.stop()
        thread.join(10)
