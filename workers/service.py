"""The worker service: takes tasks while it has room, runs them, obeys stop requests."""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Optional

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dstack.broker import make_broker
from dstack.errors import DstackError, MessageError
from dstack.live import Publisher
from dstack.messages import ClaimTask, StopTask, from_payload
from dstack.names import WORKER_LABEL, task_queue, worker_queue
from dstack.rpc import RpcClient
from dstack.settings import Settings
from dstack.storage import open_storage
from workers.execution import TASK_FILE, Execution, WorkerContext
from workers.events import EventSender
from workers.intake import TaskIntake
from workers.provider_repos import ProviderRepos
from workers.runtime import DockerRuntime
from workers.sdk_bundle import build_sdk_bundle

log = logging.getLogger(__name__)



class Worker:
    """Runs tasks from the task queue, at most ``settings.worker_slots`` at once.

    The intake takes one task at a time and only while a slot is free; it acknowledges the
    delivery once the container runs, so no delivery stays open for the life of a job.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home / "workers" / settings.worker_id
        self.broker: RabbitmqBroker = make_broker(settings.broker_url)
        self.storage = open_storage(settings.storage_url)
        self.runtime = DockerRuntime(settings.network)
        self.publisher = Publisher(settings.broker_url)
        self.events = EventSender(self.broker)
        self.context = WorkerContext(
            worker_id=settings.worker_id, hostname=settings.worker_host, home=self.home,
            storage=self.storage, runtime=self.runtime,
            sdk_bundle=build_sdk_bundle(self.home / "sdk"),
            send_event=self.events.send,
            announce=self.publisher.publish, provider_repos=ProviderRepos(self.home / "repos"))
        self._executions: Dict[str, Execution] = {}
        self._early_stops: Dict[str, bool] = {}
        self._lock = threading.Lock()
        self._room = threading.BoundedSemaphore(settings.worker_slots)
        self._stopping = threading.Event()
        self._rpc: Optional[RpcClient] = None
        self._control = dramatiq.Worker(self.broker, queues={worker_queue(settings.worker_id)}, worker_threads=2)
        dramatiq.actor(self._on_control, broker=self.broker, actor_name="control",
                       queue_name=worker_queue(settings.worker_id), max_retries=3, time_limit=60_000,
                       throws=(MessageError,))

    # -------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """Serve until :meth:`shutdown`."""
        self.storage.check()
        self.broker.declare_queue(task_queue(), ensure=True)
        self._recover()
        self._control.start()
        log.info("worker %s: %d slots, network %s, storage %s", self.settings.worker_id,
                 self.settings.worker_slots, self.runtime.network, self.storage.url)
        try:
            TaskIntake(self.settings.broker_url, task_queue(), self._take, self._room, self._stopping).run()
        finally:
            self._control.stop()
            self.events.close()
            self.publisher.close()

    def shutdown(self) -> None:
        self._stopping.set()

    def _recover(self) -> None:
        """Tasks of an earlier life of this worker (their folders hold the task) are reported lost
        and their containers removed: their logs and artifacts were not followed to the end."""
        for saved in sorted(self.home.glob(f"tasks/*/*/{TASK_FILE}")):
            execution = Execution.load(saved, self.context)
            log.warning("task %s was running when this worker stopped; reporting it lost", execution.key)
            execution.abandon("worker lost: the worker restarted while the task ran")
        for container in self.runtime.managed():
            if container.labels.get(WORKER_LABEL) == self.settings.worker_id:
                container.remove()

    # -------------------------------------------------------------- intake

    def _take(self, payload: Any) -> bool:
        """Claim a task and start it in its own thread. Returns whether it took a slot."""
        try:
            task = from_payload(payload)
        except MessageError as e:
            log.error("dropping a malformed task: %s", e)
            return False
        execution = Execution(task=task, context=self.context)
        with self._lock:
            if execution.key in self._executions:
                return False  # a redelivery of a task running here
        grant = self._claim(task)
        if not grant.get("granted"):
            log.info("not starting %s: %s", execution.key, grant.get("reason"))
            return False
        execution.save()
        with self._lock:
            self._executions[execution.key] = execution
            if execution.key in self._early_stops:
                execution.stop_requested, execution.abort = True, self._early_stops[execution.key]
        threading.Thread(target=self._run, args=(execution,), name=execution.key, daemon=True).start()
        return True

    def _run(self, execution: Execution) -> None:
        try:
            try:
                execution.start()
            except DstackError as e:
                log.warning("task %s failed to start: %s", execution.key, e)
                execution.abandon(f"failed to start: {e}")
                return
            if execution.stop_requested:
                execution.stop(execution.abort)
            execution.follow()
        except Exception:
            log.exception("task %s failed in the worker", execution.key)
            execution.abandon("worker error: see the worker's log")
        finally:
            with self._lock:
                self._executions.pop(execution.key, None)
                self._early_stops.pop(execution.key, None)
            self._room.release()

    def _claim(self, task: Any) -> Dict[str, Any]:
        if self._rpc is None:
            self._rpc = RpcClient(self.settings.broker_url)
        try:
            return self._rpc.call(ClaimTask(run_name=task.run_name, task_id=task.task_id,
                                            attempt=task.attempt, worker_id=self.settings.worker_id))
        except DstackError:
            self._rpc.close()
            self._rpc = None
            raise

    # -------------------------------------------------------------- control

    def _on_control(self, payload: Any) -> None:
        request = from_payload(payload, StopTask)
        key = f"{request.run_name}/{request.task_id}/{request.attempt}"
        with self._lock:
            execution = self._executions.get(key)
            if execution is None:
                self._early_stops[key] = request.abort
                return
        execution.stop(request.abort)

