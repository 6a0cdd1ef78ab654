"""The worker service: takes the tasks that fit what it has free, runs them, obeys stop requests."""
from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

import dramatiq

from dstack import defaults
from dstack.broker import consumer, declare_queue, make_broker
from dstack.errors import ConfigError, DstackError, MessageError, RequestRejected
from dstack.live import Publisher
from dstack.messages import (
    Allocation,
    ClaimTask,
    Inventory,
    JobTask,
    QueueOpened,
    Resources,
    StopTask,
    WorkerReport,
    from_payload,
)
from dstack.names import CONTROL_ACTOR, DEFAULT_TASK_QUEUE, WORKER_LABEL, worker_queue
from dstack.placement import describe_inventory
from dstack.rpc import RpcClient
from dstack.settings import Settings
from dstack.states import Status
from dstack.storage import Storage, open_storage
from dstack.views import ClaimAnswer, ReportAnswer
from dstack.workers.capacity import Capacity
from dstack.workers.events import EventSender
from dstack.workers.execution import TASK_FILE, Execution, WorkerContext
from dstack.workers.images import ImageJanitor, ImagePuller, PullCancelled, UsageRecord
from dstack.workers.intake import TaskIntake
from dstack.workers.inventory import worker_inventory
from dstack.workers.ports import PortPool
from dstack.workers.provider_repos import ProviderRepos
from dstack.workers.reporter import Reporter
from dstack.workers.runtime import ContainerRuntime, DockerRuntime
from dstack.workers.sdk_bundle import build_sdk_bundle

log = logging.getLogger(__name__)


