"""Sending worker events to the scheduler through one connection.

Dramatiq keeps one broker connection per thread; a worker runs a thread per task, so sending
from those threads would open a connection per task. All events go through one sender
thread instead; callers wait until RabbitMQ has confirmed theirs.
"""
from __future__ import annotations

import functools
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import dramatiq

from dstack.broker import retry, send
from dstack.names import EVENT_ACTOR, EVENTS_QUEUE

log = logging.getLogger(__name__)


class EventSender:
    """Sends events in order from one thread, retrying until RabbitMQ takes each one. The thread
    starts with the first event (so building one connects to nothing)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker
        self._queue: queue.Queue[Optional[_Pending]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def send(self, event: Any) -> None:
        """Send ``event``; returns once RabbitMQ has it (the broker may be restarting meanwhile).

        Raises:
            Exception: what sending it raised in the sender thread (a bug: the thread goes on with the next).
        """
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
                self._thread.start()
        pending = _Pending(event)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def close(self) -> None:
        with self._lock:
            thread = self._thread
        if thread is None:
            return  # nothing was ever sent
        self._queue.put(None)
        thread.join(10)

    def _run(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            event = pending.event
            try:
                retry(functools.partial(send, self._broker, EVENTS_QUEUE, EVENT_ACTOR, event),
                      what=f"cannot send {type(event).__name__} for {getattr(event, 'task_id', '?')} yet")
            except Exception as e:  # handed to the caller; the thread serves the next event
                pending.error = e
            finally:
                pending.done.set()


@dataclass
class _Pending:
    """An event waiting to be sent, and how its sending ended."""

    event: Any
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[Exception] = None
