"""The container runtime: one interface, and Docker behind it."""
from __future__ import annotations

import abc
import ipaddress
import logging
import shlex
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import docker
import docker.auth
import docker.errors
import docker.models.containers
import docker.types
import docker.utils
import requests

from dstack import defaults
from dstack.errors import (
    DiskFull,
    ImageNotFound,
    ImageNotInRegistry,
    PullFailed,
    RegistryUnauthorized,
    RegistryUnreachable,
    RuntimeErrorInContainer,
)
from dstack.names import CONTAINER_LABEL

log = logging.getLogger(__name__)


@dataclass
class ContainerSpec:
    """Everything needed to start one task's container."""

    name: str
    image: str
    #: shell commands; empty: the image's own command (ENTRYPOINT and CMD)
    script: str
    env: dict[str, str]
    working_dir: str
    #: ``(host path, container path, read_only)``
    mounts: list[tuple[str, str, bool]]
    labels: dict[str, str]
    ports: list[int] = field(default_factory=list)
    cpu: Optional[float] = None
    memory_mib: Optional[int] = None
    shm_size_mib: Optional[int] = None
    #: the GPUs the container gets (device ids)
    gpu_ids: list[str] = field(default_factory=list)
    #: the address other machines reach the container at (the worker's ``DSTACK_WORKER_HOST``)
    address: str = ""
    #: the most processes the container may run at once
    pids: int = defaults.JOB_PIDS_LIMIT


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    oom_killed: bool


