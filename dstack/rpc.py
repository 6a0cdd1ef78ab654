"""Request/reply over RabbitMQ: how the CLI and the workers ask the scheduler things.

Requests go to the durable ``dstack.rpc`` queue (through the ``dstack.requests`` exchange, the one
thing a user's broker account may publish to) as transient messages that expire with the caller's
timeout, so a request nobody answered in time is dropped rather than acted on late. Each names its
sender in the ``user_id`` property, which RabbitMQ checks against the connection's account: the
scheduler knows who asks without a token of its own. Replies come back through RabbitMQ's direct
reply-to.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Optional

from dstack import defaults
from dstack.broker import (
    AMQPError,
    Backoff,
    ChannelClosed,
    account,
    close_quietly,
    connect,
    consume,
    describe,
    publish,
    retry,
)
from dstack.errors import (
    REJECTIONS,
    BrokerUnavailable,
    DstackError,
    MessageError,
    RequestRejected,
    SchedulerUnavailable,
)
from dstack.live import declare_exchanges
from dstack.messages import decode, encode, pack, plain, unpack
from dstack.names import REPLY_TO_QUEUE, REQUESTS_EXCHANGE, RPC_QUEUE
from dstack.views import decode_reply

log = logging.getLogger(__name__)

#: Seconds after a reply during which a request is sent without first asking the broker whether a scheduler
#: consumes requests (one round trip fewer per request: a worker claims a task on a chain's critical path).
SCHEDULER_SEEN_FOR = 2.0
#: Seconds a reply may take before the broker is asked whether a scheduler still consumes requests (and then
#: again every as many seconds): a scheduler that went away is told within about that, not after the timeout.
SLOW_REPLY = 1.0


class RpcClient:
    """Sends requests to the scheduler and waits for the replies.

    Args:
        url: the broker's AMQP URL.
        timeout: seconds to wait for each reply.

    Raises:
        BrokerUnavailable: RabbitMQ cannot be reached.
    """

    def __init__(self, url: str, *, timeout: float = defaults.RPC_TIMEOUT) -> None:
        self._url = url
        self._timeout = timeout
        #: the broker account requests are sent as
        self.user = account(url)
        self._replies: dict = {}
        self._answered_at = float("-inf")
        self._lock = threading.RLock()
        self._connect()

    def _connect(self) -> None:
        self._connection = connect(self._url)
        self._open_channel()

    def _open_channel(self) -> None:
        """A channel on the connection, consuming the replies (direct reply-to)."""
        self._channel = self._connection.channel()
        self._channel.basic_consume(REPLY_TO_QUEUE, self._on_reply, auto_ack=True)

    def _reconnect(self, error: BaseException) -> None:
        close_quietly(self._connection)
        self._connect()

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._replies[properties.correlation_id] = body

    def call(self, request: Any) -> Any:
        """Send ``request`` (a message from :mod:`dstack.messages`) and return the reply's result.

        Raises:
            SchedulerUnavailable: no scheduler consumes requests, or none answered in time.
            RequestRejected: the scheduler refused the request; the message says why.
        """
        with self._lock:  # one request at a time: threads may share a client (storage's presigned URLs)
            return self._call(request)

    def _call(self, request: Any) -> Any:
        correlation_id = uuid.uuid4().hex
        try:
            # the broker dropped a connection left idle (a long `dstack run` follows its run on
            # another one), or broke it during an earlier call: the request was not sent, so
            # sending it once more on a new connection is safe
            retry(lambda: self._send(request, correlation_id), what="the request connection is gone",
                  attempts=2, errors=(AMQPError,), backoff=Backoff(first=0.0), before_retry=self._reconnect,
                  level=logging.DEBUG)
            now = time.monotonic()
            deadline, next_check = now + self._timeout, now + SLOW_REPLY
            while correlation_id not in self._replies:
                now = time.monotonic()
                if now >= deadline:
                    self.check_scheduler()  # it went away since its last reply: say so
                    raise SchedulerUnavailable(
                        f"the scheduler did not answer within {self._timeout:.0f} s "
                        f"(broker {describe(self._url)}); is it running and healthy?")
                if now >= next_check:  # a slow reply: is a scheduler still there?
                    self.check_scheduler()
                    next_check = now + SLOW_REPLY
                self._connection.process_data_events(time_limit=min(deadline - now, next_check - now, 0.5))
        except AMQPError as e:
            raise BrokerUnavailable(f"lost the connection to RabbitMQ at {describe(self._url)}: {e!r}") from None
        self._answered_at = time.monotonic()
        reply = unpack(self._replies.pop(correlation_id))
        if not reply.get("ok"):
            rejection = REJECTIONS.get(reply.get("kind") or "", RequestRejected)
            raise rejection(reply.get("error") or "the scheduler refused the request")
        return decode_reply(request, reply.get("result"))  # the reply type of the request (dstack.views)

    def _send(self, request: Any, correlation_id: str) -> None:
        if time.monotonic() - self._answered_at > SCHEDULER_SEEN_FOR:
            self.check_scheduler()
        publish(self._channel, REQUESTS_EXCHANGE, RPC_QUEUE, encode(request), reply_to=REPLY_TO_QUEUE,
                correlation_id=correlation_id, expires_in=self._timeout, user_id=self.user)

    def check_scheduler(self) -> None:
        """Raise :class:`SchedulerUnavailable` when no scheduler consumes requests."""
        try:
            queue = self._channel.queue_declare(RPC_QUEUE, passive=True)  # a user's account may only look
        except ChannelClosed as e:
            if e.reply_code != 404:
                raise
            self._open_channel()  # the broker closed the one that asked
            queue = None
        if queue is None or queue.method.consumer_count == 0:
            raise SchedulerUnavailable(
                f"no scheduler is running on the broker at {describe(self._url)}; "
                "start one with `dstack up` (single machine) or `dstack scheduler`")

    def close(self) -> None:
        close_quietly(self._connection)

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RpcServer:
    """Answers requests from ``dstack.rpc`` with ``handler`` until :meth:`stop`.

    ``handler(request, sender)`` gets the decoded request and the broker account that sent it (checked by
    RabbitMQ) and returns plain data; raising :class:`~dstack.errors.RequestRejected` sends its message back
    as the error. A request that names no sender is refused unread. Reconnects by itself when the broker goes
    away.
    """

    def __init__(self, url: str, handler: Callable[[Any, str], Any]) -> None:
        self._url = url
        self._handler = handler
        self._stopping = threading.Event()
        self._backoff = Backoff(cap=defaults.CONSUMER_RECONNECT_MAX_DELAY)
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def serve_forever(self) -> None:
        retry(self._serve, what="request server lost the broker", stopping=self._stopping, backoff=self._backoff)

    def _serve(self) -> None:
        """One connection's worth of serving; returns once stopped."""
        connection = connect(self._url)
        try:
            channel = connection.channel()
            channel.queue_declare(RPC_QUEUE, durable=True)
            channel.exchange_declare(REQUESTS_EXCHANGE, exchange_type="direct", durable=True)
            channel.queue_bind(RPC_QUEUE, REQUESTS_EXCHANGE, routing_key=RPC_QUEUE)
            declare_exchanges(channel)  # of live notifications, which users' accounts may not declare
            channel.basic_qos(prefetch_count=32)
            self._backoff.reset()
            self.ready.set()
            for delivery in consume(channel, RPC_QUEUE, timeout=0.5):
                if self._stopping.is_set():
                    return
                if delivery is None:
                    continue
                reply = self._answer(delivery.body, delivery.user_id)
                if delivery.reply_to:
                    publish(channel, "", delivery.reply_to, pack(reply), correlation_id=delivery.correlation_id)
                channel.basic_ack(delivery.tag)
            raise BrokerUnavailable("RabbitMQ cancelled the request consumer")
        finally:
            self.ready.clear()
            close_quietly(connection)

    def _answer(self, body: bytes, sender: Optional[str]) -> dict:
        if not sender:
            return {"ok": False, "error": "a request must name its sender (the AMQP user_id property, which RabbitMQ "
                                          "checks); upgrade this dstack client", "kind": "NotAllowed"}
        try:
            return {"ok": True, "result": plain(self._handler(decode(body), sender))}
        except RequestRejected as e:
            return {"ok": False, "error": str(e), "kind": type(e).__name__}
        except MessageError as e:
            return {"ok": False, "error": str(e)}
        except DstackError as e:
            log.exception("request failed")
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug: say so, keep serving
            log.exception("request failed")
            return {"ok": False, "error": f"internal error in the scheduler: {e!r}"}
