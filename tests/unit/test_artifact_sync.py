"""workers/artifact_sync.py: a running job's artifact folders kept in storage. Files are uploaded once they
stopped changing, never twice, compared by stat alone; deleted files leave storage at the end; the job's last
stored artifacts are put back when it resumes, or deleted when it starts from nothing; and every manifest
stored at any moment lists only stored files (checked after every write by the storage below)."""
from __future__ import annotations

import builtins
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from dstack.errors import ObjectNotFound, StorageError
from dstack.messages import ArtifactFile, ArtifactManifest
from dstack.names import artifact_key, artifacts_manifest_key
from dstack.storage.base import ObjectInfo, Progress, Storage
from dstack.workers.artifact_sync import ArtifactSyncer

RUN, JOB = "calm-heron-1", "train.0"
INTERVAL = 30.0


class MemoryStorage(Storage):
    """Objects in a dict; counts every upload and checks, after every write or delete, that each file the
    stored manifest lists is stored."""

    url = "memory://test"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.put_files: list[str] = []
        self.operations: list[tuple[str, str]] = []

    def _check_invariant(self) -> None:
        body = self.objects.get(artifacts_manifest_key(RUN, JOB))
        if body is not None:
            for entry in ArtifactManifest.from_json(body).files:
                assert artifact_key(RUN, JOB, entry.path) in self.objects, f"{entry.path} listed but not stored"

    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        with open(path, "rb") as f:
            self.objects[key] = f.read()
        self.put_files.append(key)
        self.operations.append(("put", key))
        self._check_invariant()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data
        self.operations.append(("put", key))
        self._check_invariant()

    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get_bytes(key))

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter([ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items()) if k.startswith(prefix)])

    def copy(self, source: str, target: str) -> None:
        self.objects[target] = self.get_bytes(source)

    def delete(self, keys: Iterable[str]) -> None:
        for key in list(keys):
            self.objects.pop(key, None)
            self.operations.append(("delete", key))
        self._check_invariant()

    def check(self) -> None:
        return None

    def manifest(self) -> ArtifactManifest:
        return ArtifactManifest.from_json(self.objects[artifacts_manifest_key(RUN, JOB)])

    def stored_paths(self) -> list[str]:
        prefix = artifact_key(RUN, JOB, "x")[:-1]
        return sorted(k[len(prefix):] for k in self.objects if k.startswith(prefix))


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


def syncer_for(storage: Storage, workdir: Path, artifacts: tuple[str, ...] = ("out",),
               interval: float = INTERVAL) -> ArtifactSyncer:
    return ArtifactSyncer(storage, RUN, JOB, list(artifacts), workdir, interval)


def write(workdir: Path, path: str, text: str, age: float = 0.0) -> Path:
    """Write ``text`` at ``path``; with ``age``, its mtime is that many seconds ago."""
    target = workdir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    if age:
        then = time.time() - age
        os.utime(target, (then, then))
    return target


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- while the job runs


def test_a_file_is_uploaded_once_it_has_not_changed_for_one_interval(storage: MemoryStorage, tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path)
    write(tmp_path, "out/old.txt", "settled", age=2 * INTERVAL)  # unchanged for longer than an interval
    write(tmp_path, "out/new.txt", "being written")
    assert syncer.sync() == 1
    assert storage.stored_paths() == ["out/old.txt"]
    manifest = storage.manifest()
    assert manifest.complete is False and manifest.files == [ArtifactFile("out/old.txt", 7, sha("settled"))]

    write(tmp_path, "out/growing.txt", "a")
    assert syncer.sync() == 1  # new.txt has the size and mtime of the previous scan: settled
    assert storage.stored_paths() == ["out/new.txt", "out/old.txt"]
    write(tmp_path, "out/growing.txt", "ab")  # changed since the previous scan: not yet
    assert syncer.sync() == 0
    assert syncer.sync() == 1
    assert storage.stored_paths() == ["out/growing.txt", "out/new.txt", "out/old.txt"]
    assert storage.objects[artifact_key(RUN, JOB, "out/growing.txt")] == b"ab"


