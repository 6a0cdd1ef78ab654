"""Snapshots that cost what changed (issue 14, item 7): the CLI's stat cache and stored record, packs of small
files, old manifests, the worker's manifest and content cache, and bounded memory."""
from __future__ import annotations

import json
import os
import stat
import threading
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from dstack import snapshot, snapshot_state
from dstack.errors import ObjectNotFound, StorageError, UnsafePath
from dstack.names import snapshot_blob_key, snapshot_key
from dstack.snapshot import file_digest, materialize_snapshot, upload_snapshot
from dstack.storage import ObjectInfo, Storage
from dstack.storage.local import LocalStorage
from tests.services import write_project


class Counting(Storage):
    """A local storage that records every request (``(operation, key)``) and the largest read of a range."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStorage(root)
        self.url = self.inner.url
        self.calls: list[tuple[str, str]] = []
        self.largest_read = 0
        self._lock = threading.Lock()

    def _note(self, operation: str, key: str) -> None:
        with self._lock:
            self.calls.append((operation, key))

    def ops(self, operation: str) -> list[str]:
        return [key for op, key in self.calls if op == operation]

    def put_file(self, key: str, path: Path, progress: Any = None) -> None:
        self._note("put", key)
        self.inner.put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._note("put", key)
        self.inner.put_bytes(key, data)

    def get_file(self, key: str, path: Path, progress: Any = None) -> None:
        self._note("get", key)
        self.inner.get_file(key, path)

    def get_bytes(self, key: str) -> bytes:
        self._note("get", key)
        return self.inner.get_bytes(key)

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[BinaryIO]:
        self._note("range", key)
        outer = self

        class Watched:
            def __init__(self, stream: BinaryIO) -> None:
                self.stream = stream

            def read(self, size: int = -1) -> bytes:
                data = self.stream.read(size)
                outer.largest_read = max(outer.largest_read, len(data))
                return data

        with self.inner.open_range(key, offset, length) as stream:
            yield Watched(stream)  # type: ignore[misc]

    def exists(self, key: str) -> bool:
        self._note("exists", key)
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def copy(self, source: str, target: str) -> None:
        self.inner.copy(source, target)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def check(self) -> None:
        self.inner.check()


@pytest.fixture
def storage(tmp_path: Path) -> Counting:
    return Counting(tmp_path / "store")


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pack from 2 small files on, files under 64 bytes are small, packs of about 100 bytes: several packs."""
    monkeypatch.setattr(snapshot, "PACK_MIN_FILES", 2)
    monkeypatch.setattr(snapshot, "PACK_FILE_LIMIT", 64)
    monkeypatch.setattr(snapshot, "PACK_SIZE", 100)


