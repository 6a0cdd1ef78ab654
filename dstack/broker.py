"""Talking to RabbitMQ, all in one module: connections, the Dramatiq broker and its encoding,
declaring queues with their dead-letter queues, publishing, and trying again after the broker
went away.

The rest of dstack builds on these primitives. pika's and Dramatiq's connection errors are
handled here only: they become :class:`~dstack.errors.BrokerUnavailable`, or are what
:func:`retry` rides out (:func:`connection_errors`).

Dramatiq is imported only by what uses it (:func:`make_broker`, :func:`consumer`, :func:`enqueue`, ...,
and the names :class:`MsgpackEncoder`, :data:`DramatiqConnectionError` and :data:`CONNECTION_ERRORS`, made
when first imported): the CLI talks to the scheduler with pika alone and does not pay for loading Dramatiq.
"""
from __future__ import annotations

import functools
import logging
import random
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, TypeVar


def _skip_pika_asyncio_adapter() -> None:
    """Keep pika from loading asyncio, which dstack does not use (~15 ms of every command's start).

    ``pika/adapters/__init__.py`` imports every adapter, the asyncio one (and so asyncio) included; dstack uses the
    blocking one only (Dramatiq too). Unless asyncio is loaded already, the asyncio adapter's module is a
    placeholder whose ``AsyncioConnection`` says what to do if anything ever asks for it.
    """
    name = "pika.adapters.asyncio_connection"
    if "asyncio" in sys.modules or name in sys.modules:
        return

    class AsyncioConnection:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("dstack keeps pika's asyncio adapter unloaded (dstack/broker.py); import asyncio "
                              "before dstack.broker to use it")

    placeholder = types.ModuleType(name, "A placeholder: see dstack.broker._skip_pika_asyncio_adapter.")
    placeholder.AsyncioConnection = AsyncioConnection  # type: ignore[attr-defined]
    sys.modules[name] = placeholder


_skip_pika_asyncio_adapter()

import pika  # noqa: E402  (after the placeholder above)
from pika.adapters.blocking_connection import BlockingChannel  # noqa: E402
from pika.adapters.utils.connection_workflow import AMQPConnectorException  # noqa: E402

from dstack import defaults  # noqa: E402
from dstack.errors import BrokerUnavailable, MessageError  # noqa: E402
from dstack.messages import pack, to_payload, unpack  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A blocking pika connection and one of its channels (one thread uses them).
Connection = pika.BlockingConnection
Channel = BlockingChannel

#: pika's error for a connection or channel that broke (or was closed).
AMQPError = pika.exceptions.AMQPError
#: The broker closed a channel (its ``reply_code`` says why: 403 refused, 404 not found, 406 precondition).
ChannelClosed = pika.exceptions.ChannelClosedByBroker

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    #: Dramatiq's error for a broker connection that failed or broke (``ConnectionError`` in older releases).
    DramatiqConnectionError: type[Exception]
    #: Errors that mean the broker went away (or was never there), Dramatiq's included.
    CONNECTION_ERRORS: tuple[type[BaseException], ...]

    class MsgpackEncoder(dramatiq.Encoder):
        """Dramatiq encoder: Dramatiq's message envelope, msgpack-encoded, with a size limit."""

        def encode(self, data: dramatiq.encoder.MessageData) -> bytes: ...

        def decode(self, data: bytes) -> dramatiq.encoder.MessageData: ...


def connection_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the broker went away (or was never there): what :func:`retry` tries again after.
    Dramatiq's connection error is one of them once Dramatiq is loaded; before, nothing can raise it."""
    if "dramatiq" in sys.modules:
        return _dramatiq_part()["CONNECTION_ERRORS"]
    return (BrokerUnavailable, AMQPError)


# ----------------------------------------------------------------------------- connections


