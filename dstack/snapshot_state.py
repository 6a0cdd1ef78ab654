"""What the CLI remembers between snapshots, so that a snapshot costs what changed.

Two JSON files under ``$DSTACK_HOME/snapshot-state/``, each written whole (a temporary file renamed over it), so
a crash or two CLIs at once leave one complete version or the other; a file that cannot be read is started over.

- :class:`StatCache`, one per project root: ``path -> (size, mtime_ns, ctime_ns, inode, digest)``. A file whose
  four stat values did not change is not read again. Entries younger than :data:`RACY_NS` when the scan started
  are not kept (a file written in the same clock tick as it was hashed could change without its times changing).
- :class:`StoredRecord`, one per storage URL: the contents this machine stored (or saw stored) there in the last
  :data:`VERIFY_AFTER_S`, as a loose blob or a member of a pack, so that they are neither checked nor uploaded
  again. Older entries are checked again (one ``exists`` per pack, one per loose blob). The record names a marker
  object it stored; when the marker is gone (the storage was wiped or replaced), the record is started over.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dstack.storage import Storage, check_key
from dstack.storage.local import atomic_writer

#: Entries of the stored record older than this are checked against storage again.
VERIFY_AFTER_S = 7 * 24 * 3600.0
#: Files changed less than this before a scan are hashed again next time.
RACY_NS = 2_000_000_000
_STAT_VERSION = 1
_RECORD_VERSION = 1


def _name(kind: str, key: str) -> str:
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _load(path: Path, version: int) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == version else None


def _save(path: Path, data: dict[str, Any]) -> None:
    try:
        with atomic_writer(path) as f:
            f.write(json.dumps(data, separators=(",", ":")).encode())
    except OSError:  # a cache: losing it costs time, not correctness
        pass


class StatCache:
    """Digests of the files of one project root, valid while their stat values stay the same."""

    def __init__(self, state: Optional[Path], root: Path) -> None:
        self.path = state / _name("stat", str(root.resolve())) if state is not None else None
        data = _load(self.path, _STAT_VERSION) if self.path is not None else None
        self._old: dict[str, list[Any]] = data["files"] if data is not None else {}
        self._new: dict[str, list[Any]] = {}
        self._started_ns = time.time_ns()

    @staticmethod
    def key(info: os.stat_result) -> list[int]:
        return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]

    def get(self, path: str, info: os.stat_result) -> Optional[str]:
        """The digest of ``path`` if it did not change since it was hashed."""
        cached = self._old.get(path)
        if cached is not None and cached[:4] == self.key(info):
            return str(cached[4])
        return None

    def put(self, path: str, info: os.stat_result, digest: str) -> None:
        """Remember ``digest`` for the next scan (unless the file is too new to trust its times)."""
        if max(info.st_mtime_ns, info.st_ctime_ns) < self._started_ns - RACY_NS:
            self._new[path] = [*self.key(info), digest]

    def save(self) -> None:
        """Keep the files of this scan (only those: deleted files leave the cache)."""
        if self.path is not None:
            _save(self.path, {"version": _STAT_VERSION, "files": self._new})


@dataclass(frozen=True)
class Location:
    """Where stored content is: its own blob (``pack is None``) or ``pack`` from ``offset``."""

    pack: Optional[str]
    offset: int = 0


class StoredRecord:
    """The contents known to be in one storage (see the module's docstring)."""

    def __init__(self, state: Optional[Path], storage: Storage, now: Optional[float] = None) -> None:
        self.storage = storage
        self.now = time.time() if now is None else now
        self.path = state / _name("stored", storage.url) if state is not None else None
        data = _load(self.path, _RECORD_VERSION) if self.path is not None else None
        self.marker: Optional[str] = None
        #: digest -> (when it was last seen stored, where)
        self.known: dict[str, tuple[float, Location]] = {}
        if data is not None and data.get("url") == storage.url:
            self.marker = data["marker"]
            packs = data["packs"]
            for digest, (seen, pack, offset) in data["blobs"].items():
                self.known[digest] = (seen, Location(packs[pack] if pack >= 0 else None, offset))

    def check_marker(self) -> None:
        """Start over if the storage lost this record's marker (one ``exists``); store a new marker if needed."""
        if self.path is None:
            return
        if self.marker is not None and self.storage.exists(self.marker):
            return
        self.known.clear()
        self.marker = check_key(f"blobs/records/{uuid.uuid4().hex}")
        self.storage.put_bytes(self.marker, b"")

    def fresh(self, digest: str) -> Optional[Location]:
        """Where ``digest`` is, if it was seen stored within :data:`VERIFY_AFTER_S`."""
        found = self.known.get(digest)
        if found is None or found[0] < self.now - VERIFY_AFTER_S:
            return None
        return found[1]

    def stale(self, digest: str) -> Optional[Location]:
        """Where ``digest`` was, if it was seen stored longer ago than :data:`VERIFY_AFTER_S`."""
        found = self.known.get(digest)
        return found[1] if found is not None and found[0] < self.now - VERIFY_AFTER_S else None

    def add(self, digest: str, where: Location) -> None:
        self.known[digest] = (self.now, where)

    def save(self) -> None:
        """Keep the entries still fresh (older ones would be checked again anyway)."""
        if self.path is None or self.marker is None:
            return
        packs: dict[str, int] = {}
        blobs = {}
        for digest, (seen, where) in self.known.items():
            if seen >= self.now - VERIFY_AFTER_S:
                index = -1 if where.pack is None else packs.setdefault(where.pack, len(packs))
                blobs[digest] = [seen, index, where.offset]
        _save(self.path, {"version": _RECORD_VERSION, "url": self.storage.url, "marker": self.marker,
                          "packs": list(packs), "blobs": blobs})

