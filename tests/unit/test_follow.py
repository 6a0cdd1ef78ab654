"""dstack.cli.follow: a follower asks again while the scheduler is away (after a restart of the
broker it may be back before the scheduler's request server), and gives up after a while."""
from __future__ import annotations

from typing import Any

import pytest

from dstack.cli import follow
from dstack.errors import BrokerUnavailable, RequestRejected, SchedulerUnavailable
from dstack.messages import GetRuns
from dstack.states import Status
from dstack.views import RunView

RUN = RunView(run_name="witty-otter-1234", workflow="train", status=Status.RUNNING)


class FlakyScheduler:
    """An RpcClient whose first ``failures`` calls raise ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def call(self, request: Any) -> list[RunView]:
        assert isinstance(request, GetRuns)
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return [RUN]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dstack.broker.time.sleep", lambda seconds: None)


@pytest.mark.parametrize("error", [SchedulerUnavailable("no scheduler is running"), BrokerUnavailable("gone")])
def test_a_refresh_asks_again_while_the_scheduler_is_away(error: Exception) -> None:
    rpc = FlakyScheduler(failures=3, error=error)
    assert follow._refresh_patiently(rpc, RUN.run_name, {}, None) == RUN  # type: ignore[arg-type]
    assert rpc.calls == 4


def test_a_refresh_gives_up_after_its_attempts() -> None:
    rpc = FlakyScheduler(failures=follow.FOLLOW_ATTEMPTS, error=SchedulerUnavailable("no scheduler is running"))
    with pytest.raises(SchedulerUnavailable):
        follow._refresh_patiently(rpc, RUN.run_name, {}, None)  # type: ignore[arg-type]
    assert rpc.calls == follow.FOLLOW_ATTEMPTS


def test_a_refused_request_is_not_asked_again() -> None:
    rpc = FlakyScheduler(failures=1, error=RequestRejected("no run named 'witty-otter-1234'"))
    with pytest.raises(RequestRejected):
        follow._refresh_patiently(rpc, RUN.run_name, {}, None)  # type: ignore[arg-type]
    assert rpc.calls == 1
