"""A CLI without storage credentials: ``PresignedStorage`` with URLs that ``StorageGrants`` signs over a real
``S3Storage``, against an S3 server (moto's server mode) on 127.0.0.1.

moto checks no presigned URL: neither its signature nor its expiry nor the checksum it signs (it accepts a URL
whose key was edited, and any content; with ``INITIAL_NO_AUTH_ACTION_COUNT`` set it fails every presigned
request, which carries no ``Authorization`` header). So the client reaches moto through :class:`SigV4Gate`, a
proxy that checks what AWS S3 and MinIO check (the SigV4 query signature, recomputed here independently of
botocore, the expiry, the signed headers and ``x-amz-checksum-sha256`` against the body) and forwards what
passes. ``test_moto_alone_checks_no_signature`` shows why it is needed.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import pytest

from dstack.errors import NotAllowed, StorageError
from dstack.messages import StorageOp
from dstack.scheduler.access import Caller, Role
from dstack.scheduler.grants import StorageGrants
from dstack.snapshot import materialize_snapshot, upload_snapshot
from dstack.storage import ObjectInfo
from dstack.storage.presigned import PresignedStorage
from dstack.storage.s3 import S3Storage
from tests.s3server import TEST_CREDENTIALS, MotoServer, moto_in_environment
from tests.services import HandlerServer, s3_error, send_reply

pytestmark = pytest.mark.integration

BUCKET = "dstack-presigned"
ALICE = Caller("alice", Role.USER)
BOB = Caller("bob", Role.USER)
_NO_PROXY: dict[str, str] = {}  # the client goes straight to 127.0.0.1


class SigV4Gate:
    """A proxy before an S3 server that refuses what S3 refuses of presigned requests (see the module's
    docstring); requests with an ``Authorization`` header (boto3's own) pass unchecked."""

    def __init__(self, upstream: str, secret: str) -> None:
        self.upstream = urlsplit(upstream)
        self.secret = secret
        self.refusals: list[str] = []
        self._server = HandlerServer(self.handle)
        self.endpoint = self._server.endpoint

    def stop(self) -> None:
        self._server.stop()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in request.headers.items()}
        if "authorization" not in headers:
            refusal = self.refusal(request.command, request.path, headers, body)
            if refusal is not None:
                self.refusals.append(refusal[1])
                return send_reply(request, refusal[0], s3_error(refusal[1], refusal[2]))
        upstream = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port, timeout=30)
        try:
            forwarded = {name: value for name, value in request.headers.items()
                         if name.lower() not in ("host", "connection", "transfer-encoding")}
            upstream.request(request.command, request.path, body=body, headers=forwarded)
            answer = upstream.getresponse()
            data = answer.read()
            kept = [(name, value) for name, value in answer.getheaders()
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date")]
            if request.command == "HEAD":
                kept.append(("Content-Length", answer.getheader("Content-Length") or "0"))
            send_reply(request, answer.status, data, kept)
        finally:
            upstream.close()

    def refusal(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Optional[tuple[int, str, str]]:
        """Why S3 would refuse this request (status, code, message), or ``None``."""
        path, _, query = target.partition("?")
        pairs = [pair.partition("=")[::2] for pair in query.split("&") if pair]
        params = dict(pairs)
        if "X-Amz-Signature" not in params:
            return 403, "AccessDenied", "anonymous requests are refused"
        try:
            signed = params["X-Amz-SignedHeaders"].split("%3B")
            date = params["X-Amz-Date"]
            scope = unquote(params["X-Amz-Credential"]).split("/", 1)[1]
            expires = int(params["X-Amz-Expires"])
        except (KeyError, IndexError, ValueError) as e:
            return 400, "AuthorizationQueryParametersError", f"malformed: {e!r}"
        signed_at = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        if datetime.datetime.now(datetime.timezone.utc) > signed_at + datetime.timedelta(seconds=expires):
            return 403, "AccessDenied", "Request has expired"
        if any(name not in headers for name in signed):
            return 403, "AccessDenied", f"a signed header is missing: {signed}"
        canonical = "\n".join([
            method, path, "&".join(f"{k}={v}" for k, v in sorted(pairs) if k != "X-Amz-Signature"),
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed), ";".join(signed),
            "UNSIGNED-PAYLOAD"])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = f"AWS4{self.secret}".encode()
        for part in scope.split("/"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
                                   params["X-Amz-Signature"]):
            return 403, "SignatureDoesNotMatch", "the signature does not match the request"
        checksum = headers.get("x-amz-checksum-sha256")
        if checksum is not None and checksum != base64.b64encode(hashlib.sha256(body).digest()).decode():
            return 400, "BadDigest", "the SHA-256 you specified did not match the content"
        return None



def http_status(method: str, url: str, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None) -> int:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/octet-stream", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_in_environment(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def gate(moto: MotoServer) -> Iterator[SigV4Gate]:
    proxy = SigV4Gate(moto.endpoint_url, TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    yield proxy
    proxy.stop()


class Fleet:
    """The scheduler's side (a signing ``S3Storage`` behind the gate, the grants, the runs and their owners), a
    worker's view of the same objects (``direct``, straight to moto), and clients of users."""

    def __init__(self, signer: S3Storage, direct: S3Storage, visibility: str = "all") -> None:
        self.signer, self.direct = signer, direct
        self.owners: dict[str, str] = {}
        self.grants = StorageGrants(signer, visibility, page_size=3)
        self.asked: list[list[StorageOp]] = []

    def client(self, caller: Caller = ALICE) -> PresignedStorage:
        def presign(ops: list[StorageOp]) -> list[str]:
            self.asked.append(ops)
            return self.grants.presign(ops, caller, self.owners.get).urls

        return PresignedStorage(self.signer.url, presign, retry_delays=(0.1,), proxies=_NO_PROXY)


@pytest.fixture
def fleet(moto: MotoServer, gate: SigV4Gate, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    """A fresh prefix; the AWS settings gone from the environment once the scheduler's and the worker's clients are
    made: the users' clients run without them."""
    prefix = f"tests/{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", gate.endpoint)
    signer = S3Storage(BUCKET, prefix)
    signer.presign(StorageOp("get", "warm"), 60)  # its signing client made now, while the settings are there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint_url)
    direct = S3Storage(BUCKET, prefix)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    return Fleet(signer, direct)


# ---------------------------------------------------------------------------------------------------- tests


def test_an_upload_is_read_back_and_deleted_with_no_credentials(fleet: Fleet, tmp_path: Path) -> None:
    assert not [name for name in os.environ if name.startswith("AWS_")]
    alice = fleet.client(ALICE)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    base = "runs/new-run/artifacts/upload.0/"
    # before RecordUpload: the run does not exist, its upload's files may be stored
    alice.put_file(base + "data/data.bin", data)
    alice.put_bytes(base + "data/notes ü+1.txt", b"notes")
    alice.put_bytes("runs/new-run/manifests/upload.0.json", b"{}")
    fleet.owners["new-run"] = "alice"  # recorded
    assert fleet.direct.get_bytes(base + "data/notes ü+1.txt") == b"notes"  # the workers see it
    assert alice.get_bytes(base + "data/notes ü+1.txt") == b"notes"
    target = tmp_path / "out" / "data.bin"
    alice.get_file(base + "data/data.bin", target)
    assert target.read_bytes() == data.read_bytes()
    with alice.open_range(base + "data/data.bin", 1024 * 1024 - 2, 9) as stream:
        assert stream.read() == data.read_bytes()[1024 * 1024 - 2:1024 * 1024 + 7]
    assert alice.exists(base + "data/data.bin") and not alice.exists(base + "data/none")
    assert list(alice.list("runs/new-run/")) == list(fleet.direct.list("runs/new-run/")) == [
        ObjectInfo(base + "data/data.bin", data.stat().st_size), ObjectInfo(base + "data/notes ü+1.txt", 5),
        ObjectInfo("runs/new-run/manifests/upload.0.json", 2)]
    with pytest.raises(NotAllowed, match="run new-run exists"):
        alice.delete_prefix("runs/new-run/")
    del fleet.owners["new-run"]  # the scheduler deleted the run: its objects go
    assert alice.delete_prefix("runs/new-run/") == (3, data.stat().st_size + 7)
    assert list(fleet.direct.list("runs/new-run/")) == []


def test_listing_pages_with_continuation_tokens(fleet: Fleet) -> None:
    keys = [f"runs/r1/logs/w.0/{i:010d}.msgpack" for i in range(8)]
    for key in keys:
        fleet.direct.put_bytes(key, b"chunk")
    fleet.direct.put_bytes("runs/r10/logs/w.0/0000000000.msgpack", b"another run")
    fleet.owners["r1"] = "bob"
    assert [info.key for info in fleet.client(ALICE).list("runs/r1/logs/")] == keys
    pages = [op for ops in fleet.asked for op in ops if op.action == "list"]
    assert len(pages) == 3 and pages[0].continuation == "" and all(op.continuation for op in pages[1:])


def test_a_url_for_one_key_cannot_reach_another(fleet: Fleet, gate: SigV4Gate) -> None:
    fleet.direct.put_bytes("runs/alice-run/logs/w.0/0000000000.msgpack", b"alice's")
    fleet.direct.put_bytes("runs/bob-run/logs/w.0/0000000000.msgpack", b"bob's")
    fleet.owners.update({"alice-run": "alice", "bob-run": "bob"})
    fleet.grants.visibility = "own"
    url = fleet.grants.presign([StorageOp("get", "runs/alice-run/logs/w.0/0000000000.msgpack")], ALICE,
                               fleet.owners.get).urls[0]
    assert http_status("GET", url) == 200
    assert http_status("GET", url.replace("/alice-run/", "/bob-run/")) == 403  # the key edited
    assert http_status("HEAD", url) == 403  # another method
    assert http_status("GET", url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")) == 403  # a longer life
    assert gate.refusals[-3:] == ["SignatureDoesNotMatch"] * 3
    with pytest.raises(NotAllowed, match="belongs to bob"):
        fleet.client(ALICE).get_bytes("runs/bob-run/logs/w.0/0000000000.msgpack")


def test_moto_alone_checks_no_signature(fleet: Fleet, moto: MotoServer, gate: SigV4Gate) -> None:
    """Why the gate: moto serves an edited URL and content its checksum refuses."""
    fleet.direct.put_bytes("runs/bob-run/x", b"bob's")
    fleet.owners.update({"alice-run": "alice", "bob-run": "bob"})
    url = fleet.grants.presign([StorageOp("get", "runs/alice-run/x")], ALICE, fleet.owners.get).urls[0]
    assert http_status("GET", url.replace(gate.endpoint, moto.endpoint_url).replace("/alice-run/", "/bob-run/")) == 200


def test_a_put_url_stores_only_its_content(fleet: Fleet, gate: SigV4Gate) -> None:
    content = b"the content"
    digest = hashlib.sha256(content).hexdigest()
    key = f"blobs/{digest[:2]}/{digest}"
    url = fleet.grants.presign([StorageOp("put", key, sha256=digest)], ALICE, fleet.owners.get).urls[0]
    checksum = {"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(digest)).decode()}
    assert http_status("PUT", url, b"other content", checksum) == 400  # BadDigest
    assert http_status("PUT", url, b"other content") == 403  # without the signed header
    assert gate.refusals[-2:] == ["BadDigest", "AccessDenied"]
    assert not fleet.direct.exists(key)
    assert http_status("PUT", url, content, checksum) == 200
    assert fleet.direct.get_bytes(key) == content
    with pytest.raises(NotAllowed, match="not the digest its key names"):
        fleet.client(ALICE).put_bytes(key, b"other content")


def test_a_manifest_is_stored_once(fleet: Fleet) -> None:
    key = "snapshots/0123456789abcdef0123456789abcdef.json"
    alice, bob = fleet.client(ALICE), fleet.client(BOB)
    alice.put_bytes(key, b'{"version": 2}')
    bob.put_bytes(key, b"replaced")  # If-None-Match: * -- the server keeps the first (412, no error)
    assert fleet.direct.get_bytes(key) == b'{"version": 2}'


def test_an_expired_url_is_refused(fleet: Fleet, gate: SigV4Gate) -> None:
    fleet.direct.put_bytes("blobs/aa/x", b"x")
    fleet.grants.expires_in = 2  # X-Amz-Date has whole seconds: 1 s could be over before the first request
    url = fleet.grants.presign([StorageOp("head", "blobs/aa/x")], BOB, fleet.owners.get).urls[0]
    assert http_status("HEAD", url) == 200
    time.sleep(3.1)
    assert http_status("HEAD", url) == 403
    assert gate.refusals[-1] == "AccessDenied"


def test_a_snapshot_goes_up_through_presigned_urls(fleet: Fleet, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    alice = fleet.client(ALICE)
    snapshot_id, files, uploaded = upload_snapshot(project, alice, tmp_path / "state")
    assert files == 42 and uploaded == 42
    asked = len(fleet.asked)
    assert upload_snapshot(project, alice, tmp_path / "state") == (snapshot_id, 42, 0)
    assert len(fleet.asked) == asked + 1  # the record's marker; the manifest's URL was kept
    target = tmp_path / "materialized"
    materialize_snapshot(fleet.direct, snapshot_id, target, tmp_path / "worker-cache")  # as a worker does
    for path in project.rglob("*"):
        if path.is_file():
            assert (target / path.relative_to(project)).read_bytes() == path.read_bytes()


def make_project(root: Path) -> Path:
    """40 small files (packed), and two large ones (blobs)."""
    for i in range(40):
        (root / "src" / f"m{i // 10}").mkdir(parents=True, exist_ok=True)
        (root / "src" / f"m{i // 10}" / f"f{i}.py").write_text(f"print({i})\n")
    (root / "big.bin").write_bytes(os.urandom(1024 * 1024 + 1))
    (root / "big2.bin").write_bytes(os.urandom(1024 * 1024 + 2))
    return root


CLIENT = """
import json, sys, urllib.request
from pathlib import Path
from dstack.messages import StorageOp
from dstack.snapshot import upload_snapshot
from dstack.storage.presigned import PresignedStorage

endpoint, url, project, state, target = sys.argv[1:]

def presign(ops):
    body = json.dumps([op.__dict__ for op in ops]).encode()
    with urllib.request.urlopen(urllib.request.Request(endpoint, body, method="POST")) as answer:
        return json.loads(answer.read())

storage = PresignedStorage(url, presign)
snapshot_id, files, uploaded = upload_snapshot(Path(project), storage, Path(state))
storage.get_file("runs/alice-run/artifacts/w.0/out.txt", Path(target))
print(json.dumps({"snapshot": snapshot_id, "files": files,
                  "logs": [info.key for info in storage.list("runs/alice-run/logs/")],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))}))
"""


def test_a_process_without_aws_settings_or_boto3(fleet: Fleet, tmp_path: Path) -> None:
    """The CLI's case: another process, with no AWS_* variable, that never imports boto3."""
    fleet.direct.put_bytes("runs/alice-run/logs/w.0/0000000000.msgpack", b"log")
    fleet.direct.put_bytes("runs/alice-run/artifacts/w.0/out.txt", b"result")
    fleet.owners["alice-run"] = "alice"

    class Scheduler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            ops = [StorageOp(**op) for op in json.loads(self.rfile.read(int(self.headers["Content-Length"])))]
            try:
                body, status = json.dumps(fleet.grants.presign(ops, ALICE, fleet.owners.get).urls).encode(), 200
            except NotAllowed as e:
                body, status = str(e).encode(), 403
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scheduler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "HOME": str(tmp_path)})
        result = subprocess.run(
            [sys.executable, "-c", CLIENT, f"http://127.0.0.1:{server.server_address[1]}/", fleet.signer.url,
             str(make_project(tmp_path / "project")), str(tmp_path / "state"), str(tmp_path / "out.txt")],
            capture_output=True, text=True, env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["files"] == 42 and answer["loaded"] == []
    assert answer["logs"] == ["runs/alice-run/logs/w.0/0000000000.msgpack"]
    assert (tmp_path / "out.txt").read_bytes() == b"result"
    assert fleet.direct.exists(f"snapshots/{answer['snapshot']}.json")


def test_what_a_user_may_not_do_is_refused_before_any_request(fleet: Fleet) -> None:
    bob = fleet.client(BOB)
    fleet.owners["alice-run"] = "alice"
    for action in (lambda: bob.put_bytes("cache/key.json", b"{}"),
                   lambda: bob.delete(["blobs/aa/x"]),
                   lambda: list(bob.list("runs/")),
                   lambda: bob.put_bytes("runs/alice-run/logs/w.0/0000000000.msgpack", b"forged")):
        with pytest.raises(NotAllowed):
            action()
    with pytest.raises(StorageError, match="only workers copy"):
        bob.copy("blobs/aa/x", "blobs/aa/y")
