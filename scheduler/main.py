"""Running the scheduler: the events consumer (Dramatiq), the request server, the outbox."""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict

import dramatiq

from dstack.broker import describe, make_broker
from dstack.errors import DstackError, MessageError
from dstack.live import Publisher
from dstack.messages import from_payload, pack, unpack
from dstack.names import EVENTS_QUEUE, UPDATES_EXCHANGE
from dstack.rpc import RpcServer
from dstack.settings import Settings
from dstack.scheduler.service import Scheduler
from dstack.scheduler.store import SqliteStateStore

log = logging.getLogger(__name__)

#: Dramatiq actor that receives worker events.
EVENT_ACTOR = "handle_event"
#: Seconds between two ticks (retries that are due, workers that stopped reporting).
TICK_INTERVAL = 1.0


class SchedulerService:
    """The scheduler process: call :meth:`run`, and :meth:`shutdown` from a signal handler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = make_broker(settings.broker_url)
        self.publisher = Publisher(settings.broker_url)
        self.store = SqliteStateStore(settings.home / "scheduler" / "state.db")
        self.scheduler = Scheduler(self.store, send=self._send, notify=self._notify,
                                   worker_timeout=settings.worker_timeout)
        self._lock = threading.Lock()
        self.rpc = RpcServer(settings.broker_url, self._locked(self.scheduler.handle_request))
        dramatiq.actor(self._on_event, broker=self.broker, actor_name=EVENT_ACTOR, queue_name=EVENTS_QUEUE,
                       max_retries=5, time_limit=60_000, throws=(MessageError,))
        self.worker = dramatiq.Worker(self.broker, queues={EVENTS_QUEUE}, worker_threads=1)
        self._stopping = threading.Event()

    def _locked(self, handler: Any) -> Any:
        def call(message: Any) -> Any:
            with self._lock:
                return handler(message)
        return call

    def _on_event(self, payload: Dict[str, Any]) -> None:
        event = from_payload(payload)
        with self._lock:
            self.scheduler.handle_event(event)

    def _send(self, queue: str, actor: str, payload: bytes) -> None:
        self.broker.declare_queue(queue)
        self.broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=(unpack(payload),),
                                             kwargs={}, options={}))

    def _notify(self, run_name: str, update: Dict[str, Any]) -> None:
        self.publisher.publish(UPDATES_EXCHANGE, run_name, pack(update))

    def run(self) -> None:
        with self._lock:
            self.scheduler.flush_outbox()  # what a crash left unsent
        server = threading.Thread(target=self.rpc.serve_forever, name="rpc", daemon=True)
        server.start()
        self.worker.start()
        log.info("scheduler: broker %s, state %s", describe(self.settings.broker_url), self.store.path)
        while not self._stopping.wait(TICK_INTERVAL):
            try:
                with self._lock:
                    self.scheduler.tick()
            except (DstackError, dramatiq.errors.ConnectionError) as e:
                log.warning("tick: %s (what it sends stays in the outbox)", e)
            except Exception:  # a bug: say so, keep ticking
                log.exception("tick failed")
        self.rpc.stop()
        self.worker.stop()
        server.join(5)
        self.publisher.close()
        self.store.close()

    def shutdown(self) -> None:
        self._stopping.set()
