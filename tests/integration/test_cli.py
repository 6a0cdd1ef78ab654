"""The CLI as a user meets it: following, Ctrl-C, snapshots, `dstack up` on the embedded defaults."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.projects import graph_project
from tests.services import Cluster, FileServer, Vhost, queue_consumers, run_name_of, wait_for, write_project
from tests.spec import curl_example

pytestmark = pytest.mark.integration


def test_ctrl_c_detaches_and_the_run_goes_on(cluster: Cluster, tmp_path: Path, files: FileServer) -> None:
    jobs = [{"commands": [f"curl -s {files.url}/started", "sleep 3", "echo finished"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
    process = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "run", "w"], cwd=project,
                               env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: files.hits.get("/started"), 60, "the job to start")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    run_name = stdout.splitlines()[0].strip()
    assert f"Detached; {run_name} goes on" in stderr and f"dstack stop {run_name}" in stderr
    assert cluster.wait_status(run_name, ("done",))["status"] == "done"


def test_snapshot_honours_gitignore_and_uploads_only_changes(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [{"commands": ["ls -a > out/files.txt"], "artifacts": ["out"]}]
    files = graph_project([{"name": "w", "jobs": jobs}])
    files.update({".gitignore": "*.log\nbuild/\n", "debug.log": "x", "build/big.bin": "x", "keep.txt": "1"})
    project = write_project(tmp_path / "project", files)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    first = cluster.dstack("run", "w", cwd=project)
    assert first.returncode == 0, first.stderr
    assert "snapshot: 6 files, " in first.stderr
    (project / "keep.txt").write_text("2")
    second = cluster.dstack("run", "w", cwd=project)
    assert "snapshot: 6 files, 1 uploaded" in second.stderr
    run_name = run_name_of(second)
    out = tmp_path / "out"
    cluster.dstack("artifacts", "download", run_name, "-o", str(out))
    listed = (out / "w.0" / "out" / "files.txt").read_text().split()
    assert "keep.txt" in listed and ".gitignore" in listed and ".dstack" in listed
    assert "debug.log" not in listed and "build" not in listed and ".git" not in listed


def test_big_artifacts_stream_with_bounded_memory(cluster: Cluster, tmp_path: Path) -> None:
    size_mb = 300
    jobs = [{"commands": [f"head -c {size_mb}M /dev/urandom > out/big.bin", "sha256sum out/big.bin"],
             "artifacts": ["out"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
    result = cluster.dstack("run", "w", cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr
    digest = next(line.split("| ")[1].split()[0] for line in result.stdout.splitlines() if "out/big.bin" in line)
    worker_peak_kb = int(next(line.split()[1] for line in Path(f"/proc/{cluster.processes['worker-1'].pid}/status")
                              .read_text().splitlines() if line.startswith("VmHWM")))
    out = tmp_path / "out"
    download = subprocess.run(
        ["/usr/bin/env", "python3", "-c",
         "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
         sys.executable, "-m", "dstack.cli.main", "artifacts", "download", result.stdout.split()[0], "-o", str(out)],
        capture_output=True, text=True, env=cluster.env, timeout=300)
    assert download.returncode == 0, download.stderr
    cli_peak_kb = int(download.stdout.split()[-1])
    import hashlib
    sha = hashlib.sha256()
    with open(out / "w.0" / "out" / "big.bin", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    assert sha.hexdigest() == digest
    assert worker_peak_kb < 200 * 1024, f"worker peak memory {worker_peak_kb} KiB for a {size_mb} MB artifact"
    assert cli_peak_kb < 200 * 1024, f"CLI peak memory {cli_peak_kb} KiB for a {size_mb} MB artifact"


def test_up_runs_scheduler_and_worker_on_embedded_defaults(tmp_path: Path, files: FileServer,
                                                           docker_engine: object) -> None:
    vhost = Vhost()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSTACK_", "AWS_"))}
    env.update({"DSTACK_BROKER_URL": vhost.url, "DSTACK_HOME": str(tmp_path / "home"),
                "DSTACK_WORKER_HOST": "127.0.0.1", "DSTACK_WORKER_ID": "up-worker"})
    up = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "up"], env=env,
                          stdout=open(tmp_path / "up.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: queue_consumers(vhost.url, "dstack.worker.up-worker") > 0, 60, "dstack up")
        (files.folder / "input.txt").write_text("hello\n")  # type: ignore[attr-defined]
        example = curl_example()
        example[".dstack/workflows.yaml"] = example[".dstack/workflows.yaml"].replace(
            "https://github.com/karpathy/char-rnn/blob/master/data/tinyshakespeare/input.txt", f"{files.url}/input.txt")
        project = write_project(tmp_path / "project", example)
        result = subprocess.run([sys.executable, "-m", "dstack.cli.main", "run", "tinyshakespeare"], cwd=project,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr + (tmp_path / "up.log").read_text()
        stored = list((tmp_path / "home" / "storage" / "runs").glob("*/artifacts/tinyshakespeare.0/data/input.txt"))
        assert [p.read_text() for p in stored] == ["hello\n"]  # the embedded storage: a folder under DSTACK_HOME
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        vhost.delete()
