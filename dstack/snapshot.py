"""Project snapshots: the project's files as a job sees them.

A snapshot is a manifest (path, content digest, mode) stored at ``snapshots/<id>.json``;
file contents are stored once per digest under ``blobs/``, so content that did not change
is not uploaded again. ``.gitignore`` files are honoured (nested ones too), and ``.git/``
is never included.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pathspec

from dstack.errors import ObjectNotFound, StorageError, UnsafePath
from dstack.names import snapshot_blob_key, snapshot_key
from dstack.storage import Storage

#: Files downloaded or uploaded in parallel.
TRANSFER_THREADS = 8


@dataclass(frozen=True)
class FileEntry:
    path: str
    digest: str
    size: int
    executable: bool


def iter_project_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` that git would not ignore, as paths relative to ``root``."""
    stack: list[tuple[Path, list[tuple[Path, pathspec.GitIgnoreSpec]]]] = [(root, [])]
    while stack:
        folder, specs = stack.pop()
        ignore_file = folder / ".gitignore"
        if ignore_file.is_file():
            lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
            specs = specs + [(folder, pathspec.GitIgnoreSpec.from_lines(lines))]
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(entry.path)
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.name == ".git" or _ignored(path, is_dir, specs):
                    continue
                if is_dir:
                    stack.append((path, specs))
                elif entry.is_file():  # follows a link to a file, skips other links
                    yield path.relative_to(root)


def _ignored(path: Path, is_dir: bool, specs: list[tuple[Path, pathspec.GitIgnoreSpec]]) -> bool:
    """The decision of the deepest ``.gitignore`` with a matching pattern wins, as in git."""
    verdict = False
    for base, spec in specs:
        relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        result = spec.check_file(relative)
        if result.include is not None:
            verdict = result.include
    return verdict


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def upload_snapshot(root: Path, storage: Storage) -> tuple[str, int, int]:
    """Store the snapshot of ``root``.

    Returns:
        ``(snapshot_id, files, uploaded)``: the id, the number of files, and how many
        of them were uploaded (the others were stored already).
    """
    entries = []
    for relative in iter_project_files(root):
        path = root / relative
        info = path.stat()
        entries.append(FileEntry(relative.as_posix(), file_digest(path), info.st_size,
                                 bool(info.st_mode & stat.S_IXUSR)))
    missing = {e.digest: root / e.path for e in entries if not storage.exists(snapshot_blob_key(e.digest))}
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda item: storage.put_file(snapshot_blob_key(item[0]), item[1]), missing.items()))
    manifest = json.dumps({"files": [[e.path, e.digest, e.size, e.executable] for e in entries]},
                          separators=(",", ":")).encode()
    snapshot_id = hashlib.sha256(manifest).hexdigest()[:32]
    if not storage.exists(snapshot_key(snapshot_id)):
        storage.put_bytes(snapshot_key(snapshot_id), manifest)
    return snapshot_id, len(entries), len(missing)


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


def materialize_snapshot(storage: Storage, snapshot_id: str, target: Path, cache: Optional[Path]) -> int:
    """Write the files of a snapshot into ``target``; blobs are cached in ``cache``.

    Returns the number of files written.

    Raises:
        StorageError: the snapshot or one of its blobs cannot be read.
    """
    try:
        manifest = json.loads(storage.get_bytes(snapshot_key(snapshot_id)))
    except ObjectNotFound:
        raise StorageError(f"snapshot {snapshot_id} is not in {storage.url}") from None
    target.mkdir(parents=True, exist_ok=True)

    def fetch(item: list) -> None:
        path, digest, _size, executable = item
        destination = safe_join(target, path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if cache is None:
            storage.get_file(snapshot_blob_key(digest), destination)
        else:
            cached = cache / digest
            if not cached.exists():
                storage.get_file(snapshot_blob_key(digest), cached)
            shutil.copyfile(cached, destination)
        if executable:
            destination.chmod(destination.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(fetch, manifest["files"]))
    return len(manifest["files"])
