"""Which storage operations a caller gets presigned URLs for (``dstack.scheduler.grants``), with a fake storage
that records what it was asked to sign."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import pytest

from dstack.errors import NotAllowed, RequestRejected
from dstack.messages import StorageOp
from dstack.scheduler.access import Caller, Role, service_caller
from dstack.scheduler.grants import EMPTY_SHA256, MAX_OPS, StorageGrants
from dstack.storage.base import ObjectInfo, Progress, Storage
from dstack.storage.local import LocalStorage
from dstack.views import PresignedUrls, StorageInfo

ALICE = Caller("alice", Role.USER)
BOB = Caller("bob", Role.USER)
ADMIN = Caller("root", Role.ADMIN)
WORKER = Caller("w1", Role.WORKER)
SERVICE = service_caller("dstack")
DIGEST = hashlib.sha256(b"content").hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()
#: The runs that exist, and their owners.
RUNS = {"alice-run": "alice", "bob-run": "bob"}


class FakeS3(Storage):
    """Signs by describing what it signs; stores nothing."""

    url = "s3://bucket/prefix"

    def __init__(self) -> None:
        self.signed: list[tuple[StorageOp, float, Optional[int], bool]] = []

    def presign(self, op: StorageOp, expires_in: float, *, max_keys: Optional[int] = None,
                create_only: bool = False) -> str:
        self.signed.append((op, expires_in, max_keys, create_only))
        return f"https://s3.example/{op.action}/{op.key}"

    # nothing below is used by the grants
    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        raise AssertionError

    def put_bytes(self, key: str, data: bytes) -> None:
        raise AssertionError

    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        raise AssertionError

    def get_bytes(self, key: str) -> bytes:
        raise AssertionError

    def exists(self, key: str) -> bool:
        raise AssertionError

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise AssertionError

    def copy(self, source: str, target: str) -> None:
        raise AssertionError

    def delete(self, keys: Iterable[str]) -> None:
        raise AssertionError

    def check(self) -> None:
        raise AssertionError


@pytest.fixture
def storage() -> FakeS3:
    return FakeS3()


def grants(storage: Storage, visibility: str = "all", **kwargs: object) -> StorageGrants:
    return StorageGrants(storage, visibility, **kwargs)  # type: ignore[arg-type]


def ask(grant: StorageGrants, caller: Caller, *ops: StorageOp) -> PresignedUrls:
    return grant.presign(list(ops), caller, RUNS.get)


def allowed(grant: StorageGrants, caller: Caller, op: StorageOp) -> bool:
    try:
        ask(grant, caller, op)
    except NotAllowed:
        return False
    return True


# ------------------------------------------------------------------------------------------------------ info


def test_info_of_s3_says_presigned(storage: FakeS3) -> None:
    assert grants(storage).info() == StorageInfo(url="s3://bucket/prefix", presigned=True)


def test_a_local_folder_is_opened_directly_not_presigned(tmp_path: Path) -> None:
    local = grants(LocalStorage(tmp_path / "storage"))
    assert local.info() == StorageInfo(url=(tmp_path / "storage").as_uri(), presigned=False)
    with pytest.raises(RequestRejected, match="opened directly"):
        ask(local, ALICE, StorageOp("get", "blobs/aa/x"))


def test_urls_come_in_order_with_their_lifetime(storage: FakeS3) -> None:
    answer = ask(grants(storage, expires_in=120), ALICE, StorageOp("head", "blobs/aa/x"),
                 StorageOp("head", "snapshots/s.json"))
    assert answer == PresignedUrls(urls=["https://s3.example/head/blobs/aa/x",
                                         "https://s3.example/head/snapshots/s.json"], expires_in=120)
    assert [expires for _, expires, _, _ in storage.signed] == [120, 120]


# ------------------------------------------------------------------------------------------------ snapshots


def test_everyone_checks_what_the_snapshot_store_holds(storage: FakeS3) -> None:
    for key in (f"blobs/{DIGEST[:2]}/{DIGEST}", "blobs/x/y", "snapshots/abc.json"):
        assert allowed(grants(storage, "own"), BOB, StorageOp("head", key))


@pytest.mark.parametrize("op", [StorageOp("get", f"blobs/{DIGEST[:2]}/{DIGEST}"), StorageOp("list", "blobs/"),
                                StorageOp("list", "blobs/packs/"), StorageOp("get", "snapshots/abc.json"),
                                StorageOp("list", "snapshots/"), StorageOp("list", "blobs/", continuation="token")])
def test_nobody_but_workers_lists_or_reads_the_projects_files(storage: FakeS3, op: StorageOp) -> None:
    with pytest.raises(NotAllowed, match="only workers read"):
        ask(grants(storage), ADMIN, op)


def test_a_blob_is_stored_only_as_the_content_its_key_names(storage: FakeS3) -> None:
    g = grants(storage)
    assert allowed(g, ALICE, StorageOp("put", f"blobs/{DIGEST[:2]}/{DIGEST}", sha256=DIGEST))
    assert allowed(g, ALICE, StorageOp("put", f"blobs/packs/{DIGEST}", sha256=DIGEST))
    with pytest.raises(NotAllowed, match=f"blobs/{DIGEST[:2]}/{DIGEST}.*not the digest its key names"):
        ask(g, ALICE, StorageOp("put", f"blobs/{DIGEST[:2]}/{DIGEST}", sha256=OTHER))
    with pytest.raises(NotAllowed, match="not the digest"):
        ask(g, ALICE, StorageOp("put", f"blobs/packs/{DIGEST}", sha256=OTHER))
    with pytest.raises(NotAllowed, match="must give the SHA-256"):
        ask(g, ALICE, StorageOp("put", f"blobs/{DIGEST[:2]}/{DIGEST}"))
    for key in (f"blobs/{OTHER[:2]}/{DIGEST}", "blobs/aa/notadigest", "blobs/other", f"blobs/x/{DIGEST}/more"):
        with pytest.raises(NotAllowed, match="names its content's SHA-256"):
            ask(g, ALICE, StorageOp("put", key, sha256=DIGEST))
    with pytest.raises(NotAllowed, match="no SHA-256 digest"):
        ask(g, ALICE, StorageOp("put", f"blobs/packs/{DIGEST}", sha256=DIGEST.upper()))


def test_a_record_marker_holds_nothing(storage: FakeS3) -> None:
    g = grants(storage)
    assert allowed(g, ALICE, StorageOp("put", "blobs/records/0123abcd", sha256=EMPTY_SHA256))
    with pytest.raises(NotAllowed, match="marker holds nothing"):
        ask(g, ALICE, StorageOp("put", "blobs/records/0123abcd", sha256=DIGEST))


def test_a_manifest_is_stored_once(storage: FakeS3) -> None:
    key = "snapshots/0123456789abcdef0123456789abcdef.json"
    ask(grants(storage), ALICE, StorageOp("put", key, sha256=DIGEST), StorageOp("head", key))
    assert [(op.action, create_only) for op, _, _, create_only in storage.signed] == [("put", True), ("head", False)]
    for bad in ("snapshots/other.json", "snapshots/0123456789abcdef0123456789abcdef.json/x"):
        with pytest.raises(NotAllowed, match="stores it once"):
            ask(grants(storage), ALICE, StorageOp("put", bad, sha256=DIGEST))


@pytest.mark.parametrize("key", [f"blobs/{DIGEST[:2]}/{DIGEST}", "snapshots/0123456789abcdef0123456789abcdef.json"])
def test_nobody_but_the_scheduler_deletes_snapshots(storage: FakeS3, key: str) -> None:
    with pytest.raises(NotAllowed, match="nobody deletes"):
        ask(grants(storage), ADMIN, StorageOp("delete", key))
    assert allowed(grants(storage), SERVICE, StorageOp("delete", key))


# ------------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("op", [StorageOp("get", "runs/alice-run/artifacts/w.0/x"),
                                StorageOp("list", "runs/alice-run/logs/"),
                                StorageOp("head", "runs/alice-run/manifests/w.0.json"),
                                StorageOp("list", "runs/alice-run/")])
def test_who_reads_a_runs_files_follows_visibility(storage: FakeS3, op: StorageOp) -> None:
    assert allowed(grants(storage, "all"), BOB, op)
    assert allowed(grants(storage, "own"), ALICE, op)
    assert allowed(grants(storage, "own"), ADMIN, op)
    with pytest.raises(NotAllowed, match=f"{op.key}.*belongs to alice"):
        ask(grants(storage, "own"), BOB, op)


@pytest.mark.parametrize("caller", [ALICE, BOB, ADMIN])
def test_nobody_writes_or_deletes_the_files_of_a_run_that_exists(storage: FakeS3, caller: Caller) -> None:
    with pytest.raises(NotAllowed, match="run alice-run exists"):
        ask(grants(storage), caller, StorageOp("put", "runs/alice-run/artifacts/upload.0/x", sha256=DIGEST))
    with pytest.raises(NotAllowed, match="run alice-run exists"):
        ask(grants(storage), caller, StorageOp("delete", "runs/alice-run/logs/w.0/0000000000.msgpack"))


def test_an_upload_is_stored_before_its_run_is_recorded(storage: FakeS3) -> None:
    g = grants(storage, "own")
    assert allowed(g, BOB, StorageOp("put", "runs/new-run/artifacts/upload.0/data/x.bin", sha256=DIGEST))
    assert allowed(g, BOB, StorageOp("put", "runs/new-run/manifests/upload.0.json", sha256=DIGEST))
    for key in ("runs/new-run/logs/w.0/0000000000.msgpack", "runs/new-run/artifacts/w.0/x",
                "runs/new-run/manifests/w.0.json", "runs/new-run/cache/upload.0.json"):
        with pytest.raises(NotAllowed, match="only an upload's files"):
            ask(g, BOB, StorageOp("put", key, sha256=DIGEST))


def test_the_leftovers_of_a_deleted_run_are_listed_and_deleted_but_not_read(storage: FakeS3) -> None:
    g = grants(storage, "own")
    assert allowed(g, BOB, StorageOp("list", "runs/gone-run/"))
    assert allowed(g, BOB, StorageOp("delete", "runs/gone-run/logs/w.0/0000000000.msgpack"))
    for action in ("get", "head"):
        with pytest.raises(NotAllowed, match="there is no run gone-run"):
            ask(g, BOB, StorageOp(action, "runs/gone-run/logs/w.0/0000000000.msgpack"))


@pytest.mark.parametrize("prefix", ["", "runs/", "runs", "runs/alice-run", "runs/gone", "cache/", "snapshots",
                                    "blobs", "other/"])
def test_a_listing_stays_inside_one_area(storage: FakeS3, prefix: str) -> None:
    with pytest.raises(NotAllowed):
        ask(grants(storage), ADMIN, StorageOp("list", prefix))


def test_list_urls_get_the_page_size(storage: FakeS3) -> None:
    ask(grants(storage, page_size=3), ALICE, StorageOp("list", "runs/alice-run/"), StorageOp("head", "blobs/aa/b"))
    assert [max_keys for _, _, max_keys, _ in storage.signed] == [3, None]


# ------------------------------------------------------------------------------------------- everything else


@pytest.mark.parametrize("op", [StorageOp("get", "cache/key.json"), StorageOp("put", "x", sha256=DIGEST),
                                StorageOp("get", "runs/alice-run"), StorageOp("get", "runs//x")])
def test_other_keys_are_refused(storage: FakeS3, op: StorageOp) -> None:
    with pytest.raises(NotAllowed):
        ask(grants(storage), ADMIN, op)


@pytest.mark.parametrize("key", ["../x", "/abs", "blobs/../cache/x", "blobs//x", "a\\b"])
def test_unsafe_keys_are_refused(storage: FakeS3, key: str) -> None:
    with pytest.raises(NotAllowed, match="not a safe relative path"):
        ask(grants(storage), SERVICE, StorageOp("get", key))


def test_unknown_actions_and_misplaced_tokens_are_refused(storage: FakeS3) -> None:
    with pytest.raises(NotAllowed, match="'copy' is unknown"):
        ask(grants(storage), SERVICE, StorageOp("copy", "blobs/aa/b"))
    with pytest.raises(NotAllowed, match="only a list has a continuation"):
        ask(grants(storage), ALICE, StorageOp("get", "blobs/aa/b", continuation="t"))


def test_all_or_nothing(storage: FakeS3) -> None:
    with pytest.raises(NotAllowed, match="cache/key.json"):
        ask(grants(storage), ALICE, StorageOp("head", "blobs/aa/b"), StorageOp("get", "cache/key.json"))
    assert storage.signed == []


def test_the_schedulers_own_account_may_do_anything_and_workers_ask_for_nothing(storage: FakeS3) -> None:
    assert allowed(grants(storage, "own"), SERVICE, StorageOp("delete", "cache/key.json"))
    assert allowed(grants(storage, "own"), SERVICE, StorageOp("put", "runs/alice-run/logs/x"))
    with pytest.raises(NotAllowed, match="workers use storage credentials of their own"):
        ask(grants(storage), WORKER, StorageOp("get", "blobs/aa/b"))


def test_each_run_is_looked_up_once_a_request(storage: FakeS3) -> None:
    looked_up: list[str] = []

    def owner_of(run_name: str) -> Optional[str]:
        looked_up.append(run_name)
        return RUNS.get(run_name)

    ops = [StorageOp("get", f"runs/alice-run/logs/w.0/{i:010d}.msgpack") for i in range(5)]
    grants(storage).presign([*ops, StorageOp("list", "runs/bob-run/")], BOB, owner_of)
    assert looked_up == ["alice-run", "bob-run"]


def test_too_many_operations_at_once(storage: FakeS3) -> None:
    with pytest.raises(RequestRejected, match=f"at most {MAX_OPS}"):
        ask(grants(storage), ALICE, *[StorageOp("head", f"blobs/aa/{i}") for i in range(MAX_OPS + 1)])