def test_unchanged_files_are_never_uploaded_twice(storage: MemoryStorage, tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path)
    for i in range(5):
        write(tmp_path, f"out/f{i}.txt", f"{i}", age=2 * INTERVAL)
    assert syncer.sync() == 5
    manifests = sum(1 for op in storage.operations if op == ("put", artifacts_manifest_key(RUN, JOB)))
    for _ in range(3):
        assert syncer.sync() == 0
    assert sum(1 for op in storage.operations if op == ("put", artifacts_manifest_key(RUN, JOB))) == manifests
    write(tmp_path, "out/f0.txt", "0", age=INTERVAL + 5)  # rewritten with the same content: hashed, not sent
    write(tmp_path, "out/f1.txt", "changed", age=INTERVAL + 5)
    assert syncer.sync() == 1
    syncer.finish()
    assert sorted(storage.put_files) == sorted([artifact_key(RUN, JOB, f"out/f{i}.txt") for i in range(5)]
                                               + [artifact_key(RUN, JOB, "out/f1.txt")])
    assert syncer.uploads == 6
    assert storage.manifest().files[1] == ArtifactFile("out/f1.txt", 7, sha("changed"))


def test_ten_thousand_unchanged_files_are_compared_by_stat_alone(
        storage: MemoryStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [ArtifactFile(f"out/many/{i:05d}.bin", 1, sha("x")) for i in range(10_000)]
    storage.objects.update({artifact_key(RUN, JOB, f.path): b"x" for f in files})
    storage.objects[artifacts_manifest_key(RUN, JOB)] = ArtifactManifest(JOB, ["out"], files).to_json()
    syncer = syncer_for(storage, tmp_path)
    assert syncer.restore() == 10_000  # the files are here, and known as stored
    assert syncer.stored_bytes == 10_000

    def no_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a file was opened: {args[0]}")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr(Path, "open", no_open)
    monkeypatch.setattr(Path, "read_bytes", no_open)
    operations = len(storage.operations)
    assert syncer.sync() == 0 and syncer.sync() == 0
    assert len(storage.operations) == operations  # nothing uploaded, no manifest


def test_deleted_files_stay_stored_until_the_end_then_go(storage: MemoryStorage, tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path)
    old = write(tmp_path, "out/step-1", "1", age=2 * INTERVAL)
    write(tmp_path, "out/step-2", "2", age=2 * INTERVAL)
    syncer.sync()
    old.unlink()  # a job that keeps its last checkpoint only: killed now, it still has step-1 in storage
    assert syncer.sync() == 0
    assert storage.stored_paths() == ["out/step-1", "out/step-2"]
    assert [f.path for f in storage.manifest().files] == ["out/step-1", "out/step-2"]
    manifest = syncer.finish()
    assert manifest.complete is True and [f.path for f in manifest.files] == ["out/step-2"]
    assert storage.stored_paths() == ["out/step-2"]
    ops = storage.operations
    complete_at = max(i for i, op in enumerate(ops) if op == ("put", artifacts_manifest_key(RUN, JOB)))
    assert ops.index(("delete", artifact_key(RUN, JOB, "out/step-1"))) > complete_at  # listed by no manifest first
    assert syncer.stored_bytes == 1


def test_the_final_sync_uploads_every_new_or_changed_file_whatever_its_age(storage: MemoryStorage,
                                                                           tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path, artifacts=("out", "logs"))
    write(tmp_path, "out/model.bin", "weights", age=2 * INTERVAL)
    syncer.sync()
    write(tmp_path, "out/model.bin", "better weights")  # just now
    write(tmp_path, "logs/last.txt", "bye")
    write(tmp_path, "elsewhere.txt", "not an artifact")
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere.txt")
    manifest = syncer.finish()
    assert manifest == ArtifactManifest(job_id=JOB, artifacts=["out", "logs"], complete=True, files=[
        ArtifactFile("logs/last.txt", 3, sha("bye")), ArtifactFile("out/model.bin", 14, sha("better weights"))])
    assert storage.objects[artifact_key(RUN, JOB, "out/model.bin")] == b"better weights"
    assert storage.manifest() == manifest and syncer.stored_bytes == 17


def test_a_file_that_changes_while_it_is_uploaded_is_uploaded_again_once_it_settles(
        storage: MemoryStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer = syncer_for(storage, tmp_path)
    path = write(tmp_path, "out/ckpt", "v1", age=2 * INTERVAL)
    put = storage.put_file

    def put_then_write(key: str, source: Path, progress: Optional[Progress] = None) -> None:
        put(key, source)
        source.write_text("v2 longer")  # the job writes on during the upload

    monkeypatch.setattr(storage, "put_file", put_then_write)
    assert syncer.sync() == 1
    monkeypatch.setattr(storage, "put_file", put)
    assert artifacts_manifest_key(RUN, JOB) not in storage.objects or not storage.manifest().files
    os.utime(path, (time.time() - 2 * INTERVAL,) * 2)
    assert syncer.sync() == 1
    assert storage.manifest().files == [ArtifactFile("out/ckpt", 9, sha("v2 longer"))]


def test_a_storage_failure_in_a_pass_is_tried_again_at_the_next(storage: MemoryStorage, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    syncer = syncer_for(storage, tmp_path)
    write(tmp_path, "out/a", "a", age=2 * INTERVAL)

    def down(*args: Any, **kwargs: Any) -> None:
        raise StorageError("storage is down")

    monkeypatch.setattr(storage, "put_file", down)
    with pytest.raises(StorageError):
        syncer.sync()
    monkeypatch.undo()
    assert syncer.sync() == 1 and storage.stored_paths() == ["out/a"]


def test_syncing_in_the_background_until_stopped(storage: MemoryStorage, tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path, interval=0.05)
    write(tmp_path, "out/a", "a", age=1.0)
    syncer.start()
    deadline = time.monotonic() + 10
    while artifacts_manifest_key(RUN, JOB) not in storage.objects and time.monotonic() < deadline:
        time.sleep(0.02)
    syncer.stop()
    assert storage.manifest().complete is False and storage.stored_paths() == ["out/a"]
    operations = len(storage.operations)
    write(tmp_path, "out/b", "b", age=1.0)
    time.sleep(0.2)
    assert len(storage.operations) == operations  # stopped
    assert syncer.finish().complete is True and storage.stored_paths() == ["out/a", "out/b"]


def test_artifact_folders_that_overlap_or_are_missing(storage: MemoryStorage, tmp_path: Path) -> None:
    write(tmp_path, "out/sub/a", "a")
    syncer = syncer_for(storage, tmp_path, artifacts=("out", "out/sub", "missing"))
    assert list(syncer.scan()) == ["out/sub/a"]
    assert [f.path for f in syncer.finish().files] == ["out/sub/a"]


# ----------------------------------------------------------------------------- when it starts again


def test_restore_puts_the_last_stored_artifacts_back_and_counts_them_as_stored(storage: MemoryStorage,
                                                                               tmp_path: Path) -> None:
    first = tmp_path / "first"
    syncer = syncer_for(storage, first)
    write(first, "out/step-1", "1", age=2 * INTERVAL)
    write(first, "out/step-2", "22", age=2 * INTERVAL)
    syncer.sync()  # killed after this: the manifest is not complete
    uploads = len(storage.put_files)

    again = tmp_path / "again"
    resumed = syncer_for(storage, again)
    assert resumed.restore() == 2
    assert (again / "out/step-2").read_text() == "22" and resumed.stored_bytes == 3
    assert resumed.sync() == 0 and resumed.sync() == 0  # what came from storage is not sent back
    (again / "out/step-1").unlink()
    write(again, "out/step-3", "333")
    manifest = resumed.finish()
    assert [f.path for f in manifest.files] == ["out/step-2", "out/step-3"]
    assert storage.put_files[uploads:] == [artifact_key(RUN, JOB, "out/step-3")]
    assert storage.stored_paths() == ["out/step-2", "out/step-3"]


def test_restore_with_nothing_stored_gets_nothing(storage: MemoryStorage, tmp_path: Path) -> None:
    assert syncer_for(storage, tmp_path).restore() == 0
    assert not (tmp_path / "out").exists()


def test_restore_refuses_a_manifest_that_lists_a_missing_file(storage: MemoryStorage, tmp_path: Path) -> None:
    storage.objects[artifacts_manifest_key(RUN, JOB)] = ArtifactManifest(
        JOB, ["out"], [ArtifactFile("out/gone", 1)], complete=False).to_json()
    with pytest.raises(StorageError, match="out/gone, an artifact of train.0 of run calm-heron-1, is listed in its "
                                           "manifest but not stored in memory://test; restart with --clear"):
        syncer_for(storage, tmp_path).restore()


def test_clear_deletes_the_manifest_first_then_every_stored_file(storage: MemoryStorage, tmp_path: Path) -> None:
    syncer = syncer_for(storage, tmp_path)
    write(tmp_path, "out/a", "aaa", age=2 * INTERVAL)
    syncer.sync()
    storage.objects[artifact_key(RUN, "train.01", "out/a")] = b"another job's"
    storage.operations.clear()
    assert syncer_for(storage, tmp_path / "again").clear() == 3
    assert storage.operations[0] == ("delete", artifacts_manifest_key(RUN, JOB))
    assert storage.stored_paths() == [] and artifacts_manifest_key(RUN, JOB) not in storage.objects
    assert artifact_key(RUN, "train.01", "out/a") in storage.objects
