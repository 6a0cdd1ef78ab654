"""The worker service with a fake container runtime, Dramatiq's stub broker and local storage:
building it, recovering the tasks of an earlier life, stop requests and draining."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from dstack.errors import ConfigError, MessageError, RequestRejected
from dstack.messages import Inventory, JobSpec, JobTask, StopTask, TaskFinished, TaskStarted, from_payload, to_payload
from dstack.names import CONTAINER_LABEL, EVENTS_QUEUE, WORKER_LABEL, container_name
from dstack.settings import Settings
from dstack.snapshot import upload_snapshot
from dstack.states import Status
from dstack.storage.local import LocalStorage
from dstack.workers import service
from dstack.workers.execution import Execution
from dstack.workers.runtime import ContainerSpec
from dstack.workers.service import Worker
from tests.fakes import FakeContainer, FakeRuntime, Script

RUN = "brave-otter-1"
INVENTORY = Inventory(cpu=4, memory_mib=8192)


def settings_in(tmp_path: Path, **options: Any) -> Settings:
    # a broker URL nothing listens on: a unit test must not reach a real RabbitMQ
    return Settings(home=tmp_path / "home", worker_id="w1", worker_host="host-a", broker_url="amqp://127.0.0.1:1/",
                    storage_url=(tmp_path / "storage").as_uri(), worker_slots=2, **options)


def make_worker(tmp_path: Path, runtime: FakeRuntime, **options: Any) -> Worker:
    worker = Worker(settings_in(tmp_path, **options), runtime=runtime, broker=StubBroker(),
                    storage=LocalStorage(tmp_path / "storage"), inventory=INVENTORY)
    worker.context.announce = lambda *_: None  # no live notifications in unit tests
    return worker


def sent_events(worker: Worker) -> list[Any]:
    """The events the worker has sent (through its broker), in order."""
    queue = worker.broker.queues.get(EVENTS_QUEUE)  # type: ignore[attr-defined]
    events = []
    while queue is not None and not queue.empty():
        events.append(from_payload(dramatiq.Message.decode(queue.get_nowait()).args[0]))
    return events


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def worker(tmp_path: Path, runtime: FakeRuntime) -> Iterator[Worker]:
    worker = make_worker(tmp_path, runtime, drain_period=1.0)
    yield worker
    worker.events.close()


def job_task(worker: Worker, task_id: str) -> JobTask:
    project = worker.home.parent / "project"
    project.mkdir(exist_ok=True)
    (project / "run.sh").write_text("true\n")
    snapshot_id = upload_snapshot(project, worker.storage)[0]
    return JobTask(run_name=RUN, attempt=1, job=JobSpec(job_id=task_id, image="alpine", commands=["sh run.sh"]),
                   snapshot_id=snapshot_id)


def launch(worker: Worker, task: JobTask) -> Execution:
    """Start ``task`` as :meth:`Worker._take` does once the scheduler granted it."""
    execution = Execution.for_task(task, worker.context)
    allocation = worker.capacity.reserve(task.run_name, task.task_id, task.attempt, execution.needs)
    assert allocation is not None
    worker._launch(execution, allocation)
    return execution


def wait_until_idle(worker: Worker, seconds: float = 10.0) -> None:
    assert worker._wait_for_tasks(seconds), "the tasks did not end"


def finished(events: list[Any]) -> list[TaskFinished]:
    return [e for e in events if isinstance(e, TaskFinished)]


# ----------------------------------------------------------------------------- building


def test_building_a_worker_connects_to_nothing(tmp_path: Path, runtime: FakeRuntime) -> None:
    threads = set(threading.enumerate())
    worker = make_worker(tmp_path, runtime)
    assert set(threading.enumerate()) == threads  # no sender, publisher or consumer thread yet
    assert not runtime.started and not worker.broker.queues.get(EVENTS_QUEUE)  # type: ignore[attr-defined]
    assert worker.capacity.inventory == INVENTORY and worker.context.runtime is runtime
    assert (worker.home / "sdk").is_dir()  # the SDK bundle provider containers mount


def test_from_settings_builds_the_real_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []

    def docker_runtime(network: str, gpu_devices: bool, registry_auth: dict) -> FakeRuntime:
        built.append((network, gpu_devices))
        return FakeRuntime()

    monkeypatch.setattr(service, "DockerRuntime", docker_runtime)
    monkeypatch.setattr(service, "make_broker", lambda url: StubBroker())
    worker = Worker.from_settings(settings_in(tmp_path, network="host",
                                              worker_resources={"cpu": 2, "memory": "1GB", "gpu": 0}))
    assert built == [("host", False)]
    assert worker.capacity.inventory == Inventory(cpu=2.0, memory_mib=1024)
    assert isinstance(worker.storage, LocalStorage) and worker.storage.root == tmp_path / "storage"


def test_a_missing_mount_is_refused(tmp_path: Path, runtime: FakeRuntime) -> None:
    with pytest.raises(ConfigError, match="does not exist on this machine; create it or remove its mount"):
        make_worker(tmp_path, runtime, container_mounts=[(str(tmp_path / "missing"), "/data", False)])


def test_a_message_that_is_no_task_is_refused(worker: Worker) -> None:
    with pytest.raises(MessageError, match="a StopTask is no task"):
        worker._take(to_payload(StopTask(run_name=RUN, task_id="train.0", attempt=1)))


# ----------------------------------------------------------------------------- recovery


def test_tasks_of_an_earlier_life_are_reported_lost(worker: Worker, runtime: FakeRuntime) -> None:
    task = job_task(worker, "train.0")
    earlier = Execution.for_task(task, worker.context)
    earlier.save()  # what the earlier life had taken
    labels = {CONTAINER_LABEL: earlier.key}
    mine = FakeContainer(ContainerSpec(name="mine", image="alpine", script="", env={}, working_dir="/",
                                       mounts=[], labels={**labels, WORKER_LABEL: "w1"}), Script())
    other = FakeContainer(ContainerSpec(name="other", image="alpine", script="", env={}, working_dir="/",
                                        mounts=[], labels={**labels, WORKER_LABEL: "w2"}), Script())
    runtime.leftovers = [mine, other]
    worker._recover()
    assert mine.removed and not other.removed  # another worker's container is left alone
    [lost] = sent_events(worker)
    assert lost == TaskFinished(run_name=RUN, task_id="train.0", attempt=1, status=Status.FAILED,
                                reason="worker lost: the worker restarted while the task ran", worker_id="w1")
    assert not earlier.folder.exists()


# ----------------------------------------------------------------------------- stop requests


def test_a_stop_that_arrives_before_the_task_starts_is_obeyed(worker: Worker, runtime: FakeRuntime) -> None:
    runtime.scripts["train.0"] = Script(until_stopped=True)
    worker._stop(StopTask(run_name=RUN, task_id="train.0", attempt=1))
    launch(worker, job_task(worker, "train.0"))
    wait_until_idle(worker)
    [end] = finished(sent_events(worker))
    assert (end.status, end.reason) == (Status.STOPPED, "stopped by request")
    assert worker.capacity.held() == [] and not worker._early_stops


def test_a_stop_of_a_running_task(worker: Worker, runtime: FakeRuntime) -> None:
    runtime.scripts["train.0"] = Script(until_stopped=True)
    launch(worker, job_task(worker, "train.0"))
    deadline = time.monotonic() + 10
    while not runtime.started and time.monotonic() < deadline:
        time.sleep(0.05)
    worker._stop(StopTask(run_name=RUN, task_id="train.0", attempt=1, abort=True))
    wait_until_idle(worker)
    [end] = finished(sent_events(worker))
    assert end.status == Status.STOPPED


def test_a_task_that_cannot_start_fails_saying_why(worker: Worker) -> None:
    task = job_task(worker, "train.0")
    task.snapshot_id = "0" * 32  # no such snapshot
    launch(worker, task)
    wait_until_idle(worker)
    [end] = finished(sent_events(worker))
    assert end.status == Status.FAILED and end.reason.startswith("failed to start: ")
    assert worker.capacity.held() == []


# ----------------------------------------------------------------------------- drain


def test_drain_lets_short_tasks_end_and_stops_the_rest(worker: Worker, runtime: FakeRuntime) -> None:
    runtime.scripts["quick.0"] = Script(output=[b"almost done\n"], duration=0.3)
    runtime.scripts["slow.0"] = Script(until_stopped=True)
    launch(worker, job_task(worker, "quick.0"))
    launch(worker, job_task(worker, "slow.0"))
    started = time.monotonic()
    worker._drain()
    assert 1.0 <= time.monotonic() - started < 10
    events = sent_events(worker)
    assert sorted(e.task_id for e in events if isinstance(e, TaskStarted)) == ["quick.0", "slow.0"]
    ends = {e.task_id: e for e in finished(events)}
    assert ends["quick.0"].status == Status.DONE
    assert not runtime.started[container_name(RUN, "quick.0", 1)].stopped.is_set()
    assert (ends["slow.0"].status, ends["slow.0"].reason) == (
        Status.FAILED, "worker w1 shut down; the task did not end within its 1 s drain period")
    assert worker.capacity.held() == [] and not worker._executions


def test_drain_of_tasks_that_end_within_the_period_stops_nothing(worker: Worker, runtime: FakeRuntime) -> None:
    runtime.scripts["quick.0"] = Script(duration=0.2)
    launch(worker, job_task(worker, "quick.0"))
    started = time.monotonic()
    worker._drain()
    assert time.monotonic() - started < 1.0
    [end] = finished(sent_events(worker))
    assert end.status == Status.DONE


def test_a_refused_claim_leaves_the_worker_running(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(task: Any) -> Any:
        raise RequestRejected("the secrets X were sealed under another key")
    monkeypatch.setattr(worker, "_claim", refuse)
    assert worker._take(to_payload(job_task(worker, "train.0"))) is True  # acknowledged: the scheduler owns it
    assert worker.capacity.held() == []
