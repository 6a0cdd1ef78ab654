"""Taking tasks from a queue only while there is room to run them.

One long-lived connection. While the worker has a free slot it consumes with prefetch 1,
acknowledging each task as soon as it is taken; when the slots run out it cancels the
consumer, and RabbitMQ gets back the delivery it had sent ahead. So no delivery is ever
held while the worker is busy, however long its jobs run.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import dramatiq
import pika

from dstack import defaults
from dstack.broker import close_quietly, connect
from dstack.errors import ServiceUnavailable

log = logging.getLogger(__name__)


class TaskIntake:
    """Feeds ``take`` with the payloads of ``queue``'s messages while ``room`` has a slot.

    Args:
        url: the broker.
        queue: the task queue (declared already, by Dramatiq).
        take: gets a message's payload; returns True when it took a slot of ``room`` for the
            task. Raising :class:`~dstack.errors.ServiceUnavailable` puts the message back.
        room: one slot per task that may run at once.
        stopping: set to stop.
    """

    def __init__(self, url: str, queue: str, take: Callable[[Any], bool], room: threading.BoundedSemaphore,
                 stopping: threading.Event) -> None:
        self._url, self._queue, self._take = url, queue, take
        self._room, self._stopping = room, stopping

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._serve()
            except (ServiceUnavailable, pika.exceptions.AMQPError) as e:
                log.warning("cannot take tasks now (%s); retrying", e)  # the message went back to the queue
                self._stopping.wait(1.0)

    def _serve(self) -> None:
        connection = connect(self._url)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)
            while not self._stopping.is_set():
                if self._room.acquire(timeout=defaults.INTAKE_POLL_TIMEOUT):
                    self._consume_while_room(channel)
                else:
                    connection.process_data_events(0)  # heartbeats while full
        finally:
            close_quietly(connection)

    def _consume_while_room(self, channel: Any) -> None:
        """Holds one slot on entry, and gives it back unless a task took it."""
        holding = True
        try:
            for method, _properties, body in channel.consume(self._queue, inactivity_timeout=defaults.INTAKE_POLL_TIMEOUT):
                if self._stopping.is_set():
                    break
                if method is None:
                    continue
                took = self._take(dramatiq.Message.decode(body).args[0])
                channel.basic_ack(method.delivery_tag)
                if took and not self._room.acquire(blocking=False):
                    holding = False
                    break
        finally:
            if holding:
                self._room.release()
            channel.cancel()  # hands back the delivery sent ahead, if any
