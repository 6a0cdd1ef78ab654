"""A container runtime for unit tests: containers that print scripted output and end as told.

A :class:`Script` says what one task's container does; :class:`FakeRuntime` starts a
:class:`FakeContainer` per task (scripts are picked by the task id, ``JOB_ID`` in the
container's environment) and keeps every container it started, so a test can look at the
:class:`~dstack.workers.runtime.ContainerSpec` it got, whether it was stopped and removed.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dstack import defaults
from dstack.errors import ImageNotFound, ImageNotInRegistry
from dstack.workers.runtime import Container, ContainerRuntime, ContainerSpec, ExitInfo

#: Exit code of a container stopped by SIGTERM (128 + 15).
SIGTERM_EXIT = 143


@dataclass
class Script:
    """What a fake container does: prints ``output``, then exits with ``exit_code`` (or runs on
    until it is stopped, when ``until_stopped``)."""

    output: list[bytes] = field(default_factory=list)
    #: seconds it runs on after its output (ended early by a stop)
    duration: float = 0.0
    exit_code: int = 0
    oom_killed: bool = False
    #: it runs until :meth:`FakeContainer.stop`, then exits with ``SIGTERM_EXIT``
    until_stopped: bool = False
    #: called with the spec when the container starts: write the files the task writes
    on_start: Optional[Callable[[ContainerSpec], None]] = None


class FakeContainer(Container):
    def __init__(self, spec: ContainerSpec, script: Script) -> None:
        self.spec = spec
        self.script = script
        self.name = spec.name
        self.labels = dict(spec.labels)
        self.stopped = threading.Event()
        self.removed = False

    def published_ports(self, ports: list[int]) -> list[int]:
        return list(ports)

    def logs(self) -> Iterator[bytes]:
        yield from self.script.output
        if self.script.until_stopped:
            self.stopped.wait()
        elif self.script.duration:
            self.stopped.wait(self.script.duration)

    def wait(self) -> ExitInfo:
        if self.script.until_stopped:
            self.stopped.wait()
        if self.stopped.is_set():
            return ExitInfo(exit_code=SIGTERM_EXIT, oom_killed=False)
        return ExitInfo(exit_code=self.script.exit_code, oom_killed=self.script.oom_killed)

    def stop(self, grace_seconds: int) -> None:
        self.stopped.set()

    def remove(self) -> None:
        self.removed = True


class FakeRuntime(ContainerRuntime):
    """Starts a :class:`FakeContainer` per task; ``scripts`` maps task ids to what they do
    (a task without a script prints nothing and exits with 0)."""

    network = "bridge"

    def __init__(self, scripts: Optional[dict[str, Script]] = None) -> None:
        self.scripts = dict(scripts or {})
        #: every container started, by name
        self.started: dict[str, FakeContainer] = {}
        #: containers left by an earlier life of a worker (listed by :meth:`managed`)
        self.leftovers: list[FakeContainer] = []
        #: image ids by image name (:meth:`image_id`), and images the machine does not have
        self.image_ids: dict[str, str] = {}
        self.missing_images: set[str] = set()
        #: what a pull of each image yields (Docker's progress events); an image not here is not in any registry
        self.registry: dict[str, list[dict[str, Any]]] = {}
        #: the error a pull of an image raises (before any event)
        self.pull_errors: dict[str, Exception] = {}
        #: every pull, with its credentials; every image removed
        self.pulls: list[tuple[str, Optional[tuple[str, str]]]] = []
        self.removed_images: list[str] = []
        #: bytes free on the images' disk (``None``: unknown)
        self.free: Optional[int] = None
        #: called with each event before it is yielded (to hold a pull in flight)
        self.on_pull_event: Optional[Callable[[dict[str, Any]], None]] = None

    def start(self, spec: ContainerSpec) -> Container:
        if spec.name in self.started:  # started before: the same container
            return self.started[spec.name]
        if spec.image in self.missing_images:
            raise ImageNotFound(f"image '{spec.image}' is not present on this worker")
        script = self.scripts.get(spec.env.get("JOB_ID", ""), Script())
        container = FakeContainer(spec, script)
        self.started[spec.name] = container
        if script.on_start is not None:
            script.on_start(spec)
        return container

    def managed(self) -> list[Container]:
        return [c for c in [*self.leftovers, *self.started.values()] if not c.removed]

    def image_id(self, image: str) -> str:
        """``sha256:`` and the image's name, or what :attr:`image_ids` says; an image named in
        :attr:`missing_images` is not on the machine."""
        if image in self.missing_images:
            raise ImageNotFound(f"image '{image}' is not present on this worker")
        return self.image_ids.get(image, f"sha256:{image}")

    def pull(self, image: str, auth: Optional[tuple[str, str]] = None) -> Iterator[dict[str, Any]]:
        self.pulls.append((image, auth))
        if image in self.pull_errors:
            raise self.pull_errors[image]
        if image not in self.registry:
            raise ImageNotInRegistry(f"image '{image}' not found in its registry")
        for event in self.registry[image]:
            if self.on_pull_event is not None:
                self.on_pull_event(event)
            yield event
        self.missing_images.discard(image)

    def remove_image(self, image: str) -> bool:
        self.removed_images.append(image)
        self.missing_images.add(image)
        return True

    def disk_free(self) -> Optional[int]:
        return self.free


def mounted(spec: ContainerSpec, inside: str) -> Path:
    """The host folder mounted at ``inside`` in the container of ``spec``."""
    return next(Path(host) for host, path, _ in spec.mounts if path == inside)


def workdir(spec: ContainerSpec) -> Path:
    """The task's project folder on the host (``/workflow`` in the container)."""
    return mounted(spec, defaults.CONTAINER_WORKDIR)


def provider_io(spec: ContainerSpec) -> Path:
    """The provider's ``io`` folder on the host, where it writes ``jobs.json`` or ``error.json``."""
    return mounted(spec, f"{defaults.CONTAINER_DSTACK_DIR}/io")
