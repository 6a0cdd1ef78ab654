"""workers.runtime.DockerRuntime.start: the options it gives Docker to create a task's container
(GPUs, CPU and memory limits, shared memory, network), checked against a fake Docker client."""
from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import docker.errors
import docker.types
import pytest

from dstack.errors import DstackError, ImageNotFound, RuntimeErrorInContainer
from dstack.workers.runtime import LIFELINE_SCRIPT, ContainerSpec, DockerContainer, DockerRuntime, _host_name_at


class FakeContainer:
    def __init__(self, name: str, labels: dict[str, str]) -> None:
        self.name = name
        self.labels = labels
        self.started = 0
        self.attached: list[dict[str, Any]] = []

    def attach_socket(self, params: dict[str, Any]) -> object:
        assert not self.started, "the lifeline is attached before the container starts"
        self.attached.append(params)
        return object()

    def start(self) -> None:
        self.started += 1


class FakeContainers:
    """``client.containers``: records what ``create`` was given; may refuse with ``error``."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.error: Optional[Exception] = None
        self.existing: dict[str, FakeContainer] = {}

    def create(self, **options: Any) -> FakeContainer:
        self.created.append(options)
        if self.error is not None:
            raise self.error
        return FakeContainer(options["name"], options.get("labels") or {})

    def get(self, name: str) -> FakeContainer:
        return self.existing[name]


class FakeImage:
    def __init__(self, config: dict[str, Any]) -> None:
        self.attrs = {"Config": config}


class FakeImages:
    """``client.images``: the config of each image there is."""

    def __init__(self) -> None:
        self.configs: dict[str, dict[str, Any]] = {}

    def get(self, name: str) -> FakeImage:
        if name not in self.configs:
            raise docker.errors.ImageNotFound(name)
        return FakeImage(self.configs[name])


class FakeClient:
    def __init__(self) -> None:
        self.containers = FakeContainers()
        self.images = FakeImages()


def make_runtime(network: str = "bridge", gpu_devices: bool = False, engine_cpus: float = 2,
                 engine_memory_mib: int = 16384) -> DockerRuntime:
    """A DockerRuntime set up as ``__init__`` would, without reaching a Docker engine."""
    runtime = DockerRuntime.__new__(DockerRuntime)
    runtime.gpu_devices = gpu_devices
    client = FakeClient()
    runtime._client = client  # type: ignore[assignment]
    # the options as the models' containers.create takes them (DockerRuntime._create converts them for the API)
    runtime._create = lambda options: client.containers.create(**options)  # type: ignore[method-assign]
    runtime.network = network
    runtime._engine_cpus = engine_cpus
    runtime._engine_memory_mib = engine_memory_mib
    return runtime


def spec(**overrides: Any) -> ContainerSpec:
    fields: dict[str, Any] = dict(
        name="dstack-witty-otter-1234-train-0-0", image="python:3.11", script="python train.py",
        env={"DSTACK_RUN": "witty-otter-1234"}, working_dir="/workflow",
        mounts=[("/var/dstack/tasks/x", "/workflow", False), ("/var/dstack/inputs", "/inputs", True)],
        labels={"ai.dstack.task": "witty-otter-1234/train.0/0"})
    fields.update(overrides)
    return ContainerSpec(**fields)


def created(runtime: DockerRuntime, container_spec: ContainerSpec) -> dict[str, Any]:
    """Start ``container_spec`` and return the options Docker was asked to create it with."""
    runtime.start(container_spec)
    client: FakeClient = runtime._client  # type: ignore[assignment]
    assert len(client.containers.created) == 1
    return client.containers.created[0]


# ----------------------------------------------------------------------------- the basics


def test_basic_options() -> None:
    runtime = make_runtime()
    container = runtime.start(spec())
    options = runtime._client.containers.created[0]  # type: ignore[attr-defined]
    assert options["image"] == "python:3.11"
    # the image's entrypoint is replaced: the lifeline is what runs, with the commands as its argument
    assert options["entrypoint"] == ["/bin/sh", "-c", LIFELINE_SCRIPT, "dstack"]
    assert options["command"] == ["python train.py"]
    assert options["name"] == "dstack-witty-otter-1234-train-0-0"
    assert options["environment"] == {"DSTACK_RUN": "witty-otter-1234"}
    assert options["working_dir"] == "/workflow"
    assert options["labels"] == {"ai.dstack.task": "witty-otter-1234/train.0/0"}
    assert options["stdin_open"] is True and options["detach"] is False  # standard input closes with the worker
    assert runtime._client.containers.created  # type: ignore[attr-defined]
    assert options["volumes"] == {"/var/dstack/tasks/x": {"bind": "/workflow", "mode": "rw"},
                                  "/var/dstack/inputs": {"bind": "/inputs", "mode": "ro"}}
    assert isinstance(container, DockerContainer)
    assert container.name == "dstack-witty-otter-1234-train-0-0"
    assert container._container.started == 1  # type: ignore[attr-defined]


def test_no_limits_when_none_are_asked_but_the_workers_share_of_memory() -> None:
    options = created(make_runtime(gpu_devices=True), spec())
    for key in ("nano_cpus", "memswap_limit", "shm_size", "device_requests"):
        assert key not in options, key
    assert options["mem_limit"] == f"{16384 - 1024}m"  # a job that fills its memory ends itself, not the worker
    options = created(make_runtime(engine_memory_mib=256 * 1024), spec())
    assert options["mem_limit"] == f"{256 * 1024 - 256 * 1024 // 20}m"  # 5% of a big machine


# ----------------------------------------------------------------------------- GPUs


def test_gpus_are_device_requests_when_the_gpus_are_real() -> None:
    options = created(make_runtime(gpu_devices=True), spec(gpu_ids=["1", "3"]))
    [request] = options["device_requests"]
    assert isinstance(request, docker.types.DeviceRequest)
    assert request.device_ids == ["1", "3"]
    assert request.capabilities == [["gpu"]]
    assert not request.count  # the ids, not a count, choose the GPUs


def test_no_device_requests_when_the_gpus_are_not_devices() -> None:
    options = created(make_runtime(gpu_devices=False), spec(gpu_ids=["0", "1"]))
    assert "device_requests" not in options


def test_no_device_requests_without_gpus() -> None:
    options = created(make_runtime(gpu_devices=True), spec(gpu_ids=[]))
    assert "device_requests" not in options


# ----------------------------------------------------------------------------- CPU, memory, shared memory


@pytest.mark.parametrize(("cpu", "engine_cpus", "nano_cpus"), [
    (4, 2, 2_000_000_000),  # clamped to what the engine has
    (2, 2, 2_000_000_000),
    (0.5, 2, 500_000_000),
    (1.5, 8, 1_500_000_000),
    (0.25, 1, 250_000_000),
    (16, 7.0, 7_000_000_000),
])
def test_nano_cpus(cpu: float, engine_cpus: float, nano_cpus: int) -> None:
    options = created(make_runtime(engine_cpus=engine_cpus), spec(cpu=cpu))
    assert options["nano_cpus"] == nano_cpus
    assert isinstance(options["nano_cpus"], int)


def test_memory_limit_without_swap() -> None:
    options = created(make_runtime(), spec(memory_mib=512))
    assert options["mem_limit"] == "512m"
    assert options["memswap_limit"] == "512m"


def test_shm_size() -> None:
    options = created(make_runtime(), spec(shm_size_mib=2048))
    assert options["shm_size"] == "2048m"
    assert "memswap_limit" not in options


def test_all_limits_together() -> None:
    options = created(make_runtime(gpu_devices=True, engine_cpus=32),
                      spec(cpu=8, memory_mib=65536, shm_size_mib=8192, gpu_ids=["0", "1"]))
    assert options["nano_cpus"] == 8_000_000_000
    assert options["mem_limit"] == options["memswap_limit"] == "65536m"
    assert options["shm_size"] == "8192m"
    assert options["device_requests"][0].device_ids == ["0", "1"]


# ----------------------------------------------------------------------------- network


def test_host_network_publishes_no_ports() -> None:
    options = created(make_runtime(network="host"), spec(ports=[8888, 6006]))
    assert options["network_mode"] == "host"
    assert "ports" not in options


def test_a_container_is_contained_by_default() -> None:
    options = created(make_runtime(), spec())
    assert options["security_opt"] == ["no-new-privileges"] and options["pids_limit"] == 4096
    assert "privileged" not in options and "cap_add" not in options


def test_a_jobs_process_limit() -> None:
    assert created(make_runtime(), spec(pids=64))["pids_limit"] == 64


def test_on_the_host_network_the_host_name_resolves_to_the_workers_address() -> None:
    options = created(make_runtime(network="host"), spec(address="127.0.0.11"))
    name = socket.gethostname()
    assert options["hostname"] == name and options["extra_hosts"][-1] == f"{name}:127.0.0.11"


def test_the_machines_other_host_entries_are_kept(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    name = socket.gethostname()
    hosts.write_text(f"# comment\n127.0.0.1 localhost\n\n127.0.1.1 {name} {name}.lan  # Debian's\n"
                     "10.1.2.3 nfs-server data  # the site's own\n")
    assert _host_name_at("192.0.2.7", hosts)["extra_hosts"] == [
        "localhost:127.0.0.1", f"{name}.lan:127.0.1.1", "nfs-server:10.1.2.3", "data:10.1.2.3", f"{name}:192.0.2.7"]


def test_a_worker_address_that_is_a_name_resolves_as_the_machine_says() -> None:
    options = created(make_runtime(network="host"), spec(address="gpu-node-3.example.com"))
    assert "hostname" not in options and "extra_hosts" not in options


def test_bridge_network_publishes_each_port_on_a_free_host_port() -> None:
    options = created(make_runtime(network="bridge"), spec(ports=[8888, 6006]))
    assert options["ports"] == {"8888/tcp": None, "6006/tcp": None}
    assert "network_mode" not in options


def test_bridge_network_without_ports() -> None:
    options = created(make_runtime(network="bridge"), spec())
    assert options["ports"] == {}


def test_published_ports_on_the_host_network_are_the_ports() -> None:
    runtime = make_runtime(network="host")
    container = runtime.start(spec(ports=[8888]))
    assert container.published_ports([8888, 6006]) == [8888, 6006]


# ----------------------------------------------------------------------------- refusals


def test_missing_image() -> None:
    runtime = make_runtime()
    runtime._client.containers.error = docker.errors.ImageNotFound("no such image")  # type: ignore[attr-defined]
    with pytest.raises(ImageNotFound, match="python:3.11"):
        runtime.start(spec())


def test_a_container_of_that_name_is_the_one_started_before() -> None:
    runtime = make_runtime()
    containers: FakeContainers = runtime._client.containers  # type: ignore[attr-defined]
    existing = FakeContainer(spec().name, {"ai.dstack.task": "before"})
    containers.existing[existing.name] = existing
    containers.error = docker.errors.APIError("Conflict", response=SimpleNamespace(status_code=409))
    container = runtime.start(spec())
    assert isinstance(container, DockerContainer)
    assert container._container is existing  # type: ignore[attr-defined]


def test_other_refusals() -> None:
    runtime = make_runtime()
    runtime._client.containers.error = docker.errors.APIError(  # type: ignore[attr-defined]
        "Bad Request", response=SimpleNamespace(status_code=400), explanation="invalid device request")
    with pytest.raises(RuntimeErrorInContainer, match="invalid device request"):
        runtime.start(spec(gpu_ids=["0"]))


# ----------------------------------------------------------------------------- no commands


def test_no_commands_run_the_image_s_own_entrypoint_and_cmd() -> None:
    runtime = make_runtime()
    runtime._client.images.configs["app:1"] = {"Entrypoint": ["/app/run"], "Cmd": ["--port", "80 81"]}  # type: ignore
    options = created(runtime, spec(image="app:1", script=""))
    assert options["command"] == ["/app/run --port '80 81'"]


@pytest.mark.parametrize("configs, message", [
    ({}, "image 'app:1' is not present on this worker"),
    ({"app:1": {"Entrypoint": None, "Cmd": None}}, "image 'app:1' has no command of its own"),
])
def test_no_commands_and_no_image_command(configs: dict[str, Any], message: str) -> None:
    runtime = make_runtime()
    runtime._client.images.configs.update(configs)  # type: ignore[attr-defined]
    with pytest.raises(DstackError, match=message):
        runtime.start(spec(image="app:1", script=""))


# ----------------------------------------------------------------------------- removal


class _Refusing:
    """A container whose removal fails with ``error``."""

    name = "dstack-run-job-0-1"
    labels: dict[str, str] = {}

    def __init__(self, error: Exception) -> None:
        self.error = error

    def remove(self, force: bool) -> None:
        raise self.error


@pytest.mark.parametrize("error", [docker.errors.NotFound("gone"),
                                   docker.errors.APIError("conflict", response=SimpleNamespace(status_code=409))])
def test_removing_a_container_that_is_gone_or_going_is_no_error(error: Exception) -> None:
    DockerContainer(_Refusing(error), network="host").remove()  # type: ignore[arg-type]


def test_other_failures_to_remove_a_container_are_raised() -> None:
    error = docker.errors.APIError("engine broke", response=SimpleNamespace(status_code=500))
    with pytest.raises(docker.errors.APIError):
        DockerContainer(_Refusing(error), network="host").remove()  # type: ignore[arg-type]