def connection_parameters(url: str, *, heartbeat: int = 30) -> pika.URLParameters:
    """pika parameters for ``url`` with short connect timeouts and a heartbeat (seconds)."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.socket_timeout = defaults.BROKER_CONNECT_TIMEOUT
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    return params


def describe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or 5672
    return f"amqp://{host}:{port}{parts.path or '/'}"


def account(url: str) -> str:
    """The RabbitMQ user ``url`` connects as (``guest`` when the URL names none, as pika does)."""
    return str(getattr(pika.URLParameters(url).credentials, "username", "guest"))


def connect(url: str) -> Connection:
    """A blocking pika connection to ``url``.

    Raises:
        BrokerUnavailable: RabbitMQ does not accept the connection; the message says where.
    """
    try:
        return pika.BlockingConnection(connection_parameters(url))
    except (AMQPError, AMQPConnectorException) as e:
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {describe(url)} ({type(e).__name__}{': ' + str(e) if str(e) else ''}); "
            "start it (`rabbitmq-server -detached`) or set DSTACK_BROKER_URL") from None


def close_quietly(connection: Optional[Connection]) -> None:
    """Close ``connection``; one the broker already dropped is closed enough."""
    if connection is None:
        return
    try:
        connection.close()
    except AMQPError:
        pass


def call_threadsafe(connection: Optional[Connection], callback: Callable[[], None]) -> None:
    """Run ``callback`` on the thread that uses ``connection``, at its next wait for data. Safe to
    call from any thread; a connection that is gone ignores it."""
    if connection is None:
        return
    try:
        connection.add_callback_threadsafe(callback)
    except AMQPError:
        pass


def publish(channel: Channel, exchange: str, routing_key: str, body: bytes, *,
            correlation_id: Optional[str] = None, reply_to: Optional[str] = None,
            expires_in: Optional[float] = None, user_id: Optional[str] = None) -> None:
    """Publish ``body`` as a transient message (no publisher confirm: for requests, replies and
    live notifications, where the sender finds out otherwise). RabbitMQ drops it when nobody
    consumed it within ``expires_in`` seconds. ``user_id``, the connection's own user, is checked by
    RabbitMQ (which closes the channel when it is not), so the receiver knows who sent it."""
    properties = pika.BasicProperties(
        delivery_mode=1, correlation_id=correlation_id, reply_to=reply_to, user_id=user_id,
        expiration=None if expires_in is None else str(int(expires_in * 1000)))
    channel.basic_publish(exchange, routing_key, body, properties)


class Delivery(NamedTuple):
    """A message as :func:`consume` hands it over."""

    tag: int
    exchange: str
    body: bytes
    reply_to: Optional[str]
    correlation_id: Optional[str]
    #: the sender's RabbitMQ user, as RabbitMQ checked it (``None``: the sender did not say)
    user_id: Optional[str] = None


def consume(channel: Channel, queue_name: str, *, timeout: float, auto_ack: bool = False
            ) -> Iterator[Optional[Delivery]]:
    """The messages of ``queue_name``, and ``None`` after each ``timeout`` seconds without one.
    Ends when RabbitMQ cancels the consumer; raises :data:`AMQPError` when the connection breaks."""
    for method, properties, body in channel.consume(queue_name, auto_ack=auto_ack, inactivity_timeout=timeout):
        if method is None or properties is None or body is None:
            yield None
        else:
            yield Delivery(method.delivery_tag or 0, method.exchange or "", body, properties.reply_to,
                           properties.correlation_id, properties.user_id)


# ----------------------------------------------------------------------------- Dramatiq


@functools.cache
def _dramatiq_part() -> dict[str, Any]:
    """The names of this module that need Dramatiq, made on first use (see :func:`__getattr__`)."""
    import dramatiq

    class MsgpackEncoder(dramatiq.Encoder):
        """Dramatiq encoder: Dramatiq's message envelope, msgpack-encoded, with a size limit."""

        def encode(self, data: dramatiq.encoder.MessageData) -> bytes:
            return pack(data)

        def decode(self, data: bytes) -> dramatiq.encoder.MessageData:
            try:
                return unpack(data)
            except MessageError as e:
                raise dramatiq.DecodeError(str(e), data, e) from None

    MsgpackEncoder.__qualname__ = "MsgpackEncoder"
    connection_error: type[Exception] = (getattr(dramatiq.errors, "BrokerConnectionError", None)
                                         or dramatiq.errors.ConnectionError)
    return {"MsgpackEncoder": MsgpackEncoder, "DramatiqConnectionError": connection_error,
            "CONNECTION_ERRORS": (BrokerUnavailable, AMQPError, connection_error)}


def __getattr__(name: str) -> Any:
    """:class:`MsgpackEncoder`, :data:`DramatiqConnectionError` and :data:`CONNECTION_ERRORS`, which import
    Dramatiq, when first asked for (PEP 562)."""
    part = _dramatiq_part() if name in ("MsgpackEncoder", "DramatiqConnectionError", "CONNECTION_ERRORS") else {}
    if name not in part:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = part[name]
    return part[name]


def make_broker(url: str) -> RabbitmqBroker:
    """The Dramatiq broker every dstack service uses, also made the global one.

    Messages are msgpack-encoded, queues durable, messages persistent and publishes
    confirmed by RabbitMQ. The only middleware is what the actors use: ``Retries``
    (``max_retries``, ``throws``) and ``TimeLimit`` (``time_limit``). Dramatiq's other
    defaults act on options no dstack actor or message sets (``max_age``,
    ``notify_shutdown``, ``on_success``/``on_failure``, ``pipe_target``), so they are left
    out, and Dramatiq refuses an actor that asks for one. Nothing connects until first used.
    """
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.middleware import Retries, TimeLimit

    dramatiq.set_encoder(_dramatiq_part()["MsgpackEncoder"]())
    middleware = [TimeLimit(), Retries(max_retries=3, min_backoff=1000, max_backoff=30_000)]
    broker = RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    dramatiq.set_broker(broker)
    return broker


def consumer(broker: dramatiq.Broker, handler: Callable[[Any], None], *, queue_name: str, actor_name: str,
             threads: int, **options: Any) -> dramatiq.Worker:
    """Make ``handler`` the Dramatiq actor ``actor_name`` on ``queue_name`` (``options``: its
    ``max_retries``, ``time_limit``, ``throws``) and return a Dramatiq worker with ``threads``
    threads consuming that queue; it connects once started."""
    import dramatiq

    dramatiq.actor(broker=broker, actor_name=actor_name, queue_name=queue_name, **options)(handler)
    return dramatiq.Worker(broker, queues={queue_name}, worker_threads=threads)