class Worker:
    """Runs the tasks that fit what it has free, at most ``settings.worker_slots`` at once.

    It takes from the queues whose tasks fit what is free now (see :mod:`workers.intake`), one
    task at a time, holds what the task needs until it ends, and acknowledges the delivery once
    the task is claimed and saved, so no delivery stays open for the life of a job.
    """

    def __init__(self, settings: Settings, *, runtime: ContainerRuntime, broker: dramatiq.Broker, storage: Storage,
                 inventory: Inventory) -> None:
        """A worker that runs its tasks' containers on ``runtime``, takes tasks and sends events
        through ``broker`` (``RabbitmqBroker``; Dramatiq's ``StubBroker`` in tests), keeps logs and
        artifacts in ``storage`` and offers ``inventory``. Nothing is connected to before :meth:`run`.
        :meth:`from_settings` builds the real ones."""
        self.settings = settings
        _check_mounts(settings)
        self.home = settings.home / "workers" / settings.worker_id
        self.capacity = Capacity(inventory, settings.worker_slots, on_release=self._capacity_changed)
        self.broker = broker
        self.storage = storage
        self.runtime = runtime
        self.publisher = Publisher(settings.broker_url)
        self.events = EventSender(self.broker)
        self.images = ImagePuller(runtime, UsageRecord(self.home / "images.json"), settings.pull_retry_timeout)
        self._janitor = ImageJanitor(runtime, self.images, settings.image_min_free_mib, settings.image_max_age,
                                     needed=self._images_needed)
        self.context = WorkerContext(
            worker_id=settings.worker_id, hostname=settings.worker_host, home=self.home,
            storage=self.storage, runtime=self.runtime, has_gpus=bool(inventory.gpus),
            sdk_bundle=build_sdk_bundle(self.home / "sdk"),
            send_event=self.events.send,
            announce=self.publisher.publish, provider_repos=ProviderRepos(self.home / "repos"), ports=PortPool(),
            container_env=settings.container_env, container_mounts=settings.container_mounts,
            artifact_sync_interval=settings.artifact_sync_interval, pull_policy=settings.pull_policy,
            images=self.images)
        self._executions: dict[str, Execution] = {}
        self._early_stops: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # take no more tasks
        self._gone = threading.Event()  # every task ended: stop reporting
        self._rpc: Optional[RpcClient] = None
        self._started_at = time.time()
        #: the task queues this worker knows of, with what their tasks need, and when it learnt of each
        self._queues: dict[str, tuple[Resources, float]] = {DEFAULT_TASK_QUEUE: (Resources(), float("inf"))}
        self._intake = TaskIntake(settings.broker_url, self._open_queues, self._take, self._declare, self._stopping)
        self._reporter = Reporter(settings.broker_url, self._report, self._on_answer,
                                  settings.heartbeat_interval, self._gone)
        self._control = consumer(self.broker, self._on_control, queue_name=worker_queue(settings.worker_id),
                                 actor_name=CONTROL_ACTOR, threads=2, max_retries=3, time_limit=60_000,
                                 throws=(MessageError,))

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        """The worker ``settings`` describe: Docker (reached now), RabbitMQ, the storage, and what the
        machine has (or what ``worker_resources`` declares).

        Raises:
            ConfigError: a setting is wrong.
            RuntimeErrorInContainer: the Docker engine cannot be reached.
        """
        _check_mounts(settings)
        inventory, gpu_devices = worker_inventory(settings.worker_resources, source="worker_resources")
        if inventory.gpus and not gpu_devices:
            log.warning("the GPUs this worker declares are not all reported by nvidia-smi: its jobs are "
                        "told their GPUs (NVIDIA_VISIBLE_DEVICES) but given no device")
        broker = make_broker(settings.broker_url)
        storage = open_storage(settings.storage_url)
        runtime = DockerRuntime(settings.network, gpu_devices=gpu_devices, registry_auth=settings.registry_auth)
        return cls(settings, runtime=runtime, broker=broker, storage=storage, inventory=inventory)

    # -------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """Serve until :meth:`shutdown`."""
        self.storage.check()
        self._recover()
        self._control.start()
        log.info("worker %s: %s, %d slots, network %s, storage %s", self.settings.worker_id,
                 describe_inventory(self.capacity.inventory), self.settings.worker_slots, self.runtime.network,
                 self.storage.url)
        self._reporter.report()
        reporter = threading.Thread(target=self._reporter.run, name="reporter", daemon=True)
        reporter.start()
        threading.Thread(target=self._janitor.run, args=(self._gone,), name="images", daemon=True).start()
        try:
            self._intake.run()
        finally:
            self._drain()
            self._gone.set()
            self._control.stop()
            reporter.join(timeout=5)
            self._reporter.leave(self.settings.worker_id)
            self.events.close()
            self.publisher.close()
            if self.context.provider_host is not None:
                self.context.provider_host.close()

    def shutdown(self) -> None:
        """Take no more tasks, and drain (see :meth:`_drain`)."""
        self._stopping.set()

    def _drain(self) -> None:
        """Let the running tasks end within the drain period; stop the rest, which fail saying so
        (their retry policy may run them again elsewhere); wait for their ends to be reported."""
        period = self.settings.drain_period
        if self._wait_for_tasks(period):
            return
        with self._lock:
            rest = list(self._executions.values())
        for execution in rest:
            log.warning("task %s still runs after the %g s drain period; stopping it", execution.key, period)
            execution.stop(abort=False, failure=f"worker {self.settings.worker_id} shut down; the task did "
                                                f"not end within its {period:g} s drain period")
        self._wait_for_tasks(defaults.STOP_GRACE_PERIOD + 60)  # SIGTERM, SIGKILL, artifacts

    def _wait_for_tasks(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._executions:
                    return True
            time.sleep(0.2)
        return False

    def _recover(self) -> None:
        """Tasks of an earlier life of this worker (their folders hold the task) are reported lost
        and their containers removed: their logs and artifacts were not followed to the end."""
        for container in self.runtime.managed():  # first: what is reported lost may run again at once
            if container.labels.get(WORKER_LABEL) == self.settings.worker_id:
                container.remove()
        for saved in sorted(self.home.glob(f"tasks/*/*/{TASK_FILE}")):
            execution = Execution.load(saved, self.context)
            log.warning("task %s was running when this worker stopped; reporting it lost", execution.key)
            execution.abandon("worker lost: the worker restarted while the task ran")

    # -------------------------------------------------------------- intake

    def _open_queues(self) -> list[str]:
        """The known task queues whose tasks fit what is free now."""
        with self._lock:
            queues = list(self._queues.items())
        return [queue for queue, (needs, _) in queues if self.capacity.can_take(needs)]

    def _declare(self, queue: str) -> None:
        declare_queue(self.broker, queue)  # with its dead-letter queue, as Dramatiq's publishers expect

    def _on_answer(self, answer: ReportAnswer, asked_at: float) -> None:
        """The scheduler's answer to a report sent at ``asked_at``: the queues that hold tasks (forget
        the others, unless learnt of since), and the tasks to stop (they are not this worker's anymore)."""
        with self._lock:
            known = {queue: entry for queue, entry in self._queues.items() if entry[1] > asked_at}
            known.update({q.queue: (q.needs, asked_at) for q in answer.queues})
            known[DEFAULT_TASK_QUEUE] = self._queues[DEFAULT_TASK_QUEUE]
            self._queues = known
        self._intake.wake()
        for stale in answer.stop:
            log.warning("task %s/%s/%s is no longer this worker's; stopping it", stale.run_name,
                        stale.task_id, stale.attempt)
            self._stop(StopTask(stale.run_name, stale.task_id, stale.attempt, abort=True))

    def _capacity_changed(self) -> None:
        self._intake.wake()
        self._reporter.changed()

    def _report(self) -> WorkerReport:
        return WorkerReport(worker_id=self.settings.worker_id, host=self.settings.worker_host,
                            resources=self.capacity.inventory, slots=self.capacity.slots,
                            in_use=self.capacity.held(), started_at=self._started_at,
                            disk_free=self.runtime.disk_free())

    def _images_needed(self) -> set[str]:
        """The images of the tasks this worker holds (running, or waiting for their image)."""
        with self._lock:
            return {e.image for e in self._executions.values() if e.image}

    def _take(self, payload: Any) -> bool:
        """Claim a task, hold what it needs and start it in its own thread. Returns False to put
        the task back on its queue: it does not fit what is free now."""
        task: Any = from_payload(payload)
        execution = Execution.for_task(task, self.context)  # refuses what is no task
        with self._lock:
            if execution.key in self._executions:
                return True  # a redelivery of a task running here
        allocation = self.capacity.reserve(task.run_name, task.task_id, task.attempt, execution.needs)
        if allocation is None:
            return False
        try:
            grant = self._claim(task)
        except RequestRejected as e:  # the scheduler owns the task's state: it failed the task, or will say why
            log.warning("not starting %s: the scheduler refused the claim: %s", execution.key, e)
            self.capacity.release(allocation)
            return True
        except DstackError:
            self.capacity.release(allocation)
            raise
        if not grant.granted:
            log.info("not starting %s: %s", execution.key, grant.reason)
            self.capacity.release(allocation)
            return True
        if isinstance(task, JobTask):
            task.secrets = grant.secrets  # in memory only: the task's folder gets the task without them
        self._launch(execution, allocation)
        return True

    def _launch(self, execution: Execution, allocation: Allocation) -> None:
        """Start a claimed task in its own thread, holding ``allocation`` until its end is reported."""
        execution.allocation = allocation
        execution.on_reported = functools.partial(self._release, execution)  # before its container is removed
        execution.save()
        with self._lock:
            self._executions[execution.key] = execution
            if execution.key in self._early_stops:
                execution.stop_requested, execution.abort = True, self._early_stops[execution.key]
        threading.Thread(target=self._run, args=(execution,), name=execution.key, daemon=True).start()
        self._reporter.changed()

    def _run(self, execution: Execution) -> None:
        try:
            try:
                if execution.reuse():  # job caching: an earlier identical job's result, and nothing runs
                    return
                execution.start()
            except PullCancelled:
                execution.abandon("stopped by request while its image was pulled", status=Status.STOPPED)
                return
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
            self._release(execution)
            if execution.image:
                self.images.record.used(execution.image)  # last used at its end, not its start
                self._tidy_images()

    def _tidy_images(self) -> None:
        """Remove unused pulled images if the disk runs low (also checked every minute)."""
        try:
            self._janitor.check()
        except (DstackError, OSError) as e:
            log.warning("checking the images' disk failed: %s", e)

    def _release(self, execution: Execution) -> None:
        """Give back what ``execution`` holds, once: when its end is reported, or when its thread ends."""
        with self._lock:
            allocation, execution.allocation = execution.allocation, None
        if allocation is not None:
            self.capacity.release(allocation)

    def _claim(self, task: Any) -> ClaimAnswer:
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
        message: Any = from_payload(payload)
        if isinstance(message, QueueOpened):
            with self._lock:
                self._queues[message.queue] = (message.needs, time.monotonic())
            self._intake.wake()
        elif isinstance(message, StopTask):
            self._stop(message)
        else:
            raise MessageError(f"a worker takes no {type(message).__name__} on its control queue")

    def _stop(self, request: StopTask) -> None:
        key = f"{request.run_name}/{request.task_id}/{request.attempt}"
        with self._lock:
            execution = self._executions.get(key)
            if execution is None:
                self._early_stops[key] = request.abort
                return
        execution.stop(request.abort)


def _check_mounts(settings: Settings) -> None:
    """Every host folder the worker mounts into containers exists."""
    for host, _, _ in settings.container_mounts:
        if not Path(host).exists():
            raise ConfigError(f"{host} does not exist on this machine; create it or remove its mount",
                              field="DSTACK_CONTAINER_MOUNTS")
