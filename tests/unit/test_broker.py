"""The AMQP layer without a broker: the one reconnect loop (backoff, jitter, stopping, what
propagates), the middleware the services install, and objects that connect only once used."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Optional

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Retries, TimeLimit

from dstack.broker import Backoff, make_broker, retry, task_payload
from dstack.errors import BrokerUnavailable, MessageError, SchedulerUnavailable, ServiceUnavailable
from dstack.live import Publisher
from dstack.messages import pack
from dstack.workers import events
from dstack.workers.events import EventSender

#: Nothing listens here: whatever tries to connect fails at once.
NOWHERE = "amqp://guest:guest@127.0.0.1:1/%2F"


class Flaky:
    """An action that fails ``failures`` times with ``error``, then returns ``result``."""

    def __init__(self, failures: int, error: Optional[BaseException] = None, result: Any = "done",
                 on_call: Any = None) -> None:
        self.failures, self.result, self.on_call = failures, result, on_call
        self.error = error or BrokerUnavailable("down")
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        if self.calls <= self.failures:
            raise self.error
        return self.result


def no_wait() -> Backoff:
    return Backoff(first=0.0, cap=0.0)


# ----------------------------------------------------------------------------- backoff


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_reset() -> None:
    backoff = Backoff(first=0.5, cap=4.0, jitter=0.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize("rand, factor", [(0.0, 1.0), (0.5, 0.875), (0.999999, 0.75)])
def test_jitter_shortens_each_wait_by_at_most_its_fraction(rand: float, factor: float) -> None:
    backoff = Backoff(first=2.0, cap=8.0, jitter=0.25, rand=lambda: rand)
    for base in (2.0, 4.0, 8.0, 8.0):
        assert backoff.next() == pytest.approx(base * factor, rel=1e-5)


def test_random_jitter_stays_within_bounds_and_varies() -> None:
    waits = [Backoff(first=1.0, cap=1.0, jitter=0.25).next() for _ in range(200)]
    assert all(0.75 <= wait <= 1.0 for wait in waits)  # never longer than the cap
    assert len(set(waits)) > 100  # clients that lost the broker together come back apart


# ----------------------------------------------------------------------------- retry


def test_retry_returns_what_the_action_returns_once_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    action = Flaky(3)
    with caplog.at_level(logging.WARNING, logger="dstack.broker"):
        assert retry(action, what="the test lost the broker", backoff=no_wait()) == "done"
    assert action.calls == 4
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["the test lost the broker"] * 3


def test_retry_rides_out_every_kind_of_connection_error() -> None:
    for error in (BrokerUnavailable("down"), pika.exceptions.StreamLostError("reset"),
                  pika.exceptions.ChannelWrongStateError("closed"), dramatiq.errors.ConnectionClosed(OSError())):
        action = Flaky(1, error)
        assert retry(action, what="test", backoff=no_wait()) == "done"
        assert action.calls == 2


@pytest.mark.parametrize("error", [ValueError("a bug"), SchedulerUnavailable("no scheduler"),
                                   MessageError("bad message")])
def test_errors_that_are_not_connection_errors_propagate_at_once(error: Exception) -> None:
    action = Flaky(1, error)
    with pytest.raises(type(error)):
        retry(action, what="test", backoff=no_wait())
    assert action.calls == 1


def test_the_errors_to_retry_can_be_widened() -> None:
    action = Flaky(2, SchedulerUnavailable("no scheduler"))
    assert retry(action, what="test", backoff=no_wait(), errors=(ServiceUnavailable,)) == "done"
    assert action.calls == 3


def test_retry_stops_when_asked_between_tries() -> None:
    stopping = threading.Event()
    action = Flaky(100, on_call=lambda calls: calls == 3 and stopping.set())
    assert retry(action, what="test", stopping=stopping, backoff=no_wait()) is None
    assert action.calls == 3


def test_retry_stops_from_another_thread_during_a_wait() -> None:
    stopping = threading.Event()
    action = Flaky(100)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(
        retry(action, what="test", stopping=stopping, backoff=Backoff(first=60.0))))
    thread.start()
    threading.Timer(0.2, stopping.set).start()
    thread.join(5)
    assert not thread.is_alive() and result == [None] and action.calls == 1


def test_retry_does_not_start_once_stopped() -> None:
    stopping = threading.Event()
    stopping.set()
    action = Flaky(0)
    assert retry(action, what="test", stopping=stopping) is None
    assert action.calls == 0


def test_with_attempts_the_last_error_propagates_and_each_retry_is_prepared() -> None:
    action = Flaky(5, pika.exceptions.StreamLostError("reset"))
    prepared: list[BaseException] = []
    with pytest.raises(pika.exceptions.StreamLostError):
        retry(action, what="test", attempts=2, backoff=no_wait(), before_retry=prepared.append)
    assert action.calls == 2 and len(prepared) == 1  # reconnected once, not after the last failure


def test_an_error_while_preparing_a_retry_propagates() -> None:
    def reconnect(error: BaseException) -> None:
        raise BrokerUnavailable("still down")

    with pytest.raises(BrokerUnavailable, match="still down"):
        retry(Flaky(1, pika.exceptions.StreamLostError("reset")), what="test", attempts=2, backoff=no_wait(),
              before_retry=reconnect)


# ----------------------------------------------------------------------------- Dramatiq


@pytest.fixture
def restore_dramatiq_globals() -> Iterator[None]:
    broker, encoder = dramatiq.broker.global_broker, dramatiq.get_encoder()
    yield
    dramatiq.broker.global_broker = broker
    dramatiq.set_encoder(encoder)


def test_the_broker_installs_only_the_middleware_the_actors_use(restore_dramatiq_globals: None) -> None:
    broker = make_broker(NOWHERE)  # connects to nothing until used
    assert isinstance(broker, RabbitmqBroker)
    assert [type(m) for m in broker.middleware] == [TimeLimit, Retries]
    # the options dstack's actors set are accepted...
    dramatiq.actor(lambda payload: None, broker=broker, actor_name="t", queue_name="dstack-test",
                   max_retries=5, time_limit=60_000, throws=(MessageError,))
    # ...and options of the middleware left out are refused, so nothing can rely on it unnoticed
    for option in ({"max_age": 1000}, {"on_success": "t"}, {"pipe_ignore": True}, {"notify_shutdown": True}):
        with pytest.raises(ValueError):
            dramatiq.actor(lambda payload: None, broker=broker, actor_name="u", queue_name="dstack-test", **option)


def test_a_task_payload_is_read_from_a_dramatiq_message(restore_dramatiq_globals: None) -> None:
    make_broker(NOWHERE)
    message = dramatiq.Message(queue_name="q", actor_name="a", args=({"type": "JobTask"},), kwargs={}, options={})
    assert task_payload(message.encode()) == {"type": "JobTask"}
    for body in (b"\x00 not msgpack", pack({"no": "envelope"}),
                 dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}).encode()):
        with pytest.raises(MessageError):
            task_payload(body)


# ----------------------------------------------------------------------------- connecting late


def test_a_publisher_connects_only_once_something_is_published() -> None:
    publisher = Publisher(NOWHERE)
    assert publisher._thread is None
    publisher.close(timeout=0.1)  # nothing to send, nothing to wait for


def test_an_event_sender_starts_its_thread_only_with_the_first_event(restore_dramatiq_globals: None) -> None:
    sender = EventSender(make_broker(NOWHERE))
    assert sender._thread is None
    sender.close()


def test_a_failure_in_the_event_sender_reaches_its_caller_and_the_next_event_is_sent(
        restore_dramatiq_globals: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []

    def fake_send(broker: Any, queue: str, actor: str, event: Any) -> None:
        if event == "bad":
            raise RuntimeError("cannot encode it")
        sent.append(event)

    monkeypatch.setattr(events, "send", fake_send)
    sender = EventSender(make_broker(NOWHERE))
    with pytest.raises(RuntimeError, match="cannot encode it"):
        sender.send("bad")
    sender.send("good")  # the thread lives on: no later send blocks forever
    sender.close()
    assert sent == ["good"]
