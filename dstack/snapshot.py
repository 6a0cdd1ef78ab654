"""Project snapshots: the project's files as a job sees them.

A snapshot is a manifest stored at ``snapshots/<id>.json``: each file's path, content digest, size and mode, and
where its content is stored under ``blobs/``: its own blob (``blobs/<d[:2]>/<digest>``) or a range of a pack
(``blobs/packs/<digest of the pack>``: many small contents one after the other). Contents are stored once:
what did not change is not uploaded again. ``.gitignore`` files are honoured (nested ones too), and ``.git/`` is
never included. The id is the digest of the files alone, so the same tree has the same id wherever its contents
were stored.

The CLI remembers digests and stored contents (:mod:`dstack.snapshot_state`), so a snapshot reads and checks only
what changed. A worker keeps manifests and contents it fetched, so a snapshot it has seen costs no storage request;
every task still gets its own copies. Architecture: docs/architecture.md, "Project snapshots".
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from dstack.errors import ObjectNotFound, StorageError, UnsafePath
from dstack.names import snapshot_blob_key, snapshot_key
from dstack.snapshot_state import Location, StatCache, StoredRecord
from dstack.storage import Storage, check_key
from dstack.storage.base import file_digest
from dstack.storage.local import TMP_SUFFIX, atomic_writer

if TYPE_CHECKING:
    import pathspec

#: The folder under ``DSTACK_HOME`` where the CLI remembers digests and stored contents.
SNAPSHOT_STATE_DIR = "snapshot-state"
T = TypeVar("T")

#: Files downloaded or uploaded in parallel.
TRANSFER_THREADS = 8
#: The manifest version this dstack writes (and the newest it reads).
MANIFEST_VERSION = 2
#: Files smaller than this may go into packs; larger ones are always their own blob.
PACK_FILE_LIMIT = 1024 * 1024
#: Packs are made when at least this many small contents are to be stored (fewer are stored one by one).
PACK_MIN_FILES = 32
#: A pack holds about this many bytes.
PACK_SIZE = 32 * 1024 * 1024
#: A worker reads packed contents less than this apart in one request (the gap is read and dropped) ...
RANGE_GAP = 1024 * 1024
#: ... at most this many bytes in one request, and this many contents (requests run in parallel).
RANGE_LIMIT = 16 * 1024 * 1024
RANGE_FILES = 256


@dataclass(frozen=True)
class FileEntry:
    path: str
    digest: str
    size: int
    executable: bool


def iter_project_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` that git would not ignore, as paths relative to ``root``."""
    return (Path(relative) for relative in _project_files(root))


