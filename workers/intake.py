"""Taking tasks from the queues whose tasks fit what the worker has free, one at a time.

One long-lived connection and one channel with a prefetch of one delivery for the whole
channel, so the worker is never sent a task ahead. Before each wait it consumes from exactly
the queues it can take a task from now, and cancels its consumers on the others: a worker
with one free GPU is sent no two-GPU task, and a busy worker holds no delivery, however long
its jobs run. A task that does not fit after all (another task took what it needed) goes back
to its queue, and that queue is left alone until something changes.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable, Optional

from dstack import defaults
from dstack.broker import (
    CONNECTION_ERRORS,
    Backoff,
    Connection,
    call_threadsafe,
    close_quietly,
    connect,
    retry,
    task_payload,
)
from dstack.errors import MessageError, ServiceUnavailable
from dstack.names import dead_letter_queue

log = logging.getLogger(__name__)


class TaskIntake:
    """Feeds ``take`` with the payloads of the tasks on the queues ``open_queues`` names.

    Args:
        url: the broker.
        open_queues: the queues whose tasks the worker can take now.
        take: gets a task's payload; returns False to put it back on its queue (it does not fit
            now). Raising :class:`~dstack.errors.ServiceUnavailable` puts it back too; raising
            :class:`~dstack.errors.MessageError` (not a task of this version) dead-letters it.
        declare: makes sure a queue exists before it is consumed from.
        stopping: set to stop.
    """

    def __init__(self, url: str, open_queues: Callable[[], Iterable[str]], take: Callable[[Any], bool],
                 declare: Callable[[str], None], stopping: threading.Event) -> None:
        self._url, self._open_queues, self._take, self._declare = url, open_queues, take, declare
        self._stopping = stopping
        self._connection: Optional[Connection] = None
        # from the longest wait on: a scheduler that is away fails each try at once
        wait = defaults.CONSUMER_RECONNECT_MAX_DELAY
        self._backoff = Backoff(first=wait, cap=wait)
        self._held_back: set[str] = set()
        self._error: Optional[BaseException] = None

    def wake(self) -> None:
        """Something changed (capacity was given back, a queue opened): look at the queues again.
        Safe to call from any thread."""
        call_threadsafe(self._connection, self._held_back.clear)  # gone: the next one starts afresh anyway

    def run(self) -> None:
        """Take tasks until ``stopping`` is set, on a new connection after the broker or the
        scheduler went away (the delivery in hand went back to its queue)."""
        retry(self._serve, what="cannot take tasks now", stopping=self._stopping, backoff=self._backoff,
              errors=(ServiceUnavailable, *CONNECTION_ERRORS))

    def _serve(self) -> None:
        self._connection = connection = connect(self._url)
        self._held_back.clear()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1, global_qos=True)
            self._backoff.reset()
            consumers: dict[str, str] = {}
            while not self._stopping.is_set():
                wanted = set(self._open_queues()) - self._held_back
                for queue in set(consumers) - wanted:
                    channel.basic_cancel(consumers.pop(queue))  # nacks a delivery sent ahead
                for queue in sorted(wanted - set(consumers)):
                    self._declare(queue)
                    consumers[queue] = channel.basic_consume(queue, functools.partial(self._on_delivery, queue))
                connection.process_data_events(time_limit=defaults.INTAKE_POLL_TIMEOUT)
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
        finally:
            self._connection = None
            close_quietly(connection)

    def _on_delivery(self, queue: str, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            took = self._take(task_payload(body))
        except (MessageError, AttributeError, IndexError, TypeError, KeyError) as e:
            log.error("a task on %s is not one this worker can read (%s); it goes to the dead-letter queue %s",
                      queue, e, dead_letter_queue(queue))
            channel.basic_reject(method.delivery_tag, requeue=False)  # dead-lettered by the queue
            return
        except ServiceUnavailable as e:
            channel.basic_nack(method.delivery_tag, requeue=True)
            self._error = e
            return
        if took:
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
            self._held_back.add(queue)