def declare_queue(broker: dramatiq.Broker, queue_name: str) -> None:
    """Create ``queue_name`` on RabbitMQ now, durable, with the delay queue and the dead-letter
    queue (``QUEUE.XQ``) Dramatiq gives it, so that a plain consumer finds the queue Dramatiq's
    publishers expect. Another broker (Dramatiq's ``StubBroker`` in tests) declares it its way.

    Raises:
        BrokerUnavailable: RabbitMQ refused or dropped the connection.
    """
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    try:
        if isinstance(broker, RabbitmqBroker):
            broker.declare_queue(queue_name, ensure=True)
        else:
            broker.declare_queue(queue_name)
    except _dramatiq_part()["DramatiqConnectionError"] as e:
        raise BrokerUnavailable(f"cannot declare queue {queue_name}: {e}") from None


def enqueue(broker: dramatiq.Broker, queue_name: str, actor_name: str, payload: Any) -> None:
    """Enqueue ``payload`` (plain data) for the Dramatiq actor ``actor_name`` on ``queue_name``;
    returns once RabbitMQ confirmed it. Raises Dramatiq's connection error as it comes."""
    import dramatiq

    broker.declare_queue(queue_name)
    broker.enqueue(dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=(payload,),
                                    kwargs={}, options={}))


def send(broker: dramatiq.Broker, queue_name: str, actor_name: str, message: Any) -> None:
    """Enqueue a typed ``message`` for the Dramatiq actor ``actor_name`` on ``queue_name``.

    Raises:
        BrokerUnavailable: RabbitMQ refused or dropped the connection.
    """
    try:
        enqueue(broker, queue_name, actor_name, to_payload(message))
    except _dramatiq_part()["DramatiqConnectionError"] as e:
        raise BrokerUnavailable(f"cannot publish to RabbitMQ: {e}") from None


def task_payload(body: bytes) -> Any:
    """The payload of the Dramatiq message ``body``, as it arrives on a queue a plain consumer
    reads (see ``workers/intake.py``).

    Raises:
        MessageError: ``body`` is no Dramatiq message with a payload.
    """
    import dramatiq

    try:
        return dramatiq.Message.decode(body).args[0]
    except (dramatiq.DecodeError, IndexError) as e:
        raise MessageError(f"not a task message: {e}") from None


# ----------------------------------------------------------------------------- riding out outages


class Backoff:
    """The waits between tries: ``first`` seconds, doubled after each failure up to ``cap``.

    Each wait is shortened by a random part of up to ``jitter`` (a fraction), so that the clients
    that lost the broker together do not all come back at the same moment, and no wait is ever
    longer than ``cap``. :meth:`reset` once connected, so that the next outage starts again from
    ``first``.
    """

    def __init__(self, first: float = defaults.RECONNECT_FIRST_DELAY, cap: float = defaults.RECONNECT_MAX_DELAY,
                 jitter: float = 0.25, *, rand: Callable[[], float] = random.random) -> None:
        self.first, self.cap, self.jitter = first, cap, jitter
        self._rand = rand
        self._next = first

    def next(self) -> float:
        """The wait before the next try, in seconds; the one after will be longer, up to the cap."""
        base = self._next
        self._next = min(base * 2, self.cap)
        return base * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        self._next = self.first


def retry(action: Callable[[], T], *, what: str, stopping: Optional[threading.Event] = None,
          backoff: Optional[Backoff] = None, attempts: Optional[int] = None,
          errors: Optional[tuple[type[BaseException], ...]] = None,
          before_retry: Optional[Callable[[BaseException], None]] = None,
          level: int = logging.WARNING) -> Optional[T]:
    """Call ``action`` until it returns, and return what it returned: the one reconnect loop.

    ``action`` is typically a session (connect, then serve until told to stop) or one send.
    When it raises one of ``errors`` (by default :func:`connection_errors`: the broker went away), the
    error is logged at ``level`` saying ``what`` failed, the next wait of ``backoff`` passes,
    ``before_retry`` gets the error (to make a new connection, say) and ``action`` is called again.

    Returns ``None``, without calling ``action`` (again), once ``stopping`` is set; a wait ends
    as soon as it is set. Any other error propagates, and so does the last one when ``attempts``
    tries failed.
    """
    backoff = backoff or Backoff()
    tries = 0
    while stopping is None or not stopping.is_set():
        try:
            return action()
        except BaseException as e:
            if not isinstance(e, errors if errors is not None else connection_errors()):
                raise
            tries += 1
            if attempts is not None and tries >= attempts:
                raise
            delay = backoff.next()
            log.log(level, "%s (%s); trying again in %.1f s", what, e, delay)
            if stopping is None:
                time.sleep(delay)
            elif stopping.wait(delay):
                return None
            if before_retry is not None:
                before_retry(e)
    return None
