"""Local data as artifacts through the real services (S3 on moto): `dstack artifacts upload` of a 200 MB
folder (one file of 150 MB, so it goes in parts) with the CLI's memory bounded, a workflow that depends on it
with `depends-on: [:TAG]` and reads it (checksums match) with the worker's memory bounded, `dstack tags` with
its size, `dstack artifacts list` in each form, and a download that resumes."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.projects import graph_project
from tests.s3server import MotoServer
from tests.services import Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

MB = 1 << 20
#: the folder uploaded: path -> size (about 200 MB in all)
SIZES = {"data/big.bin": 150 * MB, "data/parts/a.bin": 20 * MB, "data/parts/b.bin": 20 * MB,
         "data/parts/c.bin": 10 * MB, "data/labels.csv": 1234}
#: peak memory (resident set) allowed to the CLI and the worker moving 200 MB
MEMORY_BOUND_KB = 150 * 1024
WORKER_BOUND_KB = 200 * 1024


def make_folder(root: Path) -> dict[str, str]:
    """Write the files of :data:`SIZES` (random bytes) below ``root``; returns path -> SHA-256."""
    digests = {}
    for path, size in SIZES.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(target, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 4 * MB))
                f.write(block)
                digest.update(block)
                left -= len(block)
        digests[path] = digest.hexdigest()
    return digests


def parts_of(s3: MotoServer, cluster: Cluster, key: str) -> int:
    """How many parts the object at ``key`` of the cluster's storage was uploaded in (1: a single PUT)."""
    import boto3

    bucket, _, prefix = cluster.env["DSTACK_STORAGE_URL"].removeprefix("s3://").partition("/")
    client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                                            aws_access_key_id="testing", aws_secret_access_key="testing")
    etag = client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")["ETag"].strip('"')
    return int(etag.split("-")[1]) if "-" in etag else 1


def peak_memory_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM")))


def test_upload_a_folder_use_it_in_a_workflow_list_and_download_it(cluster: Cluster, s3: MotoServer,
                                                                   tmp_path: Path) -> None:
    here = tmp_path / "here"
    digests = make_folder(here)
    tag = f"data-{uuid.uuid4().hex[:8]}"

    # the upload, in a lone child process whose peak memory is measured
    upload = subprocess.run(
        [sys.executable, "-c",
         "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)",
         sys.executable, "-m", "dstack.cli.main", "artifacts", "upload", "data", "--tag", tag],
        cwd=here, capture_output=True, text=True, env=cluster.env, timeout=300)
    assert upload.returncode == 0, upload.stderr
    upload_run, cli_peak_kb = upload.stdout.split()[0], int(upload.stdout.split()[-1])
    total = sum(SIZES.values())
    assert f"5 file(s) ({total / 1e6:.1f} MB) stored as tag {tag} (run {upload_run})" in upload.stderr
    assert cli_peak_kb < MEMORY_BOUND_KB, f"CLI peak memory {cli_peak_kb} KiB uploading {total} bytes"
    assert parts_of(s3, cluster, f"runs/{upload_run}/artifacts/upload.0/data/big.bin") == 19  # 8 MiB each

    # a second upload with the same tag is refused before anything is stored
    again = cluster.dstack("artifacts", "upload", "data/labels.csv", "--tag", tag, cwd=here)
    assert again.returncode == 1 and f"tag '{tag}' names run {upload_run} already" in again.stderr

    tags = cluster.dstack("tags")
    assert f"{tag}\t{upload_run}\tdone\tupload\tupload\t{total}" in tags.stdout.splitlines()

    # a workflow that depends on it finds the folder in its working directory
    jobs = [{"commands": ["find data -type f | sort | xargs sha256sum"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs,
                                                                  "depends-on": [f":{tag}"]}]))
    result = cluster.dstack("run", "w", cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = {}
    for line in result.stdout.splitlines():
        if line.startswith("w.0 | "):
            digest, path = line[len("w.0 | "):].split()
            printed[path] = digest
    assert printed == digests
    worker_peak_kb = peak_memory_kb(cluster.processes["worker-1"].pid)
    assert worker_peak_kb < WORKER_BOUND_KB, f"worker peak memory {worker_peak_kb} KiB fetching {total} bytes"
    assert cluster.status(run_name_of(result))["workflows"][0]["tagged"] == [f":{tag}"]

    # listing: RUN WORKFLOW, RUN JOB and :TAG name the same job; --total sums it
    expected = sorted(f"upload.0\t{path}\t{size}" for path, size in SIZES.items())
    for target in ([upload_run, "upload"], [upload_run, "upload.0"], [f":{tag}"], [upload_run]):
        listing = cluster.dstack("artifacts", "list", *target)
        assert listing.returncode == 0, listing.stderr
        assert sorted(listing.stdout.splitlines()) == expected, target
    totals = cluster.dstack("artifacts", "list", f":{tag}", "--total")
    assert totals.stdout.splitlines() == [f"upload.0\t5\t{total}", f"total\t5\t{total}"]
    unknown = cluster.dstack("artifacts", "list", upload_run, "train")
    assert unknown.returncode == 1 and "has no workflow or job named 'train' (workflows: upload" in unknown.stderr

    # download, again (everything skipped), and after a local file changed (only it is fetched)
    out = tmp_path / "out"
    first = cluster.dstack("artifacts", "download", f":{tag}", "-o", str(out), timeout=300)
    assert first.returncode == 0, first.stderr
    assert "5 file(s) downloaded" in first.stderr and "0 already there" in first.stderr
    second = cluster.dstack("artifacts", "download", f":{tag}", "-o", str(out), timeout=300)
    assert "0 file(s) downloaded (0 B), 5 already there and unchanged" in second.stderr
    changed = out / "upload.0" / "data" / "parts" / "c.bin"
    changed.write_bytes(b"\0" * SIZES["data/parts/c.bin"])  # same size, other bytes
    third = cluster.dstack("artifacts", "download", upload_run, "upload.0", "-o", str(out), timeout=300)
    assert "1 file(s) downloaded (10.5 MB), 4 already there and unchanged" in third.stderr
    assert hashlib.sha256(changed.read_bytes()).hexdigest() == digests["data/parts/c.bin"]
