"""Every field of the Job table, through the real scheduler, worker, Docker and S3."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.projects import graph_project
from tests.services import Cluster, FileServer, free_port, run_name_of, wait_for, write_project

pytestmark = pytest.mark.integration


def run(cluster: Cluster, tmp_path: Path, jobs: list, *args: str, **kw: object):
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}], **kw))
    result = cluster.dstack("run", "w", *args, cwd=project)
    run_name = run_name_of(result)
    return result, run_name


def test_dependencies_run_in_order_released_by_completion(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [
        {"commands": ["sleep 1", "date +%s.%N > out/a"], "artifacts": ["out"]},
        {"commands": ["test -d out", "date +%s.%N > out/b"], "artifacts": ["out"], "depends_on": [0]},
        {"commands": ["date +%s.%N > out/c"], "artifacts": ["out"], "depends_on": [0, 1]},
    ]
    result, run_name = run(cluster, tmp_path, jobs)
    assert result.returncode == 0, result.stderr + cluster.logs()
    status = cluster.status(run_name)
    by_id = {j["job_id"]: j for j in status["jobs"]}
    assert by_id["w.1"]["depends_on"] == ["w.0"] and by_id["w.2"]["depends_on"] == ["w.0", "w.1"]
    assert by_id["w.0"]["finished_at"] <= by_id["w.1"]["started_at"]
    assert by_id["w.1"]["finished_at"] <= by_id["w.2"]["started_at"]
    out = tmp_path / "out"
    assert cluster.dstack("artifacts", "download", run_name, "-o", str(out)).returncode == 0
    a, b, c = (float((out / f"w.{i}" / "out" / n).read_text()) for i, n in enumerate("abc"))
    assert a < b < c


def test_environment_ports_and_master(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    jobs = [
        {"commands": ["env | sort > env/master.txt",
                      "timeout 8 python3 -m http.server $JOB_PORT_0 --bind 127.0.0.1 || true"],
         "ports": [port], "artifacts": ["env"]},
        {"commands": ["env | sort > env/follower.txt",
                      "curl -sf http://$MASTER_JOB_HOSTNAME:$MASTER_JOB_PORT_0/ > env/page.html"],
         "master": 0, "artifacts": ["env"], "environment": {"GREETING": "hi"}},
    ]
    result, run_name = run(cluster, tmp_path, jobs)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    cluster.dstack("artifacts", "download", run_name, "-o", str(out))
    master = dict(line.split("=", 1) for line in (out / "w.0/env/master.txt").read_text().splitlines() if "=" in line)
    follower = dict(line.split("=", 1) for line in (out / "w.1/env/follower.txt").read_text().splitlines()
                    if "=" in line)
    assert master["RUN_NAME"] == run_name and master["JOB_ID"] == "w.0"
    assert master["JOB_PORT_0"] == str(port) and master["JOB_HOSTNAME"] == "127.0.0.1"
    assert master["PYTHONUNBUFFERED"] == "1"
    assert follower["MASTER_JOB_HOSTNAME"] == "127.0.0.1" and follower["MASTER_JOB_PORT_0"] == str(port)
    assert follower["GREETING"] == "hi" and follower["JOB_ID"] == "w.1"
    assert (out / "w.1/env/page.html").stat().st_size > 0  # it reached the master


def test_ports_are_reported_while_running(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    jobs = [{"commands": ["python3 -m http.server $JOB_PORT_0 --bind 127.0.0.1"], "ports": [port]}]
    result, run_name = run(cluster, tmp_path, jobs, "-d")
    assert result.returncode == 0
    job = wait_for(lambda: next((j for j in cluster.status(run_name)["jobs"]
                                 if j["job_id"] == "w.0" and j["status"] == "running"), None), 60, "w.0 running")
    assert job["ports"] == [port] and job["hostname"] == "127.0.0.1"
    table = cluster.dstack("status", run_name).stdout
    assert f"127.0.0.1:{port}" in table
    assert cluster.dstack("stop", run_name).returncode == 0
    assert cluster.wait_status(run_name, ("stopped",))["jobs"][1]["status"] == "stopped"


def test_working_dir_and_resources_are_applied(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [{"commands": ["pwd > ../out/pwd.txt",
                          "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us > ../out/quota.txt",
                          "cat /sys/fs/cgroup/memory/memory.limit_in_bytes > ../out/memory.txt",
                          "df -m /dev/shm | tail -1 > ../out/shm.txt"],
             "working_dir": "sub/dir", "artifacts": ["sub/out"],
             "resources": {"cpu": 0.5, "memory": "256MB", "shm_size": "128MB", "gpu": {"count": 0}}}]
    result, run_name = run(cluster, tmp_path, jobs)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    cluster.dstack("artifacts", "download", run_name, "-o", str(out))
    folder = out / "w.0" / "sub" / "out"
    assert (folder / "pwd.txt").read_text().strip() == "/workflow/sub/dir"
    assert (folder / "quota.txt").read_text().strip() == "50000"
    assert int((folder / "memory.txt").read_text()) == 256 * 1024 * 1024
    assert (folder / "shm.txt").read_text().split()[1] == "128"


def test_detach_then_follow_logs(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [{"commands": ["for i in 1 2 3 4 5; do echo line $i; sleep 0.5; done"]}]
    result, run_name = run(cluster, tmp_path, jobs, "--detach")
    assert result.returncode == 0 and run_name
    assert cluster.status(run_name)["status"] in ("queued", "running")
    followed = cluster.dstack("logs", run_name, "-f")
    assert followed.returncode == 0
    lines = [line for line in followed.stdout.splitlines() if line.startswith("w.0 | ")]
    assert lines == [f"w.0 | line {i}" for i in range(1, 6)]
    assert cluster.status(run_name)["status"] == "done"
    only = cluster.dstack("logs", run_name, "w.0").stdout.splitlines()
    assert only == lines


def test_stop_terminates_running_and_cancels_queued(cluster: Cluster, tmp_path: Path, files: FileServer) -> None:
    jobs = [
        {"commands": ["trap 'echo got TERM > out/term.txt; exit 0' TERM", "mkdir -p out",
                      f"curl -s {files.url}/started", "while true; do sleep 0.2; done"], "artifacts": ["out"]},
        {"commands": [f"curl -s {files.url}/dependent-started"], "depends_on": [0]},
    ]
    result, run_name = run(cluster, tmp_path, jobs, "-d")
    wait_for(lambda: files.hits.get("/started"), 60, "the first job to start")
    stop = cluster.dstack("stop", run_name)
    assert stop.returncode == 0, stop.stderr
    final = cluster.wait_status(run_name, ("stopped",), timeout=60)
    by_id = {j["job_id"]: j for j in final["jobs"]}
    assert by_id["w.0"]["status"] == "stopped" and by_id["w.1"]["status"] == "stopped"
    assert "/dependent-started" not in files.hits
    out = tmp_path / "out"
    cluster.dstack("artifacts", "download", run_name, "-o", str(out))
    assert (out / "w.0/out/term.txt").read_text().strip() == "got TERM"  # SIGTERM, then artifacts uploaded


def test_stop_abort_skips_artifacts(cluster: Cluster, tmp_path: Path, files: FileServer) -> None:
    jobs = [{"commands": [f"echo x > out/x; curl -s {files.url}/started; sleep 600"], "artifacts": ["out"]}]
    result, run_name = run(cluster, tmp_path, jobs, "-d")
    wait_for(lambda: files.hits.get("/started"), 60, "the job to start")
    assert cluster.dstack("stop", run_name, "--abort").returncode == 0
    cluster.wait_status(run_name, ("stopped",), timeout=60)
    assert "no artifacts" in cluster.dstack("artifacts", "list", run_name).stderr
