"""``PresignedStorage`` (``dstack.storage.presigned``) against a small in-memory S3 over HTTP on 127.0.0.1, whose
"signatures" name the method and key they allow (the real thing, with moto and SigV4, is
``tests/integration/test_presigned_storage.py``)."""
from __future__ import annotations

import base64
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

import pytest

from dstack.errors import NotAllowed, ObjectNotFound, StorageError
from dstack.messages import StorageOp
from dstack.storage import ObjectInfo
from dstack.storage.presigned import MAX_PUT_SIZE, PRESIGN_BATCH, PresignedStorage
from tests.services import HandlerServer, s3_error, send_reply

BUCKET, PREFIX = "bucket", "some/prefix"
NO_WAIT = (0.0, 0.0, 0.0)


class FakeS3:
    """One bucket in memory over HTTP/1.1 (keep-alive). A request must carry ``sig=METHOD:KEY`` naming its own
    method and key (else 403, as a SigV4 signature would); ``answers`` holds statuses to answer next instead."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.answers: list[int] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.clients: set[int] = set()
        self.ignore_ranges = False
        self.damage = False  # bodies arrive changed
        self.lock = threading.Lock()
        self._server = HandlerServer(self.handle)
        self.endpoint = self._server.endpoint

    def stop(self) -> None:
        self._server.stop()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        query = {name: values[0] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0)) + (b"!" if self.damage else b"")
        key = unquote(parts.path)[len(f"/{BUCKET}/"):]
        with self.lock:
            self.requests.append((request.command, key, dict(request.headers)))
            self.clients.add(request.client_address[1])
            forced = self.answers.pop(0) if self.answers else None
        if forced is not None:
            return send_reply(request, forced, s3_error("Forced", "as the test asked"))
        listing = parts.path == f"/{BUCKET}" and query.get("list-type") == "2"
        if query.get("sig") != f"{request.command}:{query.get('prefix') if listing else key}":
            return send_reply(request, 403, s3_error("SignatureDoesNotMatch", "signed for something else"))
        if listing:
            return send_reply(request, 200, self.listing(query))
        if request.command == "PUT":
            checksum = request.headers.get("x-amz-checksum-sha256")
            if checksum is not None and checksum != base64.b64encode(hashlib.sha256(body).digest()).decode():
                return send_reply(request, 400, s3_error("BadDigest", "the checksum does not match"))
            if request.headers.get("If-None-Match") == "*" and key in self.objects:
                return send_reply(request, 412, s3_error("PreconditionFailed", "If-None-Match"))
            self.objects[key] = body
            return send_reply(request, 200, b"")
        if request.command == "DELETE":
            self.objects.pop(key, None)
            return send_reply(request, 204, b"")
        if key not in self.objects:
            return send_reply(request, 404, b"" if request.command == "HEAD" else s3_error("NoSuchKey", key))
        data = self.objects[key]
        wanted = request.headers.get("Range")
        if wanted and not self.ignore_ranges:
            first, last = (int(n) for n in wanted.removeprefix("bytes=").split("-"))
            return send_reply(request, 206, data[first:last + 1])
        return send_reply(request, 200, data)

    def listing(self, query: dict[str, str]) -> bytes:
        keys = sorted(k for k in self.objects if k.startswith(query["prefix"]))
        start = int(query.get("continuation-token") or 0)
        size = int(query.get("max-keys") or 1000)
        page = keys[start:start + size]
        more = start + size < len(keys)
        contents = "".join(f"<Contents><Key>{escape(quote(k, safe='/'))}</Key><Size>{len(self.objects[k])}</Size>"
                           f"</Contents>" for k in page)
        token = f"<NextContinuationToken>{start + size}</NextContinuationToken>" if more else ""
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                f'2006-03-01/"><Name>{BUCKET}</Name><EncodingType>url</EncodingType><IsTruncated>{str(more).lower()}'
                f'</IsTruncated>{contents}{token}</ListBucketResult>').encode()



class Scheduler:
    """The presign callable: URLs of the fake server, recording every call (never two at once)."""

    def __init__(self, s3: FakeS3, *, page_size: int = 1000, expires: int = 300, delay: float = 0.0,
                 refuse: Optional[str] = None) -> None:
        self.s3, self.page_size, self.expires, self.delay, self.refuse = s3, page_size, expires, delay, refuse
        self.calls: list[list[StorageOp]] = []
        self.running = 0
        self.overlapped = False

    def __call__(self, ops: list[StorageOp]) -> list[str]:
        self.running += 1
        self.overlapped |= self.running > 1
        try:
            time.sleep(self.delay)
            self.calls.append(list(ops))
            return [self.url(op) for op in ops]
        finally:
            self.running -= 1

    def url(self, op: StorageOp) -> str:
        if self.refuse and op.key.startswith(self.refuse):
            raise NotAllowed(f"{op.action} {op.key!r}: not yours")
        full = f"{PREFIX}/{op.key}"
        method = {"get": "GET", "head": "HEAD", "put": "PUT", "delete": "DELETE", "list": "GET"}[op.action]
        signed = "host;x-amz-checksum-sha256" if op.action == "put" and op.sha256 else "host"
        query = {"X-Amz-Expires": str(self.expires), "X-Amz-SignedHeaders": signed, "sig": f"{method}:{full}"}
        if op.action == "list":
            query.update({"list-type": "2", "prefix": full, "max-keys": str(self.page_size), "encoding-type": "url"})
            if op.continuation:
                query["continuation-token"] = op.continuation
            return f"{self.s3.endpoint}/{BUCKET}?{urlencode(query)}"
        return f"{self.s3.endpoint}/{BUCKET}/{quote(full)}?{urlencode(query)}"

    def ops(self) -> list[tuple[str, str]]:
        return [(op.action, op.key) for call in self.calls for op in call]


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    server = FakeS3()
    yield server
    server.stop()


def storage_of(scheduler: Scheduler, **kwargs: Any) -> PresignedStorage:
    return PresignedStorage(f"s3://{BUCKET}/{PREFIX}", scheduler, retry_delays=NO_WAIT, proxies={}, **kwargs)


@pytest.fixture
def scheduler(s3: FakeS3) -> Scheduler:
    return Scheduler(s3, page_size=2)


@pytest.fixture
def storage(scheduler: Scheduler) -> PresignedStorage:
    return storage_of(scheduler)


# ------------------------------------------------------------------------------------------------ round trips


def test_bytes_files_ranges_and_existence(storage: PresignedStorage, s3: FakeS3, tmp_path: Path) -> None:
    storage.put_bytes("runs/r1/a b+c ü.txt", b"hello")
    assert s3.objects[f"{PREFIX}/runs/r1/a b+c ü.txt"] == b"hello"
    assert storage.get_bytes("runs/r1/a b+c ü.txt") == b"hello"
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    sent: list[int] = []
    storage.put_file("blobs/big", source, sent.append)
    assert sum(sent) == source.stat().st_size
    target = tmp_path / "out" / "deep" / "target.bin"
    received: list[int] = []
    storage.get_file("blobs/big", target, received.append)
    assert target.read_bytes() == source.read_bytes() and sum(received) == source.stat().st_size
    assert os.listdir(target.parent) == ["target.bin"]
    with storage.open_range("blobs/big", 1024 * 1024 - 3, 10) as stream:
        assert stream.read(4) + stream.read() == source.read_bytes()[1024 * 1024 - 3:1024 * 1024 + 7]
    with storage.open_range("blobs/big", 5, 0) as stream:
        assert stream.read() == b""
    assert storage.exists("blobs/big") and not storage.exists("blobs/nothing")


def test_every_put_carries_the_checksum_the_server_checks(storage: PresignedStorage, s3: FakeS3) -> None:
    storage.put_bytes("blobs/x", b"content")
    method, _, headers = s3.requests[-1]
    assert method == "PUT" and headers["x-amz-checksum-sha256"] == base64.b64encode(
        hashlib.sha256(b"content").digest()).decode()
    assert headers["Content-Type"] == "application/octet-stream" and headers["Content-Length"] == "7"


def test_content_the_server_refuses_by_its_checksum(storage: PresignedStorage, s3: FakeS3) -> None:
    s3.damage = True  # as if the file changed between its digest and its upload
    with pytest.raises(StorageError, match="content changed while it was uploaded.*BadDigest"):
        storage.put_bytes("blobs/x", b"content")
    assert not s3.objects


def test_missing_objects(storage: PresignedStorage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("runs/r1/nope")
    with pytest.raises(ObjectNotFound):
        storage.get_file("runs/r1/nope", tmp_path / "t")
    with pytest.raises(ObjectNotFound):
        with storage.open_range("runs/r1/nope", 0, 3):
            pass
    assert os.listdir(tmp_path) == []
    storage.delete(["runs/r1/nope"])  # no error


def test_listing_pages_strips_the_prefix_and_decodes_keys(storage: PresignedStorage, scheduler: Scheduler,
                                                          s3: FakeS3) -> None:
    keys = ["runs/r1/logs/a", "runs/r1/logs/b c", "runs/r1/logs/d+e", "runs/r1/logs/f%g", "runs/r1/logs/ü"]
    for i, key in enumerate(keys):
        s3.objects[f"{PREFIX}/{key}"] = b"x" * i
    s3.objects[f"{PREFIX}/runs/r10/logs/a"] = b"other run"
    assert list(storage.list("runs/r1/logs/")) == [ObjectInfo(key, i) for i, key in enumerate(keys)]
    pages = [op for op in (op for call in scheduler.calls for op in call) if op.action == "list"]
    assert [op.continuation for op in pages] == ["", "2", "4"]  # 2 keys a page
    assert list(storage.list("runs/r2/")) == []


def test_delete_many_and_delete_prefix(storage: PresignedStorage, scheduler: Scheduler, s3: FakeS3) -> None:
    for i in range(25):
        storage.put_bytes(f"runs/r1/artifacts/j/{i:02d}", b"12345")
    storage.put_bytes("runs/r2/keep", b"x")
    assert storage.delete_prefix("runs/r1/") == (25, 125)
    assert list(s3.objects) == [f"{PREFIX}/runs/r2/keep"]
    deletes = [call for call in scheduler.calls if call[0].action == "delete"]
    assert [len(call) for call in deletes] == [25]  # the URLs of a batch in one call


def test_a_server_that_ignores_ranges(storage: PresignedStorage, s3: FakeS3) -> None:
    storage.put_bytes("blobs/p", bytes(range(200)))
    s3.ignore_ranges = True
    with storage.open_range("blobs/p", 100, 50) as stream:
        assert stream.read() == bytes(range(100, 150))


def test_keep_alive(storage: PresignedStorage, s3: FakeS3) -> None:
    storage.put_bytes("blobs/k", b"x")
    s3.clients.clear()
    for _ in range(5):
        assert storage.get_bytes("blobs/k") == b"x"
        assert storage.exists("blobs/k")
    assert len(s3.clients) == 1


def test_a_write_once_key_stored_already_is_kept(s3: FakeS3) -> None:
    class WriteOnce(Scheduler):
        def url(self, op: StorageOp) -> str:
            url = super().url(op)
            return url.replace("x-amz-checksum-sha256", "x-amz-checksum-sha256%3Bif-none-match") if op.action == "put" \
                else url

    storage = storage_of(WriteOnce(s3))
    storage.put_bytes("snapshots/s.json", b"first")
    storage.put_bytes("snapshots/s.json", b"second")
    assert s3.objects[f"{PREFIX}/snapshots/s.json"] == b"first"
    assert s3.requests[-1][2]["If-None-Match"] == "*"


def test_an_upload_larger_than_one_put_may_be(storage: PresignedStorage, scheduler: Scheduler, tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(MAX_PUT_SIZE + 1)  # sparse: nothing is written
    with pytest.raises(StorageError, match="S3 limits to 5 GiB"):
        storage.put_file("runs/r/artifacts/upload.0/huge", huge)
    assert scheduler.calls == []


def test_copy_is_refused(storage: PresignedStorage) -> None:
    with pytest.raises(StorageError, match="only workers copy"):
        storage.copy("blobs/a", "blobs/b")


def test_a_storage_url_that_is_no_s3_url() -> None:
    with pytest.raises(StorageError, match="s3://bucket/prefix"):
        PresignedStorage("file:///tmp/x", lambda ops: [])


# ------------------------------------------------------------------------------------------------- failures


def test_transient_failures_are_tried_again(storage: PresignedStorage, s3: FakeS3) -> None:
    storage.put_bytes("blobs/t", b"x")
    s3.answers = [503, 500, 429]
    assert storage.get_bytes("blobs/t") == b"x"
    s3.answers = [503] * 10
    with pytest.raises(StorageError, match="503.*failed 4 times"):
        storage.get_bytes("blobs/t")


def test_a_server_that_cannot_be_reached(scheduler: Scheduler, s3: FakeS3) -> None:
    s3.stop()
    with pytest.raises(StorageError, match="no answer from 127.0.0.1.*failed 4 times"):
        storage_of(scheduler).get_bytes("blobs/t")


def test_a_refused_url_is_asked_for_again_once(storage: PresignedStorage, scheduler: Scheduler, s3: FakeS3) -> None:
    storage.put_bytes("blobs/t", b"x")
    assert storage.get_bytes("blobs/t") == b"x"
    s3.answers = [403]  # as for an expired URL
    assert storage.get_bytes("blobs/t") == b"x"
    assert scheduler.ops().count(("get", "blobs/t")) == 2
    s3.answers = [403, 403]
    with pytest.raises(StorageError, match="refused the presigned URL.*403 Forced"):
        storage.get_bytes("blobs/t")


def test_the_schedulers_refusal_comes_through(s3: FakeS3) -> None:
    storage = storage_of(Scheduler(s3, refuse="runs/secret/"))
    with pytest.raises(NotAllowed, match="not yours"):
        storage.get_bytes("runs/secret/x")


# ----------------------------------------------------------------------------------------------------- URLs


def test_urls_are_reused_while_they_live(s3: FakeS3) -> None:
    scheduler = Scheduler(s3)
    storage = storage_of(scheduler)
    storage.put_bytes("blobs/u", b"x")
    for _ in range(3):
        storage.get_bytes("blobs/u")
    assert scheduler.ops() == [("put", "blobs/u"), ("get", "blobs/u")]
    short = Scheduler(s3, expires=0)  # no lifetime: each URL used once
    storage = storage_of(short)
    for _ in range(3):
        storage.get_bytes("blobs/u")
    assert short.ops() == [("get", "blobs/u")] * 3


def test_threads_share_presign_calls_and_never_call_it_at_once(s3: FakeS3) -> None:
    scheduler = Scheduler(s3, delay=0.05)
    storage = storage_of(scheduler)
    results: dict[int, bool] = {}

    def check(i: int) -> None:
        results[i] = storage.exists(f"blobs/n{i}")

    threads = [threading.Thread(target=check, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: False for i in range(16)}
    assert sorted(key for _, key in scheduler.ops()) == sorted(f"blobs/n{i}" for i in range(16))
    assert len(scheduler.calls) < 16 and not scheduler.overlapped


def test_nobody_fails_for_another_threads_refused_operation(s3: FakeS3) -> None:
    scheduler = Scheduler(s3, delay=0.05, refuse="runs/secret/")
    storage = storage_of(scheduler)
    outcomes: dict[str, object] = {}

    def check(key: str) -> None:
        try:
            outcomes[key] = storage.exists(key)
        except NotAllowed as e:
            outcomes[key] = e

    threads = [threading.Thread(target=check, args=(key,))
               for key in ["blobs/first", *(f"runs/secret/{i}" for i in range(3)), *(f"blobs/{i}" for i in range(5))]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {key: isinstance(outcome, NotAllowed) for key, outcome in outcomes.items()} == {
        "blobs/first": False, **{f"runs/secret/{i}": True for i in range(3)}, **{f"blobs/{i}": False for i in range(5)}}
    assert not scheduler.overlapped


def test_prefetch_asks_in_batches(storage: PresignedStorage, scheduler: Scheduler) -> None:
    ops = [StorageOp("head", f"blobs/p{i}") for i in range(PRESIGN_BATCH + 10)]
    storage.prefetch(ops)
    assert [len(call) for call in scheduler.calls] == [PRESIGN_BATCH, 10]
    assert not storage.exists("blobs/p3")
    assert len(scheduler.calls) == 2  # the URL was there


def test_reading_a_runs_logs_asks_for_its_urls_together(s3: FakeS3) -> None:
    from dstack.logs import LogChunk, merged_lines, stored_chunks
    from dstack.names import log_chunk_key

    scheduler = Scheduler(s3)
    storage = storage_of(scheduler)
    for task in ("a.0", "b.0"):
        for number in range(30):
            chunk = LogChunk(task, number, [(number, f"line {number}")])
            storage.put_bytes(log_chunk_key("r1", task, number), chunk.encode())
    scheduler.calls.clear()
    lines = list(merged_lines(stored_chunks(storage, "r1")))
    assert len(lines) == 60
    assert len(scheduler.calls) == 2  # one for the listing, one for the 60 reads


def test_what_s3_storage_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URLs themselves (no request is made): SigV4, one key each, the lifetime, the signed headers."""
    from dstack.storage.s3 import S3Storage

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3 = S3Storage(BUCKET, PREFIX)

    def query(url: str) -> dict[str, str]:
        return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    get = s3.presign(StorageOp("get", "runs/r1/a b.txt"), 120)
    assert urlsplit(get).path == f"/{BUCKET}/{PREFIX}/runs/r1/a%20b.txt"
    assert query(get)["X-Amz-Expires"] == "120" and query(get)["X-Amz-SignedHeaders"] == "host"
    assert query(get)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and "X-Amz-Signature" in query(get)
    digest = hashlib.sha256(b"x").hexdigest()
    put = s3.presign(StorageOp("put", "blobs/aa/b", sha256=digest), 60, create_only=True)
    assert query(put)["X-Amz-SignedHeaders"] == "host;if-none-match;x-amz-checksum-sha256"
    listing = query(s3.presign(StorageOp("list", "runs/r1/", continuation="t0k"), 60, max_keys=7))
    assert (listing["prefix"], listing["continuation-token"], listing["max-keys"]) == (f"{PREFIX}/runs/r1/", "t0k", "7")
    for method, action in (("HEAD", "head"), ("DELETE", "delete")):
        assert urlsplit(s3.presign(StorageOp(action, "k"), 60)).path == f"/{BUCKET}/{PREFIX}/k", method
    with pytest.raises(ValueError, match="'copy'"):
        s3.presign(StorageOp("copy", "k"), 60)
    with pytest.raises(ValueError, match="no SHA-256"):
        s3.presign(StorageOp("put", "k", sha256="abc"), 60)
    with pytest.raises(ValueError, match="1 to 604800"):
        s3.presign(StorageOp("get", "k"), 8 * 24 * 3600)


def test_importing_it_loads_no_boto3() -> None:
    code = ("import sys, dstack.storage.presigned; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 's3transfer')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
