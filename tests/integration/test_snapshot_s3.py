"""Snapshots with packs on S3 (moto's server over HTTP): ranged reads, and a rerun that costs what changed."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack import snapshot, snapshot_state
from dstack.errors import ObjectNotFound
from dstack.names import snapshot_key
from dstack.snapshot import materialize_snapshot, upload_snapshot
from dstack.storage.s3 import S3Storage
from tests.s3server import MotoServer, moto_in_environment
from tests.services import write_project

pytestmark = pytest.mark.integration

BUCKET = "dstack-snapshots"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_in_environment(BUCKET) as server:
        yield server


def test_open_range_on_s3(moto: MotoServer) -> None:
    storage = S3Storage(BUCKET, f"tests/{uuid.uuid4().hex}")
    storage.put_bytes("k", b"0123456789")
    with storage.open_range("k", 2, 5) as stream:
        assert stream.read(3) + stream.read() == b"23456"
    with storage.open_range("k", 0, 0) as stream:
        assert stream.read() == b""
    with pytest.raises(ObjectNotFound):
        with storage.open_range("missing", 0, 4):
            pass


def test_packed_snapshot_round_trip_and_rerun(moto: MotoServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "PACK_SIZE", 4096)  # several packs
    monkeypatch.setattr(snapshot_state, "RACY_NS", 0)
    files = {f"src/pkg{i % 5}/m{i:03d}.py": f"value = {i}\n" * (i % 7) for i in range(200)}
    project = write_project(tmp_path / "project", {**files, "README.md": "# demo\n"})
    with open(project / "model.bin", "wb") as f:
        f.write(os.urandom(3 << 20))
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o755)
    storage = S3Storage(BUCKET, f"tests/{uuid.uuid4().hex}")
    state = tmp_path / "state"
    first, count, uploaded = upload_snapshot(project, storage, state)
    assert count == 203 and uploaded > 100
    manifest = json.loads(storage.get_bytes(snapshot_key(first)))
    assert len(manifest["packs"]) > 1
    cache, manifests = tmp_path / "blobs", tmp_path / "snapshots"
    assert materialize_snapshot(storage, first, tmp_path / "t1", cache, manifests) == 203
    for relative in [*files, "model.bin", "run.sh"]:
        assert (tmp_path / "t1" / relative).read_bytes() == (project / relative).read_bytes()
    assert os.access(tmp_path / "t1" / "run.sh", os.X_OK)
    # Rerun with one change: one content uploaded; the worker fetches only it.
    (project / "src" / "pkg3" / "m003.py").write_text("value = 'changed'\n")
    second, _, uploaded = upload_snapshot(project, storage, state)
    assert uploaded == 1
    assert materialize_snapshot(storage, second, tmp_path / "t2", cache, manifests) == 203
    assert (tmp_path / "t2" / "src" / "pkg3" / "m003.py").read_text() == "value = 'changed'\n"
    # A cold worker fetches the changed snapshot from the first one's packs and the new blob.
    assert materialize_snapshot(storage, second, tmp_path / "t3", tmp_path / "cold", None) == 203
    assert (tmp_path / "t3" / "model.bin").read_bytes() == (project / "model.bin").read_bytes()
