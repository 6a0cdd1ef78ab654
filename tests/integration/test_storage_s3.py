"""S3Storage against a real S3 server (moto's server mode) over HTTP on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from dstack.errors import ObjectNotFound, StorageError, UnsafePath
from dstack.storage import ObjectInfo, open_storage
from dstack.storage.base import NEW_FILE_MODE
from dstack.storage.s3 import S3Storage
from tests.s3server import MotoServer, free_port, moto_in_environment

pytestmark = pytest.mark.integration

BUCKET = "dstack-test"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One server for the module; its settings in the environment, as in production."""
    with moto_in_environment(BUCKET) as server:
        yield server


@pytest.fixture
def storage(moto: MotoServer) -> S3Storage:
    """A fresh prefix per test, so tests never see each other's objects."""
    return S3Storage(BUCKET, f"tests/{uuid.uuid4().hex}")


def test_url_and_open_storage(moto: MotoServer) -> None:
    storage = open_storage(f"s3://{BUCKET}/some/prefix/")
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.url) == (BUCKET, "some/prefix",
                                                             f"s3://{BUCKET}/some/prefix")
    assert open_storage(f"s3://{BUCKET}").url == f"s3://{BUCKET}"
    storage.check()


def test_bytes_round_trip(storage: S3Storage) -> None:
    storage.put_bytes("runs/r1/meta.json", b'{"a": 1}')
    assert storage.get_bytes("runs/r1/meta.json") == b'{"a": 1}'
    storage.put_bytes("runs/r1/meta.json", b"v2")
    assert storage.get_bytes("runs/r1/meta.json") == b"v2"


def test_small_file_round_trip(storage: S3Storage, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"hello\n")
    storage.put_file("f/src.txt", src)
    dst = tmp_path / "out" / "deep" / "dst.txt"
    storage.get_file("f/src.txt", dst)
    assert dst.read_bytes() == b"hello\n"
    assert os.listdir(dst.parent) == ["dst.txt"]


def test_exists_and_missing(storage: S3Storage, tmp_path: Path) -> None:
    assert not storage.exists("x")
    storage.put_bytes("x", b"")
    assert storage.exists("x")
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("nope")
    target = tmp_path / "t"
    with pytest.raises(ObjectNotFound):
        storage.get_file("nope", target)
    assert os.listdir(tmp_path) == []  # neither the target nor a temp file


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a//b", "a/./b"])
def test_unsafe_keys_rejected(storage: S3Storage, key: str) -> None:
    with pytest.raises(UnsafePath):
        storage.put_bytes(key, b"x")
    with pytest.raises(UnsafePath):
        storage.get_bytes(key)
    with pytest.raises(UnsafePath):
        storage.list("../")


def test_list_order_and_prefix(storage: S3Storage, moto: MotoServer) -> None:
    keys = ["b", "a/b", "a-b", "a/c/d", "ab", "runs/R1/x", "runs/R10/y", "runs/R2/z"]
    for i, k in enumerate(keys):
        storage.put_bytes(k, b"x" * i)
    assert [o.key for o in storage.list("")] == sorted(keys)  # the storage prefix is stripped
    assert list(storage.list("runs/R1/")) == [ObjectInfo("runs/R1/x", 5)]
    assert [o.key for o in storage.list("runs/R1")] == ["runs/R1/x", "runs/R10/y"]
    assert [o.key for o in storage.list("a")] == ["a-b", "a/b", "a/c/d", "ab"]
    assert list(storage.list("zzz/")) == []
    # A sibling prefix that merely starts the same is not ours.
    S3Storage(BUCKET, storage.prefix + "x").put_bytes("b", b"other")
    assert len(list(storage.list(""))) == len(keys)


def test_list_paginates(storage: S3Storage) -> None:
    for i in range(1005):  # more than one page of 1000
        storage.put_bytes(f"many/{i:05d}", b"")
    assert [o.key for o in storage.list("many/")] == [f"many/{i:05d}" for i in range(1005)]


def test_multipart_file_round_trip(storage: S3Storage, tmp_path: Path) -> None:
    size = 20 * 1024 * 1024 + 123  # above the 8 MB threshold, not a whole number of parts
    src = tmp_path / "big.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    storage.put_file("big/big.bin", src)
    assert list(storage.list("big/")) == [ObjectInfo("big/big.bin", size)]
    head = boto3.client("s3").head_object(Bucket=BUCKET, Key=f"{storage.prefix}/big/big.bin")
    assert head["ETag"].endswith('-3"')  # uploaded as 3 parts: 8 MB + 8 MB + the rest
    dst = tmp_path / "back.bin"
    storage.get_file("big/big.bin", dst)
    assert dst.stat().st_size == size
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "big.bin"]


def test_missing_bucket_is_named(moto: MotoServer) -> None:
    storage = S3Storage("no-such-bucket")
    with pytest.raises(StorageError, match="no-such-bucket.*does not exist"):
        storage.check()
    with pytest.raises(StorageError, match="no-such-bucket"):
        storage.put_bytes("k", b"x")


def test_unreachable_endpoint(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    storage = S3Storage(BUCKET, "p")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.check()
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert endpoint in message and "s3://dstack-test/p" in message
    assert "AWS_ENDPOINT_URL_S3" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(StorageError, match=endpoint):
        storage.get_bytes("k")


def test_missing_credentials(moto: MotoServer, monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match="credentials") as info:
        S3Storage(BUCKET).get_bytes("k")
    assert moto.endpoint_url in str(info.value)


def test_progress_copy_and_delete(storage: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(9 * 1024 * 1024))  # above the multipart threshold
    sent: list[int] = []
    storage.put_file("runs/r/artifacts/j/big.bin", source, progress=sent.append)
    assert sum(sent) == source.stat().st_size
    received: list[int] = []
    storage.get_file("runs/r/artifacts/j/big.bin", tmp_path / "back.bin", progress=received.append)
    assert sum(received) == source.stat().st_size
    assert (tmp_path / "back.bin").stat().st_mode & 0o777 == NEW_FILE_MODE  # not mkstemp's 0600
    storage.copy("runs/r/artifacts/j/big.bin", "runs/s/artifacts/j/big.bin")
    storage.get_file("runs/s/artifacts/j/big.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    with pytest.raises(ObjectNotFound):
        storage.copy("runs/r/missing", "runs/r/other")
    for i in range(1005):  # more than one delete_objects request
        storage.put_bytes(f"runs/r/logs/t/{i:05d}", b"x")
    assert storage.delete_prefix("runs/r/") == (1006, source.stat().st_size + 1005)
    assert list(storage.list("runs/r/")) == []
    storage.delete(["runs/r/never-there"])
    assert storage.exists("runs/s/artifacts/j/big.bin")