def _project_files(root: Path) -> Iterator[str]:
    """:func:`iter_project_files` as ``/``-separated strings."""
    # Relative paths as strings ("src/a.py"), each .gitignore with the prefix of its folder ("src/"): no
    # pathlib per entry, which would cost more than the walk itself.
    stack: list[tuple[str, list[tuple[str, pathspec.GitIgnoreSpec]]]] = [("", [])]
    top = os.fspath(root)
    while stack:
        prefix, specs = stack.pop()
        folder = os.path.join(top, prefix) if prefix else top
        ignore_file = os.path.join(folder, ".gitignore")
        if os.path.isfile(ignore_file):
            with open(ignore_file, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
            import pathspec  # here: a project without .gitignore files does not load it (~10 ms)

            specs = specs + [(prefix, pathspec.GitIgnoreSpec.from_lines(lines))]
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                relative = prefix + entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.name == ".git" or _ignored(relative, is_dir, specs):
                    continue
                if is_dir:
                    stack.append((relative + "/", specs))
                elif entry.is_file():  # follows a link to a file, skips other links
                    yield relative


def _ignored(relative: str, is_dir: bool, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
    """The decision of the deepest ``.gitignore`` with a matching pattern wins, as in git."""
    verdict = False
    for base, spec in specs:
        result = spec.check_file(relative[len(base):] + ("/" if is_dir else ""))
        if result.include is not None:
            verdict = result.include
    return verdict


def upload_snapshot(root: Path, storage: Storage, state: Optional[Path] = None) -> tuple[str, int, int]:
    """Store the snapshot of ``root``.

    ``state`` is the folder of what this machine remembers between snapshots (``$DSTACK_HOME/snapshot-state``:
    see :mod:`dstack.snapshot_state`); ``None``: nothing is remembered, every file is read, every content
    checked in storage and stored as its own blob (no packs).

    Returns:
        ``(snapshot_id, files, uploaded)``: the id, the number of files, and how many distinct contents
        were uploaded (the others were stored already).
    """
    stat_cache = StatCache(state, root)
    found: list[tuple[str, os.stat_result]] = []
    digests: dict[str, str] = {}
    top = os.fspath(root)
    for path in _project_files(root):
        info = os.stat(os.path.join(top, path))
        found.append((path, info))
        digest = stat_cache.get(path, info)
        if digest is not None:
            digests[path] = digest
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        unhashed = [path for path, _ in found if path not in digests]
        for part in pool.map(lambda paths: {p: file_digest(os.path.join(top, p)) for p in paths}, _slices(unhashed)):
            digests.update(part)
        entries = [FileEntry(path, digests[path], info.st_size, bool(info.st_mode & stat.S_IXUSR))
                   for path, info in found]
        for path, info in found:
            stat_cache.put(path, info, digests[path])
        record = StoredRecord(state, storage)
        record.check_marker()
        uploaded = _store_contents(root, entries, storage, record, pool)
    files = [[e.path, e.digest, e.size, e.executable] for e in entries]
    snapshot_id = hashlib.sha256(json.dumps({"files": files}, separators=(",", ":")).encode()).hexdigest()[:32]
    used = {e.digest: record.fresh(e.digest) for e in entries}
    packs: dict[str, int] = {}
    located = {digest: [packs.setdefault(where.pack, len(packs)), where.offset]
               for digest, where in used.items() if where is not None and where.pack is not None}
    manifest = json.dumps({"version": MANIFEST_VERSION, "files": files, "packs": list(packs), "located": located},
                          separators=(",", ":")).encode()
    if not storage.exists(snapshot_key(snapshot_id)):
        storage.put_bytes(snapshot_key(snapshot_id), manifest)
    stat_cache.save()
    record.save()
    return snapshot_id, len(entries), uploaded


def _slices(items: list[T]) -> list[list[T]]:
    """``items`` in a few slices, one per transfer thread or so: a future per slice, not per item."""
    step = max(1, -(-len(items) // (TRANSFER_THREADS * 2)))
    return [items[i:i + step] for i in range(0, len(items), step)]


def _store_contents(root: Path, entries: list[FileEntry], storage: Storage, record: StoredRecord,
                    pool: ThreadPoolExecutor) -> int:
    """Make sure every content of ``entries`` is stored, recording where; returns how many were uploaded.

    Contents the record knows are skipped; those it knew too long ago are checked (one ``exists`` per pack).
    Many unknown small files go into new packs unchecked (cheaper than one request each); a few, and large
    files, are checked one by one and uploaded as their own blobs if missing.
    """
    first: dict[str, FileEntry] = {}
    for entry in entries:
        first.setdefault(entry.digest, entry)
    unknown = [e for digest, e in first.items() if record.fresh(digest) is None]
    stale = {digest: where for digest in (e.digest for e in unknown) if (where := record.stale(digest)) is not None}
    keys = sorted({where.pack if where.pack is not None else snapshot_blob_key(digest)
                   for digest, where in stale.items()})
    present = {key for key, there in zip(keys, pool.map(storage.exists, keys)) if there}
    for digest, where in stale.items():
        if (where.pack if where.pack is not None else snapshot_blob_key(digest)) in present:
            record.add(digest, where)
    unknown = [e for e in unknown if record.fresh(e.digest) is None]
    small = [e for e in unknown if e.size < PACK_FILE_LIMIT]
    # Without a record (no state folder), packed contents could not be found again: no packs then.
    to_pack = small if len(small) >= PACK_MIN_FILES and record.path is not None else []
    loose = [e for e in unknown if e.size >= PACK_FILE_LIMIT or not to_pack]
    stored = list(pool.map(lambda e: storage.exists(snapshot_blob_key(e.digest)), loose))
    missing = [e for e, there in zip(loose, stored) if not there]
    for e, there in zip(loose, stored):
        if there:
            record.add(e.digest, Location(None))
    uploads = [pool.submit(storage.put_file, snapshot_blob_key(e.digest), root / e.path) for e in missing]
    for placed in write_packs([(e.digest, root / e.path, e.size) for e in to_pack], storage, pool):
        for digest, location in placed.items():
            record.add(digest, location)
    for future in uploads:
        future.result()
    for e in missing:
        record.add(e.digest, Location(None))
    return len(missing) + len(to_pack)


def write_packs(items: list[tuple[str, Path, int]], storage: Storage,
                pool: ThreadPoolExecutor) -> Iterator[dict[str, Location]]:
    """Store the files of ``items`` (``(digest, path, size)``) in packs of about :data:`PACK_SIZE`: each pack is
    written to a temporary file (read in 1 MB blocks, so memory stays bounded), then uploaded while the next one
    is written, at most two at a time. Yields, per pack once stored, where each of its contents is.

    Raises:
        StorageError: a file changed while it was packed (its content no longer has its digest): run again.
    """
    with tempfile.TemporaryDirectory(prefix="dstack-packs-") as folder:
        pending: list[tuple[Future[None], dict[str, Location]]] = []
        batch: list[tuple[str, Path, int]] = []
        size = 0
        try:
            for number, item in enumerate([*items, None]):
                if item is not None and (not batch or size + item[2] <= PACK_SIZE):
                    batch.append(item)
                    size += item[2]
                    continue
                while len(pending) >= 2:
                    future, where = pending.pop(0)
                    future.result()
                    yield where
                if batch:
                    pack_file = Path(folder) / f"pack-{number}"
                    key, where = _write_pack(batch, pack_file)
                    pending.append((pool.submit(_upload_pack, storage, key, pack_file), where))
                batch, size = ([item], item[2]) if item is not None else ([], 0)
            while pending:
                future, where = pending.pop(0)
                future.result()
                yield where
        finally:
            for future, _ in pending:  # on an error: let the uploads end before their files go
                future.exception()


def _write_pack(batch: list[tuple[str, Path, int]], pack_file: Path) -> tuple[str, dict[str, Location]]:
    offsets: dict[str, int] = {}
    pack_sha = hashlib.sha256()
    with open(pack_file, "wb") as out:
        for digest, path, _size in batch:
            offsets[digest] = out.tell()
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
                    pack_sha.update(block)
                    out.write(block)
            if sha.hexdigest() != digest:
                raise StorageError(f"{path} changed while the snapshot was taken; run again")
    key = pack_key(pack_sha.hexdigest())
    return key, {digest: Location(key, offset) for digest, offset in offsets.items()}


def _upload_pack(storage: Storage, key: str, pack_file: Path) -> None:
    try:
        storage.put_file(key, pack_file)
    finally:
        pack_file.unlink()


def pack_key(pack_digest: str) -> str:
    """Where a pack is stored: under ``blobs/`` (shared by every run, kept by cleanup) by its content's digest."""
    return check_key(f"blobs/packs/{pack_digest}")


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that are absolute or leave ``root``.

    Raises:
        UnsafePath: the path leaves ``root``.
    """
    if not relative or os.path.isabs(relative) or relative.startswith("~"):
        raise UnsafePath(f"path {relative!r} must be relative to the project root")
    target = (root / relative).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise UnsafePath(f"path {relative!r} leaves the project root")
    return target


@dataclass
class Manifest:
    """A stored snapshot: its files (``[path, digest, size, executable]``) and where each content is: in
    ``packs[i]`` from an offset (``located[digest] == [i, offset]``) or else its own blob.

    Version 1 (no ``version`` key) has only ``files``: every content its own blob.
    """

    files: list[list[Any]]
    packs: list[str]
    located: dict[str, list[int]]

    @classmethod
    def parse(cls, snapshot_id: str, data: bytes) -> Manifest:
        body = json.loads(data)
        version = body.get("version", 1)
        if version > MANIFEST_VERSION:
            raise StorageError(f"snapshot {snapshot_id} was made by a newer dstack (manifest version {version}); "
                               f"upgrade dstack on this worker")
        manifest = cls(body["files"], [check_key(k) for k in body.get("packs", [])], body.get("located", {}))
        for _path, digest, size, _executable in manifest.files:  # digests name files in the cache
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or not isinstance(size, int):
                raise StorageError(f"snapshot {snapshot_id} has a malformed entry for {_path!r}")
        for pack, offset in manifest.located.values():
            if not 0 <= pack < len(manifest.packs) or not isinstance(offset, int) or offset < 0:
                raise StorageError(f"snapshot {snapshot_id} has a malformed pack location")
        return manifest

    def where(self, digest: str) -> tuple[str, int]:
        """The key holding ``digest`` and its offset there."""
        if digest in self.located:
            pack, offset = self.located[digest]
            return self.packs[pack], offset
        return snapshot_blob_key(digest), 0


def load_manifest(storage: Storage, snapshot_id: str, manifests: Optional[Path] = None) -> Manifest:
    """The manifest of ``snapshot_id``: from the folder ``manifests`` if it was read before, else from storage
    (and then kept in ``manifests``).

    Raises:
        StorageError: the snapshot is not in storage, or storage failed.
    """
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise StorageError(f"{snapshot_id!r} is not a snapshot id")
    local = manifests / f"{snapshot_id}.json" if manifests is not None else None
    if local is not None:
        try:
            return Manifest.parse(snapshot_id, local.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        data = storage.get_bytes(snapshot_key(snapshot_id))
    except ObjectNotFound:
        raise StorageError(f"snapshot {snapshot_id} is not in {storage.url}") from None
    try:
        manifest = Manifest.parse(snapshot_id, data)
    except (ValueError, KeyError, TypeError) as e:
        raise StorageError(f"snapshot {snapshot_id} in {storage.url} is malformed ({e!r})") from None
    if local is not None:
        try:
            with atomic_writer(local) as f:
                f.write(data)
        except OSError:
            pass
    return manifest


_DIGEST = re.compile(r"[0-9a-f]{64}")
_SNAPSHOT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

#: Striped locks: tasks that materialise the same snapshot on one worker fetch its contents once.
_LOCKS = [threading.Lock() for _ in range(64)]


def materialize_snapshot(storage: Storage, snapshot_id: str, target: Path, cache: Optional[Path],
                         manifests: Optional[Path] = None) -> int:
    """Write the files of a snapshot into ``target``; contents are cached by digest in the folder ``cache``, and
    the manifest in the folder ``manifests``: a snapshot seen before is written without reading storage.

    Every file is a copy (the task may write to it; nothing it does reaches the cache or another task).
    Returns the number of files written.

    Raises:
        StorageError: the snapshot or one of its contents cannot be read.
    """
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="dstack-blobs-") as folder:
            return materialize_snapshot(storage, snapshot_id, target, Path(folder), manifests)
    manifest = load_manifest(storage, snapshot_id, manifests)
    with _LOCKS[hash(snapshot_id) % len(_LOCKS)]:
        try:
            fill_cache(storage, manifest, cache)
        except ObjectNotFound as e:
            if manifests is None:
                raise _missing(snapshot_id, storage, e) from None
            (manifests / f"{snapshot_id}.json").unlink(missing_ok=True)  # maybe out of date: read it again
            manifest = load_manifest(storage, snapshot_id, manifests)
            try:
                fill_cache(storage, manifest, cache)
            except ObjectNotFound as e:
                raise _missing(snapshot_id, storage, e) from None
    _copy_out(manifest, cache, target)
    return len(manifest.files)


def _missing(snapshot_id: str, storage: Storage, e: ObjectNotFound) -> StorageError:
    return StorageError(f"the content {e} of snapshot {snapshot_id} is no longer in {storage.url} (deleted after "
                        f"the snapshot was taken); remove $DSTACK_HOME/snapshot-state where dstack run ran, and "
                        f"run again")


def fill_cache(storage: Storage, manifest: Manifest, cache: Path) -> None:
    """Fetch into ``cache`` every content of ``manifest`` it lacks: loose blobs one by one, packed ones by
    ranges of their packs (neighbours less than :data:`RANGE_GAP` apart read in one request), each checked
    against its digest. All streamed: memory stays bounded.

    Raises:
        ObjectNotFound: a blob or pack is not stored.
        StorageError: storage failed, or a content does not match its digest.
    """
    cache.mkdir(parents=True, exist_ok=True)
    needed: dict[str, int] = {}
    for _path, digest, size, _executable in manifest.files:
        if digest not in needed and not (cache / digest).exists():
            needed[digest] = size
    loose = [d for d in needed if d not in manifest.located]
    by_pack: dict[str, list[tuple[int, int, str]]] = {}
    for digest in needed:
        if digest in manifest.located:
            key, offset = manifest.where(digest)
            by_pack.setdefault(key, []).append((offset, needed[digest], digest))
    ranges: list[tuple[str, list[tuple[int, int, str]]]] = []
    for key, members in by_pack.items():
        members.sort()
        current: list[tuple[int, int, str]] = []
        for member in members:
            if current and (member[0] - (current[-1][0] + current[-1][1]) > RANGE_GAP
                            or member[0] + member[1] - current[0][0] > RANGE_LIMIT
                            or len(current) >= RANGE_FILES):
                ranges.append((key, current))
                current = []
            current.append(member)
        if current:
            ranges.append((key, current))
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        jobs = [pool.submit(storage.get_file, snapshot_blob_key(d), cache / d) for d in loose]
        jobs += [pool.submit(_fetch_range, storage, key, members, cache) for key, members in ranges]
        for job in jobs:
            job.result()


def _fetch_range(storage: Storage, key: str, members: list[tuple[int, int, str]], cache: Path) -> None:
    """Read ``members`` (sorted ``(offset, size, digest)``) of the pack ``key`` with one ranged read."""
    start = members[0][0]
    with storage.open_range(key, start, members[-1][0] + members[-1][1] - start) as stream:
        position = start
        for offset, size, digest in members:
            while position < offset:  # a gap: contents the cache has already
                skipped = len(stream.read(min(offset - position, 1 << 20)))
                if not skipped:
                    raise StorageError(f"pack {key} in {storage.url} is shorter than its snapshot says")
                position += skipped
            sha = hashlib.sha256()
            # A temporary name of this thread's (cheaper than mkstemp for thousands of small files), then a
            # rename: the cache never holds half a content.
            partial = cache / f".{digest}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
            try:
                with open(partial, "wb") as out:
                    left = size
                    while left:
                        block = stream.read(min(left, 1 << 20))
                        if not block:
                            raise StorageError(f"pack {key} in {storage.url} is shorter than its snapshot says")
                        sha.update(block)
                        out.write(block)
                        left -= len(block)
                if sha.hexdigest() != digest:
                    raise StorageError(f"pack {key} in {storage.url} holds other content than its snapshot says "
                                       f"at offset {offset}")
                os.replace(partial, cache / digest)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            position += size


def _copy_out(manifest: Manifest, cache: Path, target: Path) -> None:
    """Copy each file of ``manifest`` from ``cache`` into ``target`` (folders made once each).

    Raises:
        UnsafePath: a path of the manifest leaves ``target``.
    """
    # Into a new or empty folder, where only this function writes (so no link can lead out of it), the paths
    # are checked as text; into a folder that holds something already, each is resolved (safe_join).
    fresh = not target.exists() or not any(target.iterdir())
    target.mkdir(parents=True, exist_ok=True)
    made: set[Path] = {target}
    plan = []
    for path, digest, _size, executable in manifest.files:
        destination = target / _inside(path) if fresh else safe_join(target, path)
        if destination.parent not in made:
            destination.parent.mkdir(parents=True, exist_ok=True)
            made.add(destination.parent)
        plan.append((cache / digest, destination, executable))

    def copy(items: list[tuple[Path, Path, bool]]) -> None:
        for source, destination, executable in items:
            shutil.copyfile(source, destination)
            if executable:
                destination.chmod(destination.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(copy, _slices(plan)))


def _inside(relative: str) -> str:
    """``relative`` normalised, if it stays inside the folder it is relative to (checked as text).

    Raises:
        UnsafePath: it is absolute or leaves the folder.
    """
    normal = posixpath.normpath(relative) if relative else ""
    if (not relative or relative.startswith(("/", "~")) or normal in (".", "..") or normal.startswith("../")
            or "\0" in relative):
        raise UnsafePath(f"path {relative!r} must be relative to the project root, inside it")
    return normal
