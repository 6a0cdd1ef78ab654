"""Job caching on a worker: a job whose result is decided by the same things as an earlier successful
job's reuses that job's artifacts and logs, and nothing runs (``cache: true`` on a workflow,
``dstack run --cache``).

The cache key (:func:`cache_key`, documented in ``docs/caching.md``) is a SHA-256 over what decides a
job's result: the image by its id on the worker, the job's commands, environment (variables
included), secrets, working directory, ports, artifact folders, GPUs, the content of the project's files
(but the ``.dstack/*.yaml`` the CLI reads) and the content of its inputs (their manifests' checksums). An entry
(:class:`CacheEntry`) is stored at ``cache/KEY.json`` when a job with caching ends done, after its
artifacts and logs are stored, and the same entry is kept with the job (``runs/RUN/cache/JOB.json``),
so an entry whose run was deleted is seen as stale: a miss.

A hit copies the earlier job's artifacts (:meth:`~dstack.storage.Storage.copy`: server-side on S3),
then its manifest, then its log chunks (numbered after the chunks this job already has; the last one is
published live) to this job's keys; anything missing on the way makes it a miss, and what was copied is deleted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from dstack.errors import DstackError, MessageError, ObjectNotFound, StorageError
from dstack.logs import LogChunk
from dstack.messages import ArtifactFile, ArtifactManifest, ArtifactRef, JobTask, TaskFinished, from_dict
from dstack.names import (
    LOGS_EXCHANGE,
    artifact_key,
    artifacts_manifest_key,
    artifacts_prefix,
    cache_entry_key,
    cache_record_key,
    log_chunk_key,
    log_prefix,
    snapshot_key,
)
from dstack.states import Status
from dstack.storage import Storage
from dstack.storage.retry import with_retries
from dstack.workers.artifacts import read_manifest
from dstack.workers.runtime import ContainerRuntime

log = logging.getLogger(__name__)

#: Changes when what goes into the key changes: older entries are then never found.
KEY_VERSION = 1

#: The project files the CLI reads: what they decide of a job (image, commands, variables, ...) is in the job
#: itself, so editing them (another workflow, a comment) changes no job's key.
CLI_FILES = frozenset({".dstack/workflows.yaml", ".dstack/providers.yaml", ".dstack/variables.yaml"})

#: A task's inputs, each with its stored manifest, in the task's order.
Inputs = list[tuple[ArtifactRef, ArtifactManifest]]


@dataclass
class CacheEntry:
    """An earlier job whose result a job with the same key reuses; JSON at ``cache/KEY.json`` and
    ``runs/RUN/cache/JOB.json``."""

    key: str
    run_name: str
    job_id: str
    #: the job's log chunks, ``first_chunk`` up to ``end_chunk`` (excluded); those of earlier attempts come before
    first_chunk: int
    end_chunk: int
    image_id: str
    created_at: float

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CacheEntry:
        """Raises: ValueError (not JSON) or MessageError (not an entry)."""
        return from_dict(cls, json.loads(data))

    @property
    def source(self) -> str:
        """``RUN/JOB``, as ``dstack status`` shows it."""
        return f"{self.run_name}/{self.job_id}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _file_identity(ref: ArtifactRef, entry: ArtifactFile) -> str:
    """A stored input file by its content: its checksum, else (a manifest written before checksums) its
    size and where it is stored, which makes every other run's file another one."""
    return entry.sha256 or f"size {entry.size} at {artifact_key(ref.run_name, ref.job_id, entry.path)}"


def project_digest(snapshot_files: list[list[Any]]) -> str:
    """The content of a project snapshot (its manifest's ``[path, digest, size, executable]`` entries) as one
    checksum, leaving out the files the CLI reads (:data:`CLI_FILES`): what they decide of a job is in the job."""
    kept = sorted([path, digest, bool(executable)] for path, digest, _size, executable in snapshot_files
                  if path not in CLI_FILES)
    return _digest(json.dumps(kept, separators=(",", ":")))


