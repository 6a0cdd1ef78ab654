"""LocalStorage: objects as files, atomic writes, ordered prefix listing."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dstack.errors import ConfigError, ObjectNotFound, StorageError, UnsafePath
from dstack.storage import ObjectInfo, local, open_storage
from dstack.storage.local import TMP_SUFFIX, LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def test_bytes_round_trip(storage: LocalStorage) -> None:
    storage.put_bytes("runs/r1/meta.json", b'{"a": 1}')
    assert storage.get_bytes("runs/r1/meta.json") == b'{"a": 1}'
    assert (storage.root / "runs" / "r1" / "meta.json").read_bytes() == b'{"a": 1}'
    storage.put_bytes("runs/r1/meta.json", b"v2")  # overwrite
    assert storage.get_bytes("runs/r1/meta.json") == b"v2"


def test_file_round_trip(storage: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"\x00\x01" * 1000)
    storage.put_file("a/b/src.bin", src)
    dst = tmp_path / "out" / "deep" / "dst.bin"  # parents are created
    storage.get_file("a/b/src.bin", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert os.listdir(dst.parent) == ["dst.bin"]  # no temp file left beside it


def test_exists(storage: LocalStorage) -> None:
    assert not storage.exists("x")
    storage.put_bytes("d/x", b"")
    assert storage.exists("d/x")
    assert not storage.exists("d")  # a folder is not an object


def test_missing_object(storage: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("nope")
    storage.put_bytes("file", b"x")
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("file/below")  # a file in the way
    target = tmp_path / "t"
    with pytest.raises(ObjectNotFound):
        storage.get_file("nope", target)
    assert not target.exists()


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../../b", "a//b", "a/./b", "a/", "a\\b"])
def test_unsafe_keys_rejected(storage: LocalStorage, key: str, tmp_path: Path) -> None:
    for call in (lambda: storage.put_bytes(key, b"x"), lambda: storage.get_bytes(key),
                 lambda: storage.exists(key), lambda: storage.get_file(key, tmp_path / "o"),
                 lambda: storage.put_file(key, Path(__file__))):
        with pytest.raises(UnsafePath):
            call()
    assert not (tmp_path / "up").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("prefix", ["../", "/", "a/../../"])
def test_unsafe_prefix_rejected(storage: LocalStorage, prefix: str) -> None:
    with pytest.raises(UnsafePath):
        list(storage.list(prefix))


def test_list_order_and_prefix(storage: LocalStorage) -> None:
    keys = ["b", "a/b", "a-b", "a/c/d", "ab", "runs/R1/x", "runs/R10/y", "runs/R2/z"]
    for i, k in enumerate(keys):
        storage.put_bytes(k, b"x" * i)
    assert [o.key for o in storage.list("")] == sorted(keys)  # plain string order, like S3
    assert list(storage.list("runs/R1/")) == [ObjectInfo("runs/R1/x", 5)]
    assert [o.key for o in storage.list("runs/R1")] == ["runs/R1/x", "runs/R10/y"]
    assert [o.key for o in storage.list("a")] == ["a-b", "a/b", "a/c/d", "ab"]
    assert [o.key for o in storage.list("a/c")] == ["a/c/d"]
    assert list(storage.list("zzz/")) == []
    assert list(storage.list("b/")) == []  # "b" is a file, not a folder


def test_list_on_missing_root(tmp_path: Path) -> None:
    assert list(LocalStorage(tmp_path / "never").list("")) == []


def test_temp_files_never_listed(storage: LocalStorage) -> None:
    storage.put_bytes("d/real", b"1")
    (storage.root / "d" / f".real.abc{TMP_SUFFIX}").write_bytes(b"crash leftover")
    assert [o.key for o in storage.list("")] == ["d/real"]


def test_failed_write_leaves_old_object_and_no_temp(storage: LocalStorage, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    storage.put_bytes("d/obj", b"old")
    src = tmp_path / "src"
    src.write_bytes(b"new" * 100_000)

    def broken_copy(fsrc, fdst, length=0):  # type: ignore[no-untyped-def]
        fdst.write(fsrc.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local, "_copy", broken_copy)
    with pytest.raises(StorageError, match="No space left"):
        storage.put_file("d/obj", src)
    with pytest.raises(StorageError):
        storage.put_file("d/new", src)
    monkeypatch.undo()
    assert storage.get_bytes("d/obj") == b"old"
    assert not storage.exists("d/new")
    assert sorted(os.listdir(storage.root / "d")) == ["obj"]


def test_large_file_round_trip(storage: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(50):
            chunk = bytes([i]) + block[1:]
            f.write(chunk)
            digest.update(chunk)
    storage.put_file("big/big.bin", src)
    assert list(storage.list("big/")) == [ObjectInfo("big/big.bin", 50 * 1024 * 1024)]
    dst = tmp_path / "back.bin"
    storage.get_file("big/big.bin", dst)
    got = hashlib.sha256()
    with open(dst, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()


def test_check_creates_root_and_reports_bad_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "new" / "root")
    storage.check()
    assert storage.root.is_dir() and os.listdir(storage.root) == []
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StorageError, match=str(tmp_path / "afile" / "sub")):
        LocalStorage(tmp_path / "afile" / "sub").check()


def test_url_and_open_storage(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/s")
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "s"
    assert storage.url == f"file://{tmp_path}/s"
    assert open_storage(str(tmp_path)).root == tmp_path  # type: ignore[attr-defined]
    assert open_storage(storage.url).root == storage.root  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["relative/path", "file://relative", "s3://", "ftp://x/y",
                                 "", "s3://bucket/p?x=1"])
def test_open_storage_rejects(url: str) -> None:
    with pytest.raises(ConfigError, match="DSTACK_STORAGE_URL") as info:
        open_storage(url)
    assert "s3://bucket" in str(info.value) and "file:///" in str(info.value)


def test_progress_copy_and_delete(storage: LocalStorage, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    sent: list[int] = []
    storage.put_file("runs/r/artifacts/j/big.bin", source, progress=sent.append)
    assert sum(sent) == source.stat().st_size and len(sent) > 1
    received: list[int] = []
    storage.get_file("runs/r/artifacts/j/big.bin", tmp_path / "back.bin", progress=received.append)
    assert sum(received) == source.stat().st_size
    storage.copy("runs/r/artifacts/j/big.bin", "runs/s/artifacts/j/big.bin")
    assert storage.get_bytes("runs/s/artifacts/j/big.bin") == source.read_bytes()
    with pytest.raises(ObjectNotFound):
        storage.copy("runs/r/missing", "runs/r/other")
    storage.put_bytes("runs/r/logs/t/0.msgpack", b"12345")
    assert storage.delete_prefix("runs/r/") == (2, source.stat().st_size + 5)
    assert list(storage.list("runs/r/")) == []
    assert not (storage.root / "runs" / "r").exists()  # no empty folders left behind
    storage.delete(["runs/r/never-there"])  # no error
    assert storage.exists("runs/s/artifacts/j/big.bin")


def test_files_written_get_the_mode_open_gives_not_mkstemps(storage: LocalStorage, tmp_path: Path) -> None:
    """A job running as another user than the worker can read its inputs (mkstemp makes files 0600)."""
    source = tmp_path / "in.txt"
    source.write_text("data")
    storage.put_file("runs/r/artifacts/j/in.txt", source)
    storage.get_file("runs/r/artifacts/j/in.txt", tmp_path / "out" / "in.txt")
    (tmp_path / "plain.txt").write_text("x")
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (storage.root / "runs/r/artifacts/j/in.txt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "out" / "in.txt").stat().st_mode & 0o777 == expected