@pytest.fixture
def trusted_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test are old enough for the stat cache."""
    monkeypatch.setattr(snapshot_state, "RACY_NS", 0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "project", {
        **{f"src/m{i:02d}.py": f"x = {i}\n" for i in range(20)},
        "same_a.txt": "same content\n",
        "same_b.txt": "same content\n",
        "big.bin": "B" * 500,  # over the small-file limit of small_packs: its own blob
        "empty.txt": "",
        "sub/empty_too.txt": "",
    })
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return root


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_of(storage: Counting, snapshot_id: str) -> dict[str, Any]:
    return json.loads(storage.inner.get_bytes(snapshot_key(snapshot_id)))


# ----------------------------------------------------------------------------- packs


@pytest.mark.usefixtures("small_packs")
def test_packs_round_trip(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, files, uploaded = upload_snapshot(project, storage, tmp_path / "state")
    assert files == 26
    assert uploaded == 24  # same_a/same_b share a content, as do the two empty files
    body = manifest_of(storage, snapshot_id)
    assert body["version"] == 2
    assert len(body["packs"]) > 1 and all(key.startswith("blobs/packs/") for key in body["packs"])
    big = file_digest(project / "big.bin")
    assert big not in body["located"] and storage.inner.exists(snapshot_blob_key(big))
    assert file_digest(project / "run.sh") in body["located"]
    # No exists per packed content: only the large file and the manifest (the new record's marker is put).
    assert len(storage.ops("exists")) == 2
    target = tmp_path / "restored"
    assert materialize_snapshot(storage, snapshot_id, target, tmp_path / "cache", tmp_path / "manifests") == 26
    assert tree(target) == tree(project)
    assert tree(target)["run.sh"][1] and not tree(target)["src/m01.py"][1]
    assert (target / "sub" / "empty_too.txt").read_bytes() == b""


@pytest.mark.usefixtures("small_packs")
def test_snapshot_id_does_not_depend_on_where_contents_are(project: Path, storage: Counting, tmp_path: Path) -> None:
    packed, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    loose, _, _ = upload_snapshot(project, LocalStorage(tmp_path / "other"))  # no state: loose blobs
    assert packed == loose


@pytest.mark.usefixtures("small_packs")
def test_a_cache_with_holes_is_filled_by_ranges(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    cache = tmp_path / "cache"
    materialize_snapshot(storage, snapshot_id, tmp_path / "first", cache, tmp_path / "manifests")
    for i in (1, 4, 5, 13):
        (cache / file_digest(project / "src" / f"m{i:02d}.py")).unlink()
    storage.calls.clear()
    materialize_snapshot(storage, snapshot_id, tmp_path / "second", cache, tmp_path / "manifests")
    assert tree(tmp_path / "second") == tree(project)
    assert storage.ops("get") == [] and 1 <= len(storage.ops("range")) <= 4


@pytest.mark.usefixtures("small_packs")
def test_a_pack_with_other_content_is_refused(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    pack = manifest_of(storage, snapshot_id)["packs"][0]
    path = storage.inner.root / pack
    path.write_bytes(b"#" * path.stat().st_size)
    with pytest.raises(StorageError, match="holds other content"):
        materialize_snapshot(storage, snapshot_id, tmp_path / "t", tmp_path / "cache")
    assert not any(p.name.endswith(".dstack-tmp") for p in (tmp_path / "cache").iterdir())


@pytest.mark.usefixtures("small_packs")
def test_a_file_changed_while_packed_is_an_error(project: Path, storage: Counting, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = snapshot.file_digest

    def digest_then_change(path: str) -> str:
        digest = real(path)
        if path.endswith("m03.py"):
            Path(path).write_text("changed meanwhile\n")
        return digest

    monkeypatch.setattr(snapshot, "file_digest", digest_then_change)
    with pytest.raises(StorageError, match="m03.py changed while the snapshot was taken"):
        upload_snapshot(project, storage, tmp_path / "state")


# ----------------------------------------------------------------------------- stat cache and record


@pytest.mark.usefixtures("small_packs", "trusted_times")
def test_unchanged_files_are_neither_read_nor_checked(project: Path, storage: Counting, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    read = reading_noted(monkeypatch)
    storage.calls.clear()
    assert upload_snapshot(project, storage, tmp_path / "state") == (first, 26, 0)
    assert read == []
    assert storage.calls == [("exists", storage.ops("exists")[0]), ("exists", snapshot_key(first))]
    # One file changed: only it is read, and stored as its own blob (too few for a pack).
    (project / "src" / "m07.py").write_text("x = 'seven'\n")
    storage.calls.clear()
    second, _, uploaded = upload_snapshot(project, storage, tmp_path / "state")
    assert (read, uploaded) == (["m07.py"], 1)
    assert storage.ops("put") == [snapshot_blob_key(file_digest(project / "src" / "m07.py")), snapshot_key(second)]


@pytest.mark.usefixtures("trusted_times")
def test_stat_cache_sees_changes_that_keep_size_and_mtime(project: Path, storage: Counting, tmp_path: Path) -> None:
    first, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    target = project / "src" / "m02.py"
    before = target.stat()
    target.write_text("x = Q\n")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime; the ctime still moves
    second, _, uploaded = upload_snapshot(project, storage, tmp_path / "state")
    assert second != first and uploaded == 1
    # A mode change alone changes the id, with nothing to read or upload.
    (project / "src" / "m02.py").chmod(0o755)
    third, _, uploaded = upload_snapshot(project, storage, tmp_path / "state")
    assert third != second and uploaded == 0


def reading_noted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the snapshot reads from now on."""
    read: list[str] = []
    real = snapshot.file_digest

    def noted(path: str) -> str:
        read.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(snapshot, "file_digest", noted)
    return read


