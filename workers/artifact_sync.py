"""A running job's artifact folders kept in storage as it goes, and put back when it starts again.

Every ``interval`` seconds :class:`ArtifactSyncer` scans the job's artifact folders with
``os.scandir`` and ``stat`` alone (size and modification time: no file is read to compare, so a folder
of ten thousand files costs ten thousand ``stat`` calls). A file is uploaded once it has not changed for
one interval (its size and mtime are those of the previous scan, or its mtime is an interval old) and
differs from what was last uploaded of it; so a file still being written is not uploaded half-written,
and an unchanged file is never uploaded twice (one rewritten with the same content is hashed, found
equal to what is stored, and not sent). After each scan that uploaded something the job's manifest is
stored with ``complete: false``. The final sync, once the container has exited, uploads every new or
changed file whatever its age, deletes the stored objects of files that are gone, and stores the
manifest with ``complete: true``.

Every file a stored manifest lists is stored: a file is uploaded before a manifest lists it, and the
manifest that no longer lists a file is stored before the file's object is deleted (only the final sync
deletes: a job killed after it removed an old checkpoint still has it in storage).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dstack.errors import DstackError, ObjectNotFound, StorageError
from dstack.messages import ArtifactFile, ArtifactManifest
from dstack.names import artifact_key, artifacts_manifest_key, artifacts_prefix
from dstack.snapshot import file_digest, safe_join
from dstack.storage import Storage
from dstack.storage.retry import with_retries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileState:
    """What a scan sees of a file: its size and modification time (ns)."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Stored:
    """A file as it was when it was last uploaded (or put back from storage), with its checksum."""

    state: FileState
    sha256: str


