"""Sending worker events to the scheduler through one connection.

Dramatiq keeps one broker connection per thread; a worker runs a thread per task, so sending
from those threads would open a connection per task. All events go through one sender
thread instead; callers wait until RabbitMQ has confirmed theirs.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Optional, Tuple

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dstack.broker import send
from dstack.errors import BrokerUnavailable
from dstack.names import EVENTS_QUEUE

log = logging.getLogger(__name__)

#: The scheduler's actor that handles worker events.
EVENT_ACTOR = "handle_event"
#: Longest wait between two tries to send an event, in seconds.
MAX_RETRY_DELAY = 10.0


class EventSender:
    """Sends events in order from one thread, retrying until RabbitMQ takes each one."""

    def __init__(self, broker: RabbitmqBroker) -> None:
        self._broker = broker
        self._queue: "queue.Queue[Optional[Tuple[Any, threading.Event]]]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        self._thread.start()

    def send(self, event: Any) -> None:
        """Send ``event``; returns once RabbitMQ has it (the broker may be restarting meanwhile)."""
        sent = threading.Event()
        self._queue.put((event, sent))
        sent.wait()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, sent = item
            delay = 0.5
            while True:
                try:
                    send(self._broker, EVENTS_QUEUE, EVENT_ACTOR, event)
                    break
                except BrokerUnavailable as e:
                    log.warning("cannot send %s for %s yet (%s); retrying in %.1f s", type(event).__name__,
                                event.task_id, e, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
            sent.set()