def test_files_newer_than_the_racy_window_are_read_again(project: Path, storage: Counting, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    upload_snapshot(project, storage, tmp_path / "state")  # every file was just written: none kept
    read = reading_noted(monkeypatch)
    upload_snapshot(project, storage, tmp_path / "state")
    assert len(read) == 26


@pytest.mark.usefixtures("small_packs")
def test_a_wiped_storage_is_noticed(project: Path, storage: Counting, tmp_path: Path) -> None:
    upload_snapshot(project, storage, tmp_path / "state")
    storage.inner.delete_prefix("")
    snapshot_id, _, uploaded = upload_snapshot(project, storage, tmp_path / "state")
    assert uploaded == 24
    assert materialize_snapshot(storage, snapshot_id, tmp_path / "t", tmp_path / "cache") == 26


def seen_long_ago(state: Path) -> None:
    """Make the stored record say every content was seen stored in 1970."""
    for path in state.glob("stored-*.json"):
        record = json.loads(path.read_text())
        record["blobs"] = {digest: [1.0, *where] for digest, (_, *where) in record["blobs"].items()}
        path.write_text(json.dumps(record))


@pytest.mark.usefixtures("small_packs")
def test_old_record_entries_are_checked_once_per_pack(project: Path, storage: Counting, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    packs = manifest_of(storage, first)["packs"]
    seen_long_ago(tmp_path / "state")
    monkeypatch.setattr(snapshot_state, "VERIFY_AFTER_S", 3600.0)
    storage.calls.clear()
    assert upload_snapshot(project, storage, tmp_path / "state")[2] == 0
    checked = storage.ops("exists")
    assert set(packs) <= set(checked) and len(checked) == len(packs) + 3  # + marker, big.bin, manifest
    # A pack deleted meanwhile, and seen long ago: its contents are stored again.
    seen_long_ago(tmp_path / "state")
    storage.inner.delete([packs[0]])
    assert upload_snapshot(project, storage, tmp_path / "state")[2] > 0


def test_unreadable_state_is_started_over(project: Path, storage: Counting, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, _, _ = upload_snapshot(project, storage, state)
    for path in state.iterdir():
        path.write_text("{not json")
    assert upload_snapshot(project, storage, state)[0] == first


# ----------------------------------------------------------------------------- manifests old and new


def test_version_1_manifests_are_still_read(storage: Counting, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.write_text("print('v1')\n")
    digest = file_digest(content)
    storage.put_file(snapshot_blob_key(digest), content)
    storage.put_bytes(snapshot_key("oldformat"),
                      json.dumps({"files": [["a/b.py", digest, 12, True], ["c.py", digest, 12, False]]}).encode())
    target = tmp_path / "t"
    assert materialize_snapshot(storage, "oldformat", target, tmp_path / "cache", tmp_path / "manifests") == 2
    assert tree(target) == {"a/b.py": (b"print('v1')\n", True), "c.py": (b"print('v1')\n", False)}


def test_a_newer_manifest_is_refused_with_advice(storage: Counting, tmp_path: Path) -> None:
    storage.put_bytes(snapshot_key("future"), b'{"version": 99, "files": []}')
    with pytest.raises(StorageError, match="newer dstack.*upgrade"):
        materialize_snapshot(storage, "future", tmp_path / "t", None)


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/x", "~/x", "", "."])
def test_escaping_paths_are_refused(storage: Counting, tmp_path: Path, path: str) -> None:
    content = tmp_path / "content"
    content.write_text("evil")
    digest = file_digest(content)
    storage.put_file(snapshot_blob_key(digest), content)
    storage.put_bytes(snapshot_key("evil"), json.dumps({"files": [[path, digest, 4, False]]}).encode())
    with pytest.raises(UnsafePath):
        materialize_snapshot(storage, "evil", tmp_path / "deep" / "target", tmp_path / "cache")
    assert not (tmp_path / "deep" / "x").exists()


@pytest.mark.parametrize("body", ['{"files": [["a", "../../outside", 1, false]]}', '{"nofiles": []}',
                                  '{"version": 2, "files": [], "packs": [], "located": {"x": [3, 0]}}', "not json"])
def test_malformed_manifests_are_refused(storage: Counting, tmp_path: Path, body: str) -> None:
    storage.put_bytes(snapshot_key("bad"), body.encode())
    with pytest.raises(StorageError, match="snapshot bad"):
        materialize_snapshot(storage, "bad", tmp_path / "t", tmp_path / "cache", tmp_path / "manifests")
    assert not (tmp_path / "outside").exists()


def test_a_link_in_a_used_target_is_not_followed(storage: Counting, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.write_text("evil")
    digest = file_digest(content)
    storage.put_file(snapshot_blob_key(digest), content)
    storage.put_bytes(snapshot_key("link"), json.dumps({"files": [["out/x", digest, 4, False]]}).encode())
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", target / "out")
    with pytest.raises(UnsafePath):
        materialize_snapshot(storage, "link", target, tmp_path / "cache")
    assert not (tmp_path / "elsewhere" / "x").exists()


# ----------------------------------------------------------------------------- the worker's side


@pytest.mark.usefixtures("small_packs")
def test_a_snapshot_seen_before_needs_no_storage(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    cache, manifests = tmp_path / "cache", tmp_path / "manifests"
    materialize_snapshot(storage, snapshot_id, tmp_path / "first", cache, manifests)
    storage.calls.clear()
    storage.inner.delete_prefix("")
    assert materialize_snapshot(storage, snapshot_id, tmp_path / "second", cache, manifests) == 26
    assert storage.calls == []
    assert tree(tmp_path / "second") == tree(project)


@pytest.mark.usefixtures("small_packs")
def test_tasks_get_copies(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    cache = tmp_path / "cache"
    materialize_snapshot(storage, snapshot_id, tmp_path / "one", cache, tmp_path / "manifests")
    with open(tmp_path / "one" / "src" / "m01.py", "a") as f:
        f.write("written by a job\n")
    (tmp_path / "one" / "big.bin").write_text("replaced")
    materialize_snapshot(storage, snapshot_id, tmp_path / "two", cache, tmp_path / "manifests")
    assert tree(tmp_path / "two") == tree(project)


@pytest.mark.usefixtures("small_packs")
def test_tasks_of_one_snapshot_fetch_it_once(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    storage.calls.clear()
    errors: list[BaseException] = []

    def task(name: str) -> None:
        try:
            materialize_snapshot(storage, snapshot_id, tmp_path / name, tmp_path / "cache", tmp_path / "manifests")
        except BaseException as e:  # noqa: BLE001  # reported below
            errors.append(e)

    threads = [threading.Thread(target=task, args=(f"task{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    fetched = storage.ops("range") + storage.ops("get")
    packs = manifest_of(storage, snapshot_id)["packs"]
    assert sorted(set(storage.ops("range"))) == sorted(packs)
    assert len([k for k in fetched if k == snapshot_blob_key(file_digest(project / "big.bin"))]) == 1
    for i in range(4):
        assert tree(tmp_path / f"task{i}") == tree(project)


@pytest.mark.usefixtures("small_packs")
def test_an_outdated_cached_manifest_is_read_again(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    body = manifest_of(storage, snapshot_id)
    body["packs"] = ["blobs/packs/" + "0" * 64 for _ in body["packs"]]  # packs that are not stored
    (manifests / f"{snapshot_id}.json").write_text(json.dumps(body))
    assert materialize_snapshot(storage, snapshot_id, tmp_path / "t", tmp_path / "cache", manifests) == 26
    assert tree(tmp_path / "t") == tree(project)


def test_deleted_content_says_what_to_do(project: Path, storage: Counting, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage, tmp_path / "state")
    storage.inner.delete([snapshot_blob_key(file_digest(project / "big.bin"))])
    with pytest.raises(StorageError, match="no longer in .*snapshot-state"):
        materialize_snapshot(storage, snapshot_id, tmp_path / "t", tmp_path / "cache", tmp_path / "manifests")


# ----------------------------------------------------------------------------- bounded memory


def test_memory_stays_bounded_with_big_packed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 24 MB files, both packed (the small-file limit raised): packing, uploading and unpacking them
    allocates a few MB at most, never a whole file."""
    monkeypatch.setattr(snapshot, "PACK_MIN_FILES", 2)
    monkeypatch.setattr(snapshot, "PACK_FILE_LIMIT", 64 << 20)
    root = tmp_path / "project"
    root.mkdir()
    for name in ("a.bin", "b.bin"):
        with open(root / name, "wb") as f:
            for _ in range(24):
                f.write(os.urandom(1 << 20))
    storage = Counting(tmp_path / "store")
    tracemalloc.start()
    try:
        snapshot_id, _, uploaded = upload_snapshot(root, storage, tmp_path / "state")
        materialize_snapshot(storage, snapshot_id, tmp_path / "t", tmp_path / "cache", tmp_path / "manifests")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded == 2 and storage.ops("range")
    assert peak < 12 << 20, f"peak {peak / (1 << 20):.1f} MB"
    assert storage.largest_read <= 1 << 20
    assert file_digest(tmp_path / "t" / "a.bin") == file_digest(root / "a.bin")


def test_open_range_reads_only_its_range(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("k", b"0123456789")
    with storage.open_range("k", 3, 4) as stream:
        assert stream.read(2) + stream.read() + stream.read() == b"3456"
    with pytest.raises(ObjectNotFound):
        with storage.open_range("missing", 0, 1):
            pass


def test_the_default_open_range_of_other_backends(tmp_path: Path) -> None:
    class Plain(Counting):
        open_range = Storage.open_range  # the base class's, by download

    storage = Plain(tmp_path / "store")
    storage.put_bytes("k", b"0123456789")
    with storage.open_range("k", 8, 5) as stream:
        assert stream.read() == b"89"

