"""Live notifications over RabbitMQ topic exchanges: log chunks and status updates.

They are a convenience for followers (``dstack run``, ``dstack logs -f``): transient and
best effort. The durable record is in storage (logs) and in the scheduler (status).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Optional, Tuple

import pika

from dstack.broker import close_quietly, connect
from dstack.errors import BrokerUnavailable
from dstack.names import LOGS_EXCHANGE, UPDATES_EXCHANGE

log = logging.getLogger(__name__)

#: Notifications buffered while the broker is away; older ones are dropped past this.
BUFFER = 10_000


def declare_exchanges(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    for exchange in (LOGS_EXCHANGE, UPDATES_EXCHANGE):
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)


class Publisher:
    """Publishes notifications from any thread through one background connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._queue: "queue.Queue[Optional[Tuple[str, str, bytes]]]" = queue.Queue(BUFFER)
        self._thread = threading.Thread(target=self._run, name="live-publisher", daemon=True)
        self._thread.start()

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        try:
            self._queue.put_nowait((exchange, routing_key, body))
        except queue.Full:
            log.warning("live notifications are backing up; dropping one for %s", routing_key)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is buffered (waiting up to ``timeout`` seconds), then disconnect."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: Optional[Tuple[str, str, bytes]] = None
        while True:
            try:
                connection = connect(self._url)
                channel = connection.channel()
                declare_exchanges(channel)
                while True:
                    item = pending or self._queue.get()
                    if item is None:
                        connection.close()
                        return
                    pending = item
                    channel.basic_publish(item[0], item[1], item[2])
                    pending = None
            except (BrokerUnavailable, pika.exceptions.AMQPError) as e:
                log.warning("live publisher lost the broker (%s); retrying", e)
                threading.Event().wait(1.0)


class Subscription:
    """A private queue receiving the live notifications of one run (logs and updates)."""

    def __init__(self, url: str, run_name: str) -> None:
        self._url = url
        self._run_name = run_name
        self._connect()

    def _connect(self) -> None:
        self._connection = connect(self._url)
        self._channel = self._connection.channel()
        declare_exchanges(self._channel)
        self._queue = self._channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for exchange in (LOGS_EXCHANGE, UPDATES_EXCHANGE):
            self._channel.queue_bind(self._queue, exchange, routing_key=self._run_name)

    def get(self, timeout: float) -> Optional[Tuple[str, bytes]]:
        """The next ``(exchange, body)``, or ``None`` after ``timeout`` seconds.

        Raises:
            BrokerUnavailable: the connection broke; notifications may have been missed,
                so the caller should re-read the durable state after :meth:`reconnect`.
        """
        try:
            for method, _properties, body in self._channel.consume(self._queue, auto_ack=True,
                                                                   inactivity_timeout=timeout):
                if method is None:
                    return None
                return method.exchange, body
        except pika.exceptions.AMQPError as e:
            raise BrokerUnavailable(f"lost the broker while following: {e!r}") from None
        return None

    def reconnect(self) -> None:
        self.close()
        self._connect()

    def close(self) -> None:
        close_quietly(self._connection)
