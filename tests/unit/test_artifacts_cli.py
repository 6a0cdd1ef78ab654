"""`dstack artifacts list|download|upload`: what RUN, RUN WORKFLOW, RUN JOB and :TAG select (resolved by a real
scheduler over SQLite, called in process), the resume of a download (same size and SHA-256: skipped), the paths
an upload stores files under, and an upload recorded only once stored. Storage is a local folder."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from click.testing import CliRunner, Result

from dstack.cli.artifacts import is_current, local_files
from dstack.cli.context import Context
from dstack.cli.main import cli
from dstack.errors import DstackError
from dstack.messages import ArtifactFile, ArtifactManifest, GetTags, TagRun
from dstack.names import artifact_key, artifacts_manifest_key
from dstack.rpc import RpcClient
from dstack.storage.local import LocalStorage
from dstack.views import decode_reply
from tests.scheduler_harness import RUN, spec
from tests.unit.test_scheduler_dags import Dag, wf

FILES = {"prepare.0": {"data/raw.csv": b"a,b\n1,2\n"},
         "train.0": {"model/weights.bin": b"w" * 3000, "model/config.json": b"{}"},
         "train.1": {"logs/events": b"e" * 10}}


class FakeRpc:
    """The scheduler called in process, its replies typed as :class:`RpcClient` gives them."""

    def __init__(self, h: Dag, hide_tags: bool = False) -> None:
        self.h, self.hide_tags = h, hide_tags
        self.calls: list[str] = []

    def __enter__(self) -> FakeRpc:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def call(self, request: Any) -> Any:
        self.calls.append(type(request).__name__)
        if self.hide_tags and isinstance(request, GetTags):
            return []
        return decode_reply(request, self.h.scheduler.handle_request(request))


class FakeContext(Context):
    def __init__(self, storage: LocalStorage, rpc: FakeRpc) -> None:
        self._storage, self.fake_rpc = storage, rpc

    def rpc(self) -> RpcClient:
        return self.fake_rpc  # type: ignore[return-value]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Dag]:
    harness = Dag(tmp_path / "scheduler" / "state.db")
    yield harness
    harness.store.close()


@pytest.fixture
def context(h: Dag, tmp_path: Path) -> FakeContext:
    """A done run of workflows prepare (one job) and train (two jobs), tagged ``best``, with its artifacts
    stored, and a CLI context over it."""
    h.submit_dag([wf("prepare"), wf("train", ["prepare"])])
    h.complete("prepare.provider", jobs=[spec("p", artifacts=["data"])])
    h.complete("prepare.0")
    h.complete("train.provider", jobs=[spec("a", artifacts=["model"]), spec("b", artifacts=["logs"])])
    h.complete("train.0")
    h.complete("train.1")
    h.scheduler.handle_request(TagRun(RUN, "best"))
    storage = LocalStorage(tmp_path / "storage")
    for job, files in FILES.items():
        store(storage, RUN, job, files)
    return FakeContext(storage, FakeRpc(h))


def store(storage: LocalStorage, run: str, job: str, files: dict[str, bytes], checksums: bool = True) -> None:
    entries = []
    for path, data in files.items():
        storage.put_bytes(artifact_key(run, job, path), data)
        entries.append(ArtifactFile(path, len(data), hashlib.sha256(data).hexdigest() if checksums else ""))
    manifest = ArtifactManifest(job_id=job, artifacts=sorted({p.split("/")[0] for p in files}), files=entries)
    storage.put_bytes(artifacts_manifest_key(run, job), manifest.to_json())


def dstack(context: FakeContext, *args: str, cwd: Optional[Path] = None) -> Result:
    if cwd is not None:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(cwd)
            return CliRunner().invoke(cli, list(args), obj=context)
    return CliRunner().invoke(cli, list(args), obj=context)


def listed(result: Result) -> list[tuple[str, str, int]]:
    assert result.exit_code == 0, result.output
    return [(job, path, int(size)) for job, path, size in (line.split("\t") for line in result.stdout.splitlines())]


# ----------------------------------------------------------------------------- what a target selects


def test_run_workflow_job_and_tag_select_their_jobs(context: FakeContext) -> None:
    everything = sorted((job, path, len(data)) for job, files in FILES.items() for path, data in files.items())
    assert sorted(listed(dstack(context, "artifacts", "list", RUN))) == everything
    assert sorted(listed(dstack(context, "artifacts", "list", ":best"))) == everything
    assert sorted(listed(dstack(context, "artifacts", "list", RUN, "train"))) == [
        ("train.0", "model/config.json", 2), ("train.0", "model/weights.bin", 3000), ("train.1", "logs/events", 10)]
    assert listed(dstack(context, "artifacts", "list", RUN, "train.1")) == [("train.1", "logs/events", 10)]


def test_totals_per_job_and_in_all(context: FakeContext) -> None:
    result = dstack(context, "artifacts", "list", RUN, "--total")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["prepare.0\t1\t8", "train.0\t2\t3002", "train.1\t1\t10", "total\t4\t3020"]
    data = json.loads(dstack(context, "artifacts", "list", ":best", "--total", "--json").stdout)
    assert (data["run_name"], data["files"], data["size"]) == (RUN, 4, 3020)
    assert [(j["job_id"], j["files"], j["size"]) for j in data["jobs"]] == [
        ("prepare.0", 1, 8), ("train.0", 2, 3002), ("train.1", 1, 10)]
    files = json.loads(dstack(context, "artifacts", "list", RUN, "prepare", "--json").stdout)["files"]
    assert files == [{"job_id": "prepare.0", "path": "data/raw.csv", "size": 8,
                      "sha256": hashlib.sha256(FILES["prepare.0"]["data/raw.csv"]).hexdigest(), }]


@pytest.mark.parametrize("args,message", [
    ((RUN, "evaluate"), f"run {RUN} has no workflow or job named 'evaluate' (workflows: prepare, train; "
                        "jobs: prepare.0, train.0, train.1)"),
    ((":nope",), "no tag named 'nope' (known tags: best)"),
    (("ghost-run-0001", "train"), "no run named 'ghost-run-0001'"),
    (("ghost-run-0001",), "no run named 'ghost-run-0001'"),
])
def test_what_names_nothing_is_an_error_that_says_what_exists(context: FakeContext, args: tuple[str, ...],
                                                              message: str) -> None:
    result = dstack(context, "artifacts", "list", *args)
    assert result.exit_code == 1 and message in " ".join(result.stderr.split())


def test_a_tag_takes_no_workflow(context: FakeContext) -> None:
    result = dstack(context, "artifacts", "list", ":best", "train")
    assert result.exit_code == 2 and "give no WORKFLOW or JOB" in result.stderr


# ----------------------------------------------------------------------------- download and its resume


def test_download_resumes_and_fetches_what_differs(context: FakeContext, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = dstack(context, "artifacts", "download", RUN, "train", "-o", str(out))
    assert first.exit_code == 0, first.output
    assert "3 file(s) downloaded (3.0 KB), 0 already there" in first.stderr
    assert (out / "train.0" / "model" / "weights.bin").read_bytes() == FILES["train.0"]["model/weights.bin"]
    assert not (out / "prepare.0").exists()
    again = dstack(context, "artifacts", "download", RUN, "train", "-o", str(out))
    assert "0 file(s) downloaded (0 B), 3 already there and unchanged" in again.stderr
    (out / "train.0" / "model" / "weights.bin").write_bytes(b"x" * 3000)  # same size, other bytes
    (out / "train.1" / "logs" / "events").write_bytes(b"e" * 11)  # another size
    third = dstack(context, "artifacts", "download", RUN, "train", "-o", str(out))
    assert "2 file(s) downloaded (3.0 KB), 1 already there and unchanged" in third.stderr
    assert (out / "train.0" / "model" / "weights.bin").read_bytes() == FILES["train.0"]["model/weights.bin"]
    assert (out / "train.1" / "logs" / "events").read_bytes() == FILES["train.1"]["logs/events"]
    by_tag = dstack(context, "artifacts", "download", ":best", "-o", str(out))
    assert "1 file(s) downloaded (8 B), 3 already there" in by_tag.stderr


def test_without_a_checksum_the_same_size_is_not_enough(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert is_current(path, ArtifactFile("f", 3, digest))
    assert not is_current(path, ArtifactFile("f", 3, ""))
    assert not is_current(path, ArtifactFile("f", 4, digest))
    assert not is_current(path, ArtifactFile("f", 3, "0" * 64))
    assert not is_current(tmp_path / "missing", ArtifactFile("f", 3, digest))
    assert not is_current(tmp_path, ArtifactFile("f", 3, digest))  # a folder


# ----------------------------------------------------------------------------- upload


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def test_upload_paths_are_relative_to_the_current_folder_or_a_base_name(tmp_path: Path) -> None:
    project = tree(tmp_path / "project", {"data/a.txt": b"a", "data/sub/b.txt": b"b", "notes.txt": b"n"})
    outside = tree(tmp_path / "elsewhere", {"imagenet/x.jpg": b"x", "labels.csv": b"l"})
    files = local_files([project / "data", project / "notes.txt", outside / "imagenet", outside / "labels.csv"],
                        project)
    assert [(f.path, f.source) for f in files] == [
        ("data/a.txt", project / "data/a.txt"), ("data/sub/b.txt", project / "data/sub/b.txt"),
        ("imagenet/x.jpg", outside / "imagenet/x.jpg"), ("labels.csv", outside / "labels.csv"),
        ("notes.txt", project / "notes.txt")]
    assert [f.path for f in local_files([project], project)] == ["data/a.txt", "data/sub/b.txt", "notes.txt"]
    assert [f.path for f in local_files([project / "data", project / "data/sub"], project)] == [
        "data/a.txt", "data/sub/b.txt"]  # overlapping paths: each file once


def test_upload_refuses_two_files_on_one_path_and_nothing_to_upload(tmp_path: Path) -> None:
    project = tree(tmp_path / "project", {"data/a.txt": b"a"})
    tree(tmp_path / "other", {"data/a.txt": b"b"})
    with pytest.raises(DstackError, match="would both be stored as data/a.txt"):
        local_files([project / "data", tmp_path / "other" / "data"], project)
    (project / "empty").mkdir()
    with pytest.raises(DstackError, match="nothing to upload"):
        local_files([project / "empty"], project)


def test_upload_stores_then_records_and_refuses_an_existing_tag(context: FakeContext, h: Dag,
                                                                tmp_path: Path) -> None:
    project = tree(tmp_path / "project", {"data/a.txt": b"a" * 100, "data/sub/b.bin": b"b" * 50})
    result = dstack(context, "artifacts", "upload", "data", "--tag", "dataset", cwd=project)
    assert result.exit_code == 0, result.output
    run_name = result.stdout.strip()
    assert "2 file(s) (150 B) stored as tag dataset" in result.stderr and "depends-on: [\":dataset\"]" in result.stderr
    manifest = ArtifactManifest.from_json(context.storage.get_bytes(artifacts_manifest_key(run_name, "upload.0")))
    assert manifest.artifacts == ["data"] and manifest.complete
    assert manifest.files == [ArtifactFile("data/a.txt", 100, hashlib.sha256(b"a" * 100).hexdigest()),
                              ArtifactFile("data/sub/b.bin", 50, hashlib.sha256(b"b" * 50).hexdigest())]
    assert context.storage.get_bytes(artifact_key(run_name, "upload.0", "data/sub/b.bin")) == b"b" * 50
    (tag,) = [t for t in h.scheduler.handle_request(GetTags()) if t["tag"] == "dataset"]
    assert (tag["run_name"], tag["kind"], tag["size"]) == (run_name, "upload", 150)
    assert listed(dstack(context, "artifacts", "list", ":dataset")) == [
        ("upload.0", "data/a.txt", 100), ("upload.0", "data/sub/b.bin", 50)]

    runs_before = sorted(p.name for p in (tmp_path / "storage" / "runs").iterdir())
    again = dstack(context, "artifacts", "upload", "data", "--tag", "dataset", cwd=project)
    assert again.exit_code == 1 and f"tag 'dataset' names run {run_name} already" in again.stderr
    assert sorted(p.name for p in (tmp_path / "storage" / "runs").iterdir()) == runs_before  # nothing uploaded


def test_an_upload_the_scheduler_refuses_leaves_nothing_in_storage(context: FakeContext, h: Dag,
                                                                   tmp_path: Path) -> None:
    project = tree(tmp_path / "project", {"data/a.txt": b"a"})
    context.fake_rpc.hide_tags = True  # the tag appears between the check and the record
    runs_before = sorted(p.name for p in (tmp_path / "storage" / "runs").iterdir())
    result = dstack(context, "artifacts", "upload", "data", "--tag", "best", cwd=project)
    assert result.exit_code == 1 and f"tag 'best' names run {RUN} already" in result.stderr
    assert context.fake_rpc.calls[-3:] == ["GetTags", "GetRuns", "RecordUpload"]  # GetRuns: the name is free
    assert sorted(p.name for p in (tmp_path / "storage" / "runs").iterdir()) == runs_before
