"""The storage interface: one abstract class, one module per backend.

Keys are ``/``-separated relative paths (``runs/RUN/artifacts/JOB/data/x.txt``).
Backends implement small primitives; everything streams, so the memory used stays
bounded whatever the size of an object.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

from dstack.errors import UnsafePath


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The mode ``open()`` gives a new file (0666 less the umask): a file written under a temporary name (which
#: ``mkstemp`` makes 0600) gets it before it is renamed, so a job running as another user can read it.
NEW_FILE_MODE = 0o666 & ~_umask()

#: ``progress(n)``: ``n`` more bytes went over (called from the transferring thread, maybe several).
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key and its size in bytes."""

    key: str
    size: int


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`UnsafePath`.

    A safe key is relative, uses ``/``, and has no empty, ``.`` or ``..`` part.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"storage key {key!r} is not a safe relative path")
    return key


def file_digest(path: Union[str, os.PathLike[str]]) -> str:
    """The SHA-256 of the file at ``path`` (hex), read in blocks: the key of snapshot contents, the checksum of
    artifacts and of a presigned upload.

    Raises:
        OSError: the file could not be read.
    """
    import hashlib  # here: `dstack status` reaches this module (storage keys) and hashes nothing

    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


class Storage(abc.ABC):
    """Where snapshots, logs and artifacts live."""

    #: A short human description (``file:///root/.dstack/storage``, ``s3://bucket/prefix``).
    url: str

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        """Upload the file at ``path`` to ``key``, streaming (large files in parts, memory bounded); the
        object appears whole or not at all. ``progress`` is told of every bytes sent."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store small ``data`` at ``key``; the object appears whole or not at all."""

    @abc.abstractmethod
    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        """Download ``key`` into the file ``path`` (parents created), streaming; ``path`` appears whole or
        not at all. ``progress`` is told of every bytes received.

        Raises:
            ObjectNotFound: there is no object at ``key``.
        """

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the whole (small) object at ``key``.

        Raises:
            ObjectNotFound: there is no object at ``key``.
        """

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[BinaryIO]:
        """Yield a stream of the ``length`` bytes of ``key`` from ``offset`` (to read in chunks: memory stays
        bounded). Backends that can read a range directly override this; this one downloads the object to a
        temporary file first.

        Raises:
            ObjectNotFound: there is no object at ``key``.
        """
        import tempfile  # here: `dstack status` reaches this module (storage keys) and needs no temp files

        fd, tmp = tempfile.mkstemp(prefix=".range.", suffix=".dstack-tmp")
        os.close(fd)
        try:
            self.get_file(key, Path(tmp))
            with open(tmp, "rb") as f:
                f.seek(offset)
                yield limited(f, length)
        finally:
            os.unlink(tmp)

    def will_read(self, keys: Iterable[str]) -> None:
        """A hint: the objects at ``keys`` are about to be read, one after another. A backend that pays a round
        trip per object before reading it (presigned URLs) prepares them together; the others ignore it."""
        return None

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Store a copy of the object at ``source`` at ``target`` (inside the storage, not through this process
        where the backend can).

        Raises:
            ObjectNotFound: there is no object at ``source``.
        """

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects at ``keys`` (in batches); keys with no object are no error."""

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        """Delete every object whose key starts with ``prefix``; returns how many, and their bytes."""
        found = list(self.list(prefix))
        self.delete(info.key for info in found)
        return len(found), sum(info.size for info in found)

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`~dstack.errors.StorageError` naming the storage if it cannot be reached."""


class _Limited:
    """A read-only view of the next ``length`` bytes of ``stream``."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self._stream, self._left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


def limited(stream: BinaryIO, length: int) -> BinaryIO:
    """``stream`` cut to its next ``length`` bytes (for :meth:`Storage.open_range`)."""
    return _Limited(stream, length)  # type: ignore[return-value]  # reads like a BinaryIO
