"""Running the scheduler: the events consumer (Dramatiq), the request server, the outbox."""
from __future__ import annotations

import logging
import threading
from typing import Any

from dstack.broker import DramatiqConnectionError, account, consumer, describe, enqueue, make_broker
from dstack.errors import DstackError, MessageError
from dstack.live import Publisher
from dstack.messages import from_payload, pack, plain, unpack
from dstack.names import EVENT_ACTOR, EVENTS_QUEUE, UPDATES_EXCHANGE, live_routing_key
from dstack.rpc import RpcServer
from dstack.scheduler.grants import StorageGrants
from dstack.scheduler.secrets import load_cipher, seal_stored, unopenable
from dstack.scheduler.service import Scheduler
from dstack.scheduler.store import SqliteStateStore
from dstack.settings import Settings
from dstack.storage import open_storage
from dstack.views import RunUpdate

log = logging.getLogger(__name__)

#: Seconds between two ticks (retries that are due, workers that stopped reporting).
TICK_INTERVAL = 1.0


class SchedulerService:
    """The scheduler process: call :meth:`run`, and :meth:`shutdown` from a signal handler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = make_broker(settings.broker_url)
        self.publisher = Publisher(settings.broker_url)
        self.store = SqliteStateStore(settings.home / "scheduler" / "state.db")
        cipher = load_cipher(settings.home / "scheduler", settings.secrets_key)
        sealed = seal_stored(self.store, cipher)
        if sealed:
            log.info("sealed %d secrets stored in clear by an earlier version", sealed)
        unopened = unopenable(self.store, cipher)
        if unopened:
            log.error("the secrets %s cannot be opened with this scheduler's key (DSTACK_SECRETS_KEY, "
                      "scheduler/secrets.key): jobs fail until they are set again or deleted", ", ".join(unopened))
        self.scheduler = Scheduler(self.store, send=self._send, notify=self._notify,
                                   worker_timeout=settings.worker_timeout, cipher=cipher,
                                   account=account(settings.broker_url), visibility=settings.visibility,
                                   grants=StorageGrants(open_storage(settings.storage_url), settings.visibility))
        self._lock = threading.Lock()
        self.rpc = RpcServer(settings.broker_url, self._locked(self.scheduler.handle_request))
        self.worker = consumer(self.broker, self._on_event, queue_name=EVENTS_QUEUE, actor_name=EVENT_ACTOR,
                               threads=1, max_retries=5, time_limit=60_000, throws=(MessageError,))
        self._stopping = threading.Event()

    def _locked(self, handler: Any) -> Any:
        def call(message: Any, sender: str) -> Any:
            with self._lock:
                return handler(message, sender)
        return call

    def _on_event(self, payload: dict[str, Any]) -> None:
        event: Any = from_payload(payload)
        with self._lock:
            self.scheduler.handle_event(event)

    def _send(self, queue: str, actor: str, payload: bytes) -> None:
        enqueue(self.broker, queue, actor, unpack(payload))

    def _notify(self, run_name: str, update: RunUpdate) -> None:
        self.publisher.publish(UPDATES_EXCHANGE, live_routing_key(update.run.owner, run_name), pack(plain(update)))

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
            except (DstackError, DramatiqConnectionError) as e:
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