def cache_ingredients(task: JobTask, image_id: str, project: str, inputs: Inputs) -> dict[str, Any]:
    """Everything the cache key of ``task`` is made of (secret values only as their checksums), given the
    id of its image on this worker, the :func:`project_digest` of its snapshot and the manifest of each of
    its inputs, in the task's order."""
    job = task.job
    return {
        "version": KEY_VERSION,
        "image_id": image_id,
        "job_id": job.job_id,
        "commands": list(job.commands),
        "env": dict(sorted(job.env.items())),
        "secrets": {name: _digest(value) for name, value in sorted(task.secrets.items())},
        "working_dir": job.working_dir,
        "ports": list(job.ports),
        "artifacts": list(job.artifacts),
        "gpu": [job.resources.gpu_count, job.resources.gpu_name or ""],
        "project": project,
        "inputs": [{"target": ref.target, "files": sorted([f.path, _file_identity(ref, f)] for f in manifest.files)}
                   for ref, manifest in inputs],
    }


def cache_key(task: JobTask, image_id: str, project: str, inputs: Inputs) -> str:
    """The cache key of ``task`` (hex SHA-256 of :func:`cache_ingredients` as canonical JSON)."""
    canonical = json.dumps(cache_ingredients(task, image_id, project, inputs), sort_keys=True,
                           separators=(",", ":"))
    return _digest(canonical)


@dataclass
class Lookup:
    """What :meth:`JobCache.reuse` found: the job's key, and the end it reports when it was a hit."""

    key: str
    image_id: str
    #: the job's log chunks stored before this attempt (earlier attempts')
    first_chunk: int
    #: the end of the job, reused from :attr:`source`; ``None``: a miss, the job runs
    finished: Optional[TaskFinished] = None
    source: Optional[CacheEntry] = None


