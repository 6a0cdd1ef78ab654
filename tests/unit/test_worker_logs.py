"""The files a worker leaves in storage keep their stored form: log chunks and artifact manifests."""
from __future__ import annotations

import json

import msgpack
import pytest

from dstack.errors import MessageError
from dstack.logs import LogChunk
from dstack.messages import ArtifactFile, ArtifactManifest


def test_a_log_chunk_is_stored_as_before() -> None:
    chunk = LogChunk("train.0", 3, [(1700000000.5, "hello"), (1700000001.0, "world")])
    raw = msgpack.unpackb(chunk.encode(), raw=False)
    assert raw == {"task": "train.0", "chunk": 3, "lines": [[1700000000.5, "hello"], [1700000001.0, "world"]]}
    assert LogChunk.decode(chunk.encode()) == chunk


def test_a_chunk_stored_by_an_earlier_worker_reads() -> None:
    stored = msgpack.packb({"task": "train.0", "chunk": 0, "lines": [[1700000000, "a line"]]}, use_bin_type=True)
    assert LogChunk.decode(stored) == LogChunk("train.0", 0, [(1700000000.0, "a line")])


@pytest.mark.parametrize("raw", [{"task": "t", "lines": []}, {"task": "t", "chunk": "0", "lines": []},
                                 {"task": "t", "chunk": 0, "lines": [["later", "x"]]}, ["t", 0, []]])
def test_what_is_no_log_chunk_is_refused(raw: object) -> None:
    with pytest.raises(MessageError, match="not a log chunk"):
        LogChunk.decode(msgpack.packb(raw, use_bin_type=True))


def test_a_manifest_stored_by_an_earlier_worker_reads() -> None:
    stored = json.dumps({"job_id": "train.0", "artifacts": ["out"],
                         "files": [{"path": "out/a.txt", "size": 2}]}).encode()
    manifest = ArtifactManifest.from_json(stored)
    assert manifest == ArtifactManifest("train.0", ["out"], [ArtifactFile("out/a.txt", 2)])
    assert manifest.files[0].sha256 == "" and manifest.complete  # fields added later take their defaults
    assert ArtifactManifest.from_json(manifest.to_json()) == manifest


def test_what_is_no_manifest_is_refused() -> None:
    with pytest.raises(MessageError, match="unknown fields"):
        ArtifactManifest.from_json(b'{"job_id": "x", "file": []}')