class Container(abc.ABC):
    """A started container."""

    name: str
    labels: dict[str, str]

    @abc.abstractmethod
    def published_ports(self, ports: list[int]) -> list[int]:
        """The host ports the container's ``ports`` are reachable on, in the same order."""

    @abc.abstractmethod
    def logs(self) -> Iterator[bytes]:
        """The container's output (stdout and stderr) from its start, until it exits."""

    @abc.abstractmethod
    def wait(self) -> ExitInfo:
        """Block until the container exits."""

    @abc.abstractmethod
    def stop(self, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``."""

    @abc.abstractmethod
    def remove(self) -> None: ...


class ContainerRuntime(abc.ABC):
    network: str

    @abc.abstractmethod
    def start(self, spec: ContainerSpec) -> Container:
        """Start a container, or return the one already started under ``spec.name``.

        Raises:
            ImageNotFound: the image is not on this machine.
            RuntimeErrorInContainer: the runtime refused.
        """

    @abc.abstractmethod
    def managed(self) -> list[Container]:
        """Every container dstack started on this machine, running or not."""

    @abc.abstractmethod
    def image_id(self, image: str) -> str:
        """The id of ``image`` on this machine (its content: another build under the same name has another id).

        Raises:
            ImageNotFound: the image is not on this machine.
        """

    @abc.abstractmethod
    def pull(self, image: str, auth: Optional[tuple[str, str]] = None) -> Iterator[dict[str, Any]]:
        """Pull ``image`` from its registry with ``auth`` (``(username, password)``; ``None``: the machine's own
        credentials), yielding the registry's progress events (Docker's: ``{"id": LAYER, "status": ...,
        "progressDetail": {"current": BYTES, "total": BYTES}}``) until it is present.

        Raises:
            ImageNotFound: the registry has no such image.
            RegistryUnauthorized, RegistryUnreachable, DiskFull, PullFailed: the pull failed, for that reason.
        """

    @abc.abstractmethod
    def remove_image(self, image: str) -> bool:
        """Remove ``image`` (a name or an id) from this machine unless a container uses it; returns whether it did."""

    @abc.abstractmethod
    def disk_free(self) -> Optional[int]:
        """Bytes free on the disk that holds the images (``None``: this process cannot see that disk)."""


#: The container's main process: runs the task's script (``$1``) and stops it (SIGTERM to every
#: process of the container) when the container is stopped, or when its standard input ends. The
#: worker holds that input open for as long as it lives, so a worker that dies, even by SIGKILL,
#: takes its jobs with it and the scheduler can run them elsewhere without a second copy running on.
LIFELINE_SCRIPT = """exec 3<&0 0</dev/null
/bin/sh -c "$1" 3<&- &
job=$!
trap 'kill -TERM -1 2>/dev/null' TERM INT
{ while read -r _ <&3; do :; done; kill -TERM -1 2>/dev/null; } &
exec 3<&-
wait $job
code=$?
while kill -0 $job 2>/dev/null; do wait $job; code=$?; done
exit $code
"""


class DockerContainer(Container):
    def __init__(self, container: docker.models.containers.Container, network: str,
                 lifeline: Optional[object] = None) -> None:
        self._container = container
        self._network = network
        self._lifeline = lifeline  # the container's standard input: open while this worker lives
        self.name = container.name or ""  # the engine names every container; the stubs allow None
        self.labels = dict(container.labels or {})

    def published_ports(self, ports: list[int]) -> list[int]:
        if self._network == "host" or not ports:
            return list(ports)
        self._container.reload()
        bindings = self._container.attrs["NetworkSettings"]["Ports"] or {}
        return [int(bindings[f"{port}/tcp"][0]["HostPort"]) for port in ports]

    def logs(self) -> Iterator[bytes]:
        return iter(self._container.logs(stream=True, follow=True, stdout=True, stderr=True))

    def wait(self) -> ExitInfo:
        while True:
            try:
                result = self._container.wait()
                break
            except requests.exceptions.ConnectionError:  # the client's read timeout on a long wait
                continue
        exit_code = int(result.get("StatusCode", -1))
        if exit_code == 0:  # no inspection on the way to a chain's next job: a job that exits 0 is done
            return ExitInfo(exit_code=0, oom_killed=False)
        self._container.reload()
        return ExitInfo(exit_code=exit_code, oom_killed=bool(self._container.attrs["State"].get("OOMKilled")))

    def stop(self, grace_seconds: int) -> None:
        try:
            self._container.stop(timeout=grace_seconds)
        except docker.errors.NotFound:
            pass

    def remove(self) -> None:
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: its removal is in progress already (e.g. by a clean-up)
                raise
        if self._lifeline is not None:
            self._lifeline.close()  # type: ignore[attr-defined]


class DockerRuntime(ContainerRuntime):
    """Containers on the local Docker engine (``DOCKER_HOST`` or the default socket).

    Args:
        network: ``host`` or ``bridge``; empty picks bridge when the engine has one.
        gpu_devices: whether the machine's GPUs are real devices, given to containers through
            the NVIDIA container runtime (else a container's GPUs are named in its environment only).
        registry_auth: credentials per registry host, used for pulls that bring none of their own, over
            those of the Docker ``config.json`` of this process's user (``DOCKER_CONFIG``), which the
            docker SDK reads.
    """

    def __init__(self, network: str = "", gpu_devices: bool = False,
                 registry_auth: Optional[dict[str, tuple[str, str]]] = None) -> None:
        self.gpu_devices = gpu_devices
        self._registry_auth = dict(registry_auth or {})
        try:
            self._client = docker.from_env(timeout=120)
            self._client.ping()
        except docker.errors.DockerException as e:
            raise RuntimeErrorInContainer(f"cannot reach the Docker engine: {e}; is dockerd running?") from None
        if not network:
            names = {n.name for n in self._client.networks.list()}
            network = "bridge" if "bridge" in names else "host"
        self.network = network
        info = self._client.info()
        self._engine_cpus = float(info.get("NCPU") or 1)
        self._engine_memory_mib = int(info.get("MemTotal") or 0) // 2**20
        self._data_root = str(info.get("DockerRootDir") or "")

    def start(self, spec: ContainerSpec) -> Container:
        script = spec.script or self._image_command(spec.image)
        options: dict[str, Any] = dict(
            # the image's own ENTRYPOINT is replaced too: it would otherwise be handed the lifeline as arguments
            image=spec.image, entrypoint=["/bin/sh", "-c", LIFELINE_SCRIPT, "dstack"], command=[script], name=spec.name,
            environment=spec.env, working_dir=spec.working_dir, labels=spec.labels,
            stdin_open=True, detach=False,  # standard input open, closed when the one client attached goes
            volumes={host: {"bind": inside, "mode": "ro" if ro else "rw"} for host, inside, ro in spec.mounts},
            # contained: no process gains privileges (setuid, file capabilities) beyond Docker's default
            # capabilities, and a fork bomb meets its own limit, not the machine's
            security_opt=["no-new-privileges"], pids_limit=spec.pids,
        )
        if self.network == "host":
            options["network_mode"] = "host"
            options.update(_host_name_at(spec.address))
        else:
            options["ports"] = {f"{port}/tcp": None for port in spec.ports}
        if spec.cpu:  # a worker may declare more CPUs than its machine has; the engine refuses more
            options["nano_cpus"] = int(min(spec.cpu, self._engine_cpus) * 1e9)
        if spec.memory_mib:
            options["mem_limit"] = options["memswap_limit"] = f"{spec.memory_mib}m"
        elif self._engine_memory_mib:  # no limit asked for: the machine's memory, but what the worker holds back
            reserve = max(defaults.WORKER_MEMORY_RESERVE_MIB, self._engine_memory_mib // 20)
            options["mem_limit"] = f"{max(self._engine_memory_mib - reserve, 256)}m"
        if spec.shm_size_mib:
            options["shm_size"] = f"{spec.shm_size_mib}m"
        if spec.gpu_ids and self.gpu_devices:
            options["device_requests"] = [docker.types.DeviceRequest(device_ids=spec.gpu_ids, capabilities=[["gpu"]])]
        try:
            container = self._create(options)
        except docker.errors.ImageNotFound:
            raise _image_missing(spec.image) from None
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: a container of that name exists: started before
                raise RuntimeErrorInContainer(f"Docker refused the container: {e.explanation or e}") from None
            return DockerContainer(self._client.containers.get(spec.name), self.network)
        try:
            lifeline = container.attach_socket(params={"stdin": 1, "stream": 1})
            container.start()
        except docker.errors.APIError as e:
            raise RuntimeErrorInContainer(f"Docker could not start the container: {e.explanation or e}") from None
        return DockerContainer(container, self.network, lifeline)

    def _create(self, options: dict[str, Any]) -> docker.models.containers.Container:
        """``containers.create(**options)`` without its inspection of the new container: one Docker API call fewer
        on every task's way to its start, for attributes the worker set itself (id, name, labels). The models'
        own conversion of the options is used (a private function of docker-py; where it is missing, the
        models' ``create`` does it all)."""
        convert = getattr(docker.models.containers, "_create_container_args", None)
        if convert is None:
            return self._client.containers.create(**options)
        api = self._client.api
        created = api.create_container(**convert({**options, "version": api.api_version}))
        return self._client.containers.prepare_model(
            {"Id": created["Id"], "Name": f"/{options['name']}", "Config": {"Labels": dict(options["labels"])}})

    def _image_command(self, image: str) -> str:
        """The image's own command (its ENTRYPOINT, then its CMD), as a shell command line."""
        try:
            config = self._client.images.get(image).attrs.get("Config") or {}
        except docker.errors.ImageNotFound:
            raise _image_missing(image) from None
        argv = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
        if not argv:
            raise RuntimeErrorInContainer(f"image '{image}' has no command of its own (no ENTRYPOINT or CMD); "
                                          "give the job commands")
        return shlex.join(argv)

    def managed(self) -> list[Container]:
        # ignore_removed: a container removed between the listing and its inspection (another worker of this
        # machine cleaning up its own) is left out, instead of failing this worker's start
        found = self._client.containers.list(all=True, filters={"label": CONTAINER_LABEL}, ignore_removed=True)
        return [DockerContainer(c, self.network) for c in found]

    def image_id(self, image: str) -> str:
        try:
            return str(self._client.images.get(image).id)
        except docker.errors.ImageNotFound:
            raise _image_missing(image) from None
        except docker.errors.APIError as e:
            raise RuntimeErrorInContainer(f"Docker could not inspect image '{image}': {e.explanation or e}") from None


    def pull(self, image: str, auth: Optional[tuple[str, str]] = None) -> Iterator[dict[str, Any]]:
        repository, tag = docker.utils.parse_repository_tag(image)
        if auth is None:
            registry, _ = docker.auth.resolve_repository_name(repository)
            auth = self._registry_auth.get(registry)
        auth_config = {"username": auth[0], "password": auth[1]} if auth else None
        try:
            for event in self._client.api.pull(repository, tag=tag or "latest", stream=True, decode=True,
                                               auth_config=auth_config):
                if "error" in event:
                    raise pull_failure(image, str(event.get("error")), auth is not None)
                yield event
        except docker.errors.APIError as e:
            raise pull_failure(image, str(e.explanation or e), auth is not None) from None
        except requests.exceptions.RequestException as e:
            raise RuntimeErrorInContainer(f"the Docker engine went away while pulling '{image}': {e}") from None

    def remove_image(self, image: str) -> bool:
        """The name ``image`` is removed; the image's layers go with its last name."""
        try:
            self._client.images.remove(image)
            return True
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError as e:
            log.info("image %s stays: %s", image, e.explanation or e)
            return False

    def disk_free(self) -> Optional[int]:
        try:
            return shutil.disk_usage(self._data_root).free if self._data_root else None
        except OSError:  # a worker in a container without Docker's data root mounted
            return None


#: What Docker says when a registry cannot be reached (or is overloaded): worth trying again.
_UNREACHABLE = ("dial tcp", "connection refused", "no such host", "i/o timeout", "tls handshake timeout",
                "connection reset", "server misbehaving", "client.timeout", "toomanyrequests", "503 service",
                "502 bad gateway", "504 gateway", "unexpected eof", "network is unreachable")
_UNAUTHORIZED = ("unauthorized", "no basic auth credentials", "authentication required", "401")
_NOT_FOUND = ("manifest unknown", "not found", "repository does not exist", "name unknown")


def pull_failure(image: str, message: str, with_credentials: bool) -> PullFailed:
    """The error of a failed pull, typed by what Docker's ``message`` says went wrong."""
    text = message.lower()
    if "no space left on device" in text:
        return DiskFull(f"disk full: no room for image '{image}' on this worker ({message})")
    if any(marker in text for marker in _UNREACHABLE):
        return RegistryUnreachable(f"registry unreachable for image '{image}': {message}")
    if any(marker in text for marker in _UNAUTHORIZED):
        given = "refused the credentials given" if with_credentials else "wants credentials and got none"
        return RegistryUnauthorized(f"unauthorized: the registry of image '{image}' {given} ({message}); set "
                                    "the workflow's registry_auth or the worker's credentials")
    if "pull access denied" in text or any(marker in text for marker in _NOT_FOUND):
        return ImageNotInRegistry(f"image '{image}' not found in its registry (check its name and tag): {message}")
    return PullFailed(f"pulling image '{image}' failed: {message}")


def _host_name_at(address: str, hosts_file: Path = Path("/etc/hosts")) -> dict[str, Any]:
    """With host networking, the container's host name resolves to ``address`` (an IP address) inside it, as
    other machines reach it: programs that advertise their host's address by resolving its name (gloo, NCCL,
    Ray, Spark) tell the others that one, not the loopback address a Debian ``/etc/hosts`` maps the name to.
    Docker then writes the container a ``/etc/hosts`` of its own: the machine's other entries are kept in it."""
    try:
        ipaddress.ip_address(address)
    except ValueError:  # a name: it resolves as the machine says
        return {}
    name = socket.gethostname()
    try:
        entries = [line.split("#", 1)[0].split() for line in hosts_file.read_text().splitlines()]
    except OSError:
        entries = []
    kept = [f"{other}:{fields[0]}" for fields in entries if len(fields) > 1 for other in fields[1:] if other != name]
    return {"hostname": name, "extra_hosts": [*kept, f"{name}:{address}"]}


def _image_missing(image: str) -> ImageNotFound:
    return ImageNotFound(f"image '{image}' is not present on this worker; build or pull it there "
                         "(`docker images` lists what it has)")
