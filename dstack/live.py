"""Live notifications over RabbitMQ topic exchanges: log chunks and status updates.

They are a convenience for followers (``dstack run``, ``dstack logs -f``): transient and
best effort. The durable record is in storage (logs) and in the scheduler (status).
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from typing import Optional

from dstack import defaults
from dstack.broker import (
    AMQPError,
    Backoff,
    Channel,
    ChannelClosed,
    Connection,
    account,
    close_quietly,
    connect,
    consume,
    publish,
    retry,
)
from dstack.errors import BrokerUnavailable, SchedulerUnavailable
from dstack.names import LOGS_EXCHANGE, UPDATES_EXCHANGE, live_routing_key, user_queue

log = logging.getLogger(__name__)

#: Notifications buffered while the broker is away; older ones are dropped past this.
BUFFER = 10_000


def declare_exchanges(channel: Channel) -> None:
    """Declare the exchanges of live notifications (the scheduler at its start, workers before they publish; a
    user's account may not, and need not)."""
    for exchange in (LOGS_EXCHANGE, UPDATES_EXCHANGE):
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)


class Publisher:
    """Publishes notifications from any thread through one background connection, made when
    the first notification is published (so building one connects to nothing)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._queue: queue.Queue[Optional[tuple[str, str, bytes]]] = queue.Queue(BUFFER)
        self._pending: Optional[tuple[str, str, bytes]] = None
        self._backoff = Backoff(cap=defaults.CONSUMER_RECONNECT_MAX_DELAY)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-publisher", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((exchange, routing_key, body))
        except queue.Full:
            log.warning("live notifications are backing up; dropping one for %s", routing_key)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is buffered (waiting up to ``timeout`` seconds), then disconnect."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return  # nothing was ever published
        self._queue.put(None)
        thread.join(timeout)

    def _run(self) -> None:
        retry(self._publish_all, what="live publisher lost the broker", backoff=self._backoff)

    def _publish_all(self) -> None:
        """Publish on one connection until :meth:`close`; what was taken but not sent when the
        connection broke is sent first on the next one."""
        connection = connect(self._url)
        try:
            channel = connection.channel()
            declare_exchanges(channel)
            self._backoff.reset()
            while True:
                item = self._pending or self._queue.get()
                if item is None:
                    return
                self._pending = item
                publish(channel, *item)
                self._pending = None
        finally:
            close_quietly(connection)


class Subscription:
    """A private queue receiving the live notifications of one run of ``owner`` (logs and updates), named after
    the broker account (``dstack.user.ACCOUNT.*``: the only queues a user's account may declare and read)."""

    def __init__(self, url: str, owner: str, run_name: str) -> None:
        self._url = url
        self._routing_key = live_routing_key(owner, run_name)
        self._connect()

    def _connect(self) -> None:
        self._connection: Connection = connect(self._url)
        try:
            self._channel = self._connection.channel()
            self._queue = user_queue(account(self._url), f"follow-{uuid.uuid4().hex}")
            self._channel.queue_declare(self._queue, exclusive=True, auto_delete=True)
            for exchange in (LOGS_EXCHANGE, UPDATES_EXCHANGE):
                self._channel.queue_bind(self._queue, exchange, routing_key=self._routing_key)
        except ChannelClosed as e:
            close_quietly(self._connection)
            if e.reply_code == 404:  # the exchanges are declared by the scheduler when it starts
                raise SchedulerUnavailable("no scheduler has run on this broker yet; start one with `dstack up` "
                                           "or `dstack scheduler`") from None
            raise
        except AMQPError:
            close_quietly(self._connection)
            raise

    def get(self, timeout: float) -> Optional[tuple[str, bytes]]:
        """The next ``(exchange, body)``, or ``None`` after ``timeout`` seconds.

        Raises:
            BrokerUnavailable: the connection broke; notifications may have been missed,
                so the caller should re-read the durable state after :meth:`reconnect`.
        """
        try:
            for delivery in consume(self._channel, self._queue, timeout=timeout, auto_ack=True):
                if delivery is None:
                    return None
                return delivery.exchange, delivery.body
        except AMQPError as e:
            raise BrokerUnavailable(f"lost the broker while following: {e!r}") from None
        return None

    def reconnect(self) -> None:
        """Subscribe again on a new connection, waiting for the broker as long as it takes."""
        self.close()
        retry(self._connect, what="following lost the broker", backoff=Backoff(first=1.0, cap=2.0),
              level=logging.DEBUG)

    def close(self) -> None:
        close_quietly(self._connection)