class JobCache:
    """The job cache in ``storage``, for jobs whose images are in ``runtime``; the last reused log chunk
    is published live with ``announce`` (a follower reads the ones before it from storage)."""

    def __init__(self, storage: Storage, runtime: ContainerRuntime,
                 announce: Optional[Callable[[str, str, bytes], None]] = None) -> None:
        self.storage = storage
        self.runtime = runtime
        self.announce = announce

    def key(self, task: JobTask) -> tuple[str, str]:
        """The cache key of ``task`` and the id of its image on this machine.

        Raises:
            ImageNotFound: the image is not on this machine.
            StorageError: the snapshot or an input's manifest is not stored (or storage failed).
        """
        image_id = self.runtime.image_id(task.job.image)
        try:
            snapshot = json.loads(self.storage.get_bytes(snapshot_key(task.snapshot_id)))
        except ObjectNotFound:
            raise StorageError(f"snapshot {task.snapshot_id} is not in {self.storage.url}") from None
        inputs = [(ref, read_manifest(self.storage, ref.run_name, ref.job_id)) for ref in task.inputs]
        return cache_key(task, image_id, project_digest(snapshot["files"]), inputs), image_id

    def reuse(self, task: JobTask) -> Lookup:
        """Look ``task`` up; on a hit, copy the earlier job's artifacts, manifest and logs to its keys and
        return the end it reports (done, ``cached_from``). A miss or a stale entry returns no end.

        Raises:
            DstackError: the key cannot be made (see :meth:`key`), or storage failed.
        """
        key, image_id = self.key(task)
        lookup = Lookup(key=key, image_id=image_id, first_chunk=self._chunks(task.run_name, task.task_id))
        found = self._lookup(key, task)
        if found is None:
            return lookup
        entry, manifest = found
        written: list[str] = []
        try:
            size = self._copy(entry, manifest, task, lookup.first_chunk, written)
        except ObjectNotFound as e:  # deleted meanwhile
            log.info("cache entry %s of %s went stale while it was copied (%s); running the job", key, entry.source, e)
            self.storage.delete(written)
            return lookup
        except DstackError:
            self.storage.delete(written)
            raise
        lookup.source = entry
        lookup.finished = TaskFinished(run_name=task.run_name, task_id=task.task_id, attempt=task.attempt,
                                       status=Status.DONE, artifacts_size=size, cached_from=entry.source)
        return lookup

    def remember(self, task: JobTask, lookup: Lookup) -> CacheEntry:
        """Store ``task``'s entry under its key, after it ended done with its artifacts and logs stored:
        first with the job, then at ``cache/KEY.json`` (the one identical jobs look up).

        Raises:
            StorageError: storage failed, also after retries.
        """
        entry = CacheEntry(key=lookup.key, run_name=task.run_name, job_id=task.task_id,
                           first_chunk=lookup.first_chunk, end_chunk=self._chunks(task.run_name, task.task_id),
                           image_id=lookup.image_id, created_at=time.time())
        body = entry.to_json()
        with_retries(lambda: self.storage.put_bytes(cache_record_key(task.run_name, task.task_id), body),
                     "storing the job's cache record")
        with_retries(lambda: self.storage.put_bytes(cache_entry_key(lookup.key), body), "storing the cache entry")
        return entry

    # ------------------------------------------------------------------ internals

    def _chunks(self, run_name: str, job_id: str) -> int:
        return sum(1 for _ in self.storage.list(log_prefix(run_name, job_id)))

    def _read_entry(self, key: str) -> Optional[CacheEntry]:
        try:
            return CacheEntry.from_json(self.storage.get_bytes(key))
        except ObjectNotFound:
            return None
        except (ValueError, MessageError) as e:
            log.warning("ignoring the malformed cache entry %s: %s", key, e)
            return None

    def _lookup(self, key: str, task: JobTask) -> Optional[tuple[CacheEntry, Optional[ArtifactManifest]]]:
        """The entry of ``key`` and its job's manifest (when the job has artifacts), if everything the
        entry names is still stored; else ``None`` (a miss, or a stale entry)."""
        entry = self._read_entry(cache_entry_key(key))
        if entry is None or entry.key != key:
            return None
        if (entry.run_name, entry.job_id) == (task.run_name, task.task_id):
            return None  # its own result: nothing to copy
        record = self._read_entry(cache_record_key(entry.run_name, entry.job_id))
        if record is None or record.key != key:
            log.info("cache entry %s is stale: %s is gone or ran again; running the job", key, entry.source)
            return None
        chunks = {info.key for info in self.storage.list(log_prefix(entry.run_name, entry.job_id))}
        if any(log_chunk_key(entry.run_name, entry.job_id, n) not in chunks
               for n in range(entry.first_chunk, entry.end_chunk)):
            log.info("cache entry %s is stale: logs of %s are missing; running the job", key, entry.source)
            return None
        manifest = None
        if task.job.artifacts:
            try:
                manifest = read_manifest(self.storage, entry.run_name, entry.job_id)
            except StorageError:
                log.info("cache entry %s is stale: %s has no artifacts; running the job", key, entry.source)
                return None
            stored = {info.key for info in self.storage.list(artifacts_prefix(entry.run_name, entry.job_id))}
            if not manifest.complete or any(artifact_key(entry.run_name, entry.job_id, f.path) not in stored
                                            for f in manifest.files):
                log.info("cache entry %s is stale: artifacts of %s are missing; running the job", key, entry.source)
                return None
        return entry, manifest

    def _copy(self, entry: CacheEntry, manifest: Optional[ArtifactManifest], task: JobTask, first_chunk: int,
              written: list[str]) -> Optional[int]:
        """Copy the artifacts, then the manifest, then the log chunks of ``entry``'s job to ``task``'s keys
        (each key in ``written`` once written); returns the bytes of the artifacts (``None``: the job has none)."""
        source_run, job_id, run_name = entry.run_name, entry.job_id, task.run_name
        size = None
        if manifest is not None:
            for item in manifest.files:
                target = artifact_key(run_name, task.task_id, item.path)
                with_retries(lambda: self.storage.copy(artifact_key(source_run, job_id, item.path), target),  # noqa: B023
                             f"copying the cached artifact {item.path}")
                written.append(target)
            target = artifacts_manifest_key(run_name, task.task_id)
            with_retries(lambda: self.storage.copy(artifacts_manifest_key(source_run, job_id), target),
                         "copying the cached manifest")
            written.append(target)
            size = sum(item.size for item in manifest.files)
        last = None
        for offset, number in enumerate(range(entry.first_chunk, entry.end_chunk)):
            chunk = LogChunk.decode(with_retries(
                lambda: self.storage.get_bytes(log_chunk_key(source_run, job_id, number)),  # noqa: B023
                "reading the cached logs"))
            body = LogChunk(task.task_id, first_chunk + offset, chunk.lines).encode()
            target = log_chunk_key(run_name, task.task_id, first_chunk + offset)
            with_retries(lambda: self.storage.put_bytes(target, body), "copying the cached logs")  # noqa: B023
            written.append(target)
            last = body
        if self.announce is not None and last is not None:
            # once all are stored, so nothing shown live is taken back; a follower that missed the
            # chunks before the last one reads them from storage
            self.announce(LOGS_EXCHANGE, run_name, last)
        return size
