"""The images of a worker's tasks: pulled when missing (once, however many tasks wait for the same one), the
pull's progress in each waiting task's log, and the images the worker pulled removed when no job used them
for a while and the disk runs low.

Only images this worker pulled are ever removed: an image someone built or loaded on the machine by hand
(what a ``never`` pull policy relies on) stays, as does any image a task of this worker still needs.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from dstack import defaults
from dstack.errors import DstackError, ImageNotFound, RegistryUnreachable
from dstack.workers.runtime import ContainerRuntime

log = logging.getLogger(__name__)

#: Seconds of the first wait before a registry that could not be reached is tried again; doubled each time.
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 30.0
#: Docker's statuses of a layer that is on the machine at the end of a pull.
_LAYER_DONE = ("Pull complete", "Already exists")


class PullCancelled(Exception):
    """The task that waited for a pull was stopped before its image arrived."""


class PullProgress:
    """A pull's progress from Docker's events: layers done of those seen, bytes downloaded of those known."""

    def __init__(self) -> None:
        self._status: dict[str, str] = {}
        self._current: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self.started = time.monotonic()

    def feed(self, event: dict[str, Any]) -> None:
        layer, status = event.get("id"), str(event.get("status") or "")
        if not layer or status.startswith("Pulling from"):
            return  # the image's own lines (its tag, digest, summary) are no layer's
        self._status[layer] = status
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            self._current[layer], self._total[layer] = int(detail.get("current") or 0), int(detail["total"])
        elif status in ("Download complete", "Pull complete", "Extracting") and layer in self._total:
            self._current[layer] = self._total[layer]

    @property
    def layers_done(self) -> int:
        return sum(1 for status in self._status.values() if status in _LAYER_DONE)

    def line(self, image: str) -> str:
        """``pulling IMAGE: 3/7 layers, 45.2/120.0 MB``."""
        mb = f", {sum(self._current.values()) / 1e6:.1f}/{sum(self._total.values()) / 1e6:.1f} MB" \
            if self._total else ""
        return f"pulling {image}: {self.layers_done}/{len(self._status)} layers{mb}"

    def summary(self, image: str) -> str:
        """``pulled IMAGE: 7 layers (3 already here), 120.0 MB in 4.2 s``, or ``IMAGE is up to date`` when the
        registry had nothing new."""
        if not self._status:
            return f"{image} is up to date (checked in {time.monotonic() - self.started:.1f} s)"
        here = sum(1 for status in self._status.values() if status == "Already exists")
        return (f"pulled {image}: {len(self._status)} layers ({here} already here), "
                f"{sum(self._total.values()) / 1e6:.1f} MB in {time.monotonic() - self.started:.1f} s")


@dataclass
class _Pull:
    """One pull in flight; every task waiting for it hears its progress."""

    image: str
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[DstackError] = None
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    last_line: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: every task that waited for it was stopped: the pull stops at its next event
    abandoned: bool = False

    def listen(self, listener: Callable[[str], None]) -> None:
        with self.lock:
            self.listeners.append(listener)
            if self.last_line:  # a task that joins late hears what is pulled, and where the pull is
                header = f"pulling {self.image}"
                listener(header)
                if self.last_line != header:
                    listener(self.last_line)

    def leave(self, listener: Callable[[str], None]) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)

    def tell(self, line: str) -> None:
        with self.lock:
            self.last_line = line
            for listener in list(self.listeners):
                listener(line)


class UsageRecord:
    """The images this worker pulled, and when a job last used each (``images.json`` in the worker's home).

    Images are named as tasks name them (``python:3.11``): recording a use costs no call to Docker.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            self._images: dict[str, float] = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self._images = {}

    def pulled(self, image: str, now: Optional[float] = None) -> None:
        with self._lock:
            self._images[image] = time.time() if now is None else now
            self._save()

    def used(self, image: str, now: Optional[float] = None) -> None:
        """A job used ``image``; only the images this worker pulled are recorded."""
        with self._lock:
            if image in self._images:
                self._images[image] = time.time() if now is None else now
                self._save()

    def forget(self, image: str) -> None:
        with self._lock:
            if self._images.pop(image, None) is not None:
                self._save()

    def unused_since(self, before: float) -> list[str]:
        """The pulled images no job used since ``before``, longest unused first."""
        with self._lock:
            return sorted((i for i, t in self._images.items() if t < before), key=lambda i: self._images[i])

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self._path.with_suffix(".partial")
        scratch.write_text(json.dumps(self._images))
        os.replace(scratch, self._path)


class ImagePuller:
    """Pulls the images of this worker's tasks: one pull per image (and credentials) at a time, whatever the
    number of tasks waiting for it; a registry that cannot be reached is tried again, with backoff, for
    ``retry_timeout`` seconds.

    Args:
        runtime: the container runtime that pulls.
        record: where pulled images and their use are recorded.
        retry_timeout: seconds of retries for an unreachable registry before the pull fails.
        progress_interval: seconds between two progress lines.
    """

    def __init__(self, runtime: ContainerRuntime, record: UsageRecord,
                 retry_timeout: float = defaults.PULL_RETRY_TIMEOUT,
                 progress_interval: float = defaults.PULL_PROGRESS_INTERVAL,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._runtime = runtime
        self.record = record
        self._retry_timeout = retry_timeout
        self._interval = progress_interval
        self._sleep = sleep
        self._pulls: dict[tuple[str, Optional[tuple[str, str]]], _Pull] = {}
        self._lock = threading.Lock()

    def pulling(self) -> set[str]:
        """The images being pulled now."""
        with self._lock:
            return {image for image, _ in self._pulls}

    def pull(self, image: str, auth: Optional[tuple[str, str]], on_line: Callable[[str], None],
             cancelled: Callable[[], bool], wait_step: float = 0.25,
             on_wait: Callable[[], None] = lambda: None) -> None:
        """Pull ``image`` (or wait for the pull of it already in flight), telling ``on_line`` its progress;
        ``on_wait`` is called every ``wait_step`` seconds while it waits.

        Raises:
            PullCancelled: ``cancelled()`` became true while waiting (the pull goes on for the others).
            ImageNotFound, RegistryUnauthorized, RegistryUnreachable, DiskFull, PullFailed: the pull failed.
        """
        key = (image, auth)
        with self._lock:
            pull = self._pulls.get(key)
            starting = pull is None
            if pull is None:
                pull = self._pulls[key] = _Pull(image)
            pull.listen(on_line)  # before the pull can end: the pull removes itself under this lock
            if starting:
                threading.Thread(target=self._run, args=(key, pull), name=f"pull {image}", daemon=True).start()
        try:
            while not pull.done.wait(wait_step):
                on_wait()
                if cancelled():
                    raise PullCancelled(image)
        finally:
            with self._lock:
                pull.leave(on_line)
                if not pull.listeners and not pull.done.is_set():  # no task waits for it any more
                    pull.abandoned = True
                    if self._pulls.get(key) is pull:
                        del self._pulls[key]  # a task that needs the image later starts a pull of its own
        if pull.error is not None:
            raise pull.error

    def _run(self, key: tuple[str, Optional[tuple[str, str]]], pull: _Pull) -> None:
        image, auth = key
        deadline = time.monotonic() + self._retry_timeout
        delay = FIRST_RETRY_DELAY
        try:
            while True:
                try:
                    self._pull_once(image, auth, pull)
                    self.record.pulled(image)
                    return
                except PullCancelled:
                    log.info("pulling %s stopped: no task waits for it", image)
                    return
                except RegistryUnreachable as e:
                    if time.monotonic() + delay > deadline:
                        pull.error = RegistryUnreachable(f"{e} (tried for {self._retry_timeout:g} s)")
                        return
                    pull.tell(f"registry unreachable, trying again in {delay:g} s: {e}")
                    self._sleep(delay)
                    if pull.abandoned:
                        return
                    delay = min(delay * 2, MAX_RETRY_DELAY)
        except DstackError as e:
            pull.error = e
        except Exception as e:  # a bug: the waiting tasks fail, the worker goes on
            log.exception("pulling %s failed", image)
            pull.error = DstackError(f"pulling image '{image}' failed in the worker: {e}")
        finally:
            with self._lock:
                if self._pulls.get(key) is pull:
                    del self._pulls[key]
            pull.done.set()

    def _pull_once(self, image: str, auth: Optional[tuple[str, str]], pull: _Pull) -> None:
        progress = PullProgress()
        pull.tell(f"pulling {image}")
        told = time.monotonic()
        for event in self._runtime.pull(image, auth):  # leaving the loop closes the stream: Docker stops the pull
            if pull.abandoned:
                raise PullCancelled(image)
            progress.feed(event)
            if time.monotonic() - told >= self._interval:
                pull.tell(progress.line(image))
                told = time.monotonic()
        pull.tell(progress.summary(image))


class ImageJanitor:
    """Keeps the disk of Docker's images from filling up: when less than ``min_free_mib`` is free, removes the
    images this worker pulled that no job used for ``max_age`` seconds, longest unused first, never one that
    ``needed()`` names (the images of the worker's queued and running tasks) or one being pulled."""

    def __init__(self, runtime: ContainerRuntime, puller: ImagePuller, min_free_mib: int, max_age: float,
                 needed: Callable[[], Iterable[str]]) -> None:
        self._runtime = runtime
        self._puller = puller
        self._min_free = min_free_mib * 2**20
        self._max_age = max_age
        self._needed = needed
        self._lock = threading.Lock()  # one check at a time (every minute, and after each task)

    def check(self, now: Optional[float] = None) -> list[str]:
        """Remove what must go; returns the images removed."""
        with self._lock:
            return self._check(time.time() if now is None else now)

    def _check(self, now: float) -> list[str]:
        free = self._runtime.disk_free()
        if free is None or free >= self._min_free:
            return []
        keep = set(self._needed()) | self._puller.pulling()
        removed = []
        for image in self._puller.record.unused_since(now - self._max_age):
            if image in keep:
                continue
            if self._runtime.remove_image(image):
                self._puller.record.forget(image)
                removed.append(image)
                log.info("removed image %s: no job used it for %.0f s and the disk has %.1f GB free", image,
                         self._max_age, free / 1e9)
            free = self._runtime.disk_free() or 0
            if free >= self._min_free:
                break
        return removed

    def run(self, stopped: threading.Event, interval: float = defaults.IMAGE_CHECK_INTERVAL) -> None:
        """Check every ``interval`` seconds until ``stopped`` is set."""
        while not stopped.wait(interval):
            try:
                self.check()
            except (DstackError, OSError) as e:
                log.warning("checking the images' disk failed: %s", e)


def image_missing_under_never(image: str) -> ImageNotFound:
    return ImageNotFound(f"image '{image}' is not present on this worker and its pull policy is never; build or "
                         "pull it there, or use pull_policy: if-not-present")