class ArtifactSyncer:
    """Keeps the artifact folders of one job in storage while it runs (see the module's docstring).

    Args:
        storage: where the artifacts go (``runs/RUN/artifacts/JOB/PATH``, manifest ``runs/RUN/manifests/JOB.json``).
        run_name, job_id: the job.
        artifacts: its artifact folders, relative to ``workdir``.
        workdir: the job's project folder on this machine.
        interval: seconds between two scans while the job runs.
    """

    def __init__(self, storage: Storage, run_name: str, job_id: str, artifacts: list[str], workdir: Path,
                 interval: float) -> None:
        self.storage = storage
        self.run_name = run_name
        self.job_id = job_id
        self.artifacts = list(artifacts)
        self.workdir = workdir
        self.interval = interval
        #: files sent to storage so far (uploads, not files skipped as unchanged)
        self.uploads = 0
        self._stored: dict[str, _Stored] = {}
        self._previous: dict[str, FileState] = {}
        self._lock = threading.Lock()  # one pass at a time
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def stored_bytes(self) -> int:
        """The bytes of the files stored now."""
        return sum(stored.state.size for stored in self._stored.values())

    # ------------------------------------------------------------------ before the job starts

    def restore(self, folder: Optional[Path] = None) -> int:
        """Put the job's last stored artifacts (those of its manifest, complete or not) into ``folder``
        (default: the project folder), each at its path, and count them as stored; returns how many
        files. A job with nothing stored gets nothing.

        Raises:
            DstackError: a file the manifest lists is not stored, or storage failed.
        """
        try:
            data = with_retries(lambda: self.storage.get_bytes(artifacts_manifest_key(self.run_name, self.job_id)),
                                "reading the stored manifest")
        except ObjectNotFound:
            return 0  # nothing stored yet
        try:
            manifest = ArtifactManifest.from_json(data)
        except (ValueError, DstackError) as e:
            raise StorageError(f"the stored manifest of {self.job_id} of run {self.run_name} is unreadable ({e}); "
                               "restart with --clear to start from nothing") from None
        target = folder or self.workdir
        for entry in manifest.files:
            path = safe_join(target, entry.path)
            try:
                with_retries(functools.partial(self.storage.get_file, self._key(entry.path), path),
                             f"downloading {entry.path}")
            except ObjectNotFound:
                raise StorageError(
                    f"{entry.path}, an artifact of {self.job_id} of run {self.run_name}, is listed in its manifest "
                    f"but not stored in {self.storage.url}; restart with --clear to start from nothing") from None
            stat = path.stat()
            self._stored[entry.path] = _Stored(FileState(stat.st_size, stat.st_mtime_ns), entry.sha256)
        return len(manifest.files)

    def clear(self) -> int:
        """Delete the job's stored artifacts (its manifest first, then the files); returns the bytes freed.

        Raises:
            DstackError: storage failed.
        """
        manifest_key = artifacts_manifest_key(self.run_name, self.job_id)
        with_retries(lambda: self.storage.delete([manifest_key]), "deleting the stored manifest")
        _, size = with_retries(lambda: self.storage.delete_prefix(self._prefix), "deleting the stored artifacts")
        self._stored.clear()
        return size

    # ------------------------------------------------------------------ while it runs

    def start(self) -> None:
        """Sync every ``interval`` seconds in a thread of its own, until :meth:`stop`."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"sync {self.run_name}/{self.job_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop syncing in the background: the pass under way ends after the file it is uploading."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.sync()
            except (DstackError, OSError) as e:
                log.warning("syncing the artifacts of %s/%s failed (%s); trying again in %g s",
                            self.run_name, self.job_id, e, self.interval)
            except Exception:
                log.exception("syncing the artifacts of %s/%s failed; trying again in %g s",
                              self.run_name, self.job_id, self.interval)

    def sync(self) -> int:
        """One pass while the job runs: upload the new and changed files that have not changed for one
        interval, then (if any was) the manifest, ``complete: false``. Returns how many files were uploaded.

        Raises:
            DstackError: storage failed (tried once: the next pass tries again).
            OSError: a file could not be read.
        """
        with self._lock:
            now_ns = time.time_ns()
            interval_ns = int(self.interval * 1e9)
            current = self.scan()
            uploaded = 0
            for path, state in current.items():
                if self._stopping.is_set():
                    break
                stored = self._stored.get(path)
                if stored is not None and stored.state == state:
                    continue
                if self._previous.get(path) != state and now_ns - state.mtime_ns < interval_ns:
                    continue  # changed within the last interval: maybe still being written
                try:
                    uploaded += self._upload(path, state, final=False)
                except FileNotFoundError:
                    continue  # removed since the scan
            self._previous = current
            if uploaded:
                self._store_manifest(complete=False, retries=False)
            return uploaded

    # ------------------------------------------------------------------ at its end

    def finish(self) -> ArtifactManifest:
        """The final sync, once the container has exited: upload every new or changed file, store the manifest
        (``complete: true``), then delete the stored objects no manifest lists anymore. Returns the manifest.

        Raises:
            DstackError: storage failed, also after retries.
            OSError: a file could not be read.
        """
        self.stop()
        with self._lock:
            current = self.scan()
            for path, state in current.items():
                stored = self._stored.get(path)
                if stored is None or stored.state != state:
                    self._upload(path, state, final=True)
            for gone in set(self._stored) - set(current):
                del self._stored[gone]
            manifest = self._store_manifest(complete=True, retries=True)
            listed = {self._key(path) for path in self._stored}
            found = with_retries(lambda: list(self.storage.list(self._prefix)), "listing the stored artifacts")
            stale = [info.key for info in found if info.key not in listed]
            if stale:
                with_retries(lambda: self.storage.delete(stale), f"deleting {len(stale)} artifacts no longer there")
            return manifest

    # ------------------------------------------------------------------ parts

    def scan(self) -> dict[str, FileState]:
        """Every regular file under the artifact folders (symbolic links left out), by its path relative to
        the project folder, in path order: ``os.scandir`` and ``stat`` only, no file is opened."""
        found: dict[str, FileState] = {}
        root = self.workdir.resolve()
        for artifact in self.artifacts:
            folder = safe_join(self.workdir, artifact)
            prefix = folder.relative_to(root).as_posix() if folder != root else ""
            for relative, state in _walk(str(folder), prefix):
                found[relative] = state
        return dict(sorted(found.items()))

    def _upload(self, path: str, state: FileState, final: bool) -> int:
        """Upload one file (unless its content is the stored one); returns 1 if it was sent, else 0."""
        full = self.workdir / path
        digest = file_digest(full)
        stored = self._stored.get(path)
        if stored is not None and stored.sha256 == digest:
            self._stored[path] = _Stored(state, digest)  # touched, not changed
            return 0
        put = functools.partial(self.storage.put_file, self._key(path), full)
        if final:
            with_retries(put, f"uploading {path}")
        else:
            put()
        self.uploads += 1
        after = os.stat(full)
        if not final and FileState(after.st_size, after.st_mtime_ns) != state:
            return 1  # it changed while it was read: uploaded again once it settles
        self._stored[path] = _Stored(state, digest)
        return 1

    def _store_manifest(self, complete: bool, retries: bool) -> ArtifactManifest:
        manifest = ArtifactManifest(
            job_id=self.job_id, artifacts=list(self.artifacts), complete=complete,
            files=[ArtifactFile(path=path, size=stored.state.size, sha256=stored.sha256)
                   for path, stored in sorted(self._stored.items())])
        body, key = manifest.to_json(), artifacts_manifest_key(self.run_name, self.job_id)
        if retries:
            with_retries(lambda: self.storage.put_bytes(key, body), "storing the manifest")
        else:
            self.storage.put_bytes(key, body)
        return manifest

    def _key(self, path: str) -> str:
        return artifact_key(self.run_name, self.job_id, path)

    @property
    def _prefix(self) -> str:
        return artifacts_prefix(self.run_name, self.job_id)


def _walk(folder: str, relative: str) -> Iterator[tuple[str, FileState]]:
    """``(path relative to the project folder, state)`` of every regular file below ``folder``."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = f"{relative}/{entry.name}" if relative else entry.name
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, name)
            elif entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                yield name, FileState(stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            continue  # removed meanwhile
