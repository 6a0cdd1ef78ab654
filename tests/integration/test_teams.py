"""A fleet shared by a team, through the real services: RabbitMQ accounts made by `dstack users add` (alice, bob,
an admin, and the worker's own), a scheduler, a worker on its own account, S3 (moto) for storage, and CLIs
with no storage credentials at all, which reach storage through the scheduler's presigned URLs.

What each account may do on the broker itself (ACCESS_REFUSED) is in tests/integration/test_broker_accounts.py;
the scheduler's rules one by one in tests/unit/test_scheduler_access.py.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import docker
import pytest

from tests.harness import scheduler_only
from tests.projects import graph_workflow_project
from tests.s3server import MotoServer
from tests.services import Cluster, run_name_of, wait_for

pytestmark = pytest.mark.integration

TOKEN = "alices-Token-9q7"


class Team(NamedTuple):
    cluster: Cluster
    #: account -> its broker URL, as `dstack users add` printed it
    urls: dict[str, str]
    root: Path

    def name(self, who: str) -> str:
        return next(name for name in self.urls if name.startswith(who + "-"))

    def env(self, who: str) -> dict[str, str]:
        """The environment of ``who`` (alice, bob, boss): their own broker account, and no storage setting or
        credentials."""
        env = {k: v for k, v in self.cluster.env.items() if not k.startswith("AWS_") and k != "DSTACK_STORAGE_URL"}
        env.update(DSTACK_BROKER_URL=self.urls[self.name(who)], DSTACK_HOME=str(self.root / f"{who}-home"))
        return env

    def cli(self, who: str, *args: str, cwd: Path | None = None, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """The CLI of ``who``, to its end."""
        return subprocess.run([sys.executable, "-m", "dstack.cli.main", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=180, env=self.env(who), input=input)


@pytest.fixture
def team(tmp_path: Path, s3: MotoServer, docker_engine: docker.DockerClient) -> Iterator[Team]:
    suffix = secrets.token_hex(3)  # broker accounts are the node's, not the vhost's
    with scheduler_only(tmp_path / "team", s3) as cluster:
        urls: dict[str, str] = {}
        try:
            for who, flags in (("alice", []), ("bob", []), ("boss", ["--admin"]), ("gpu", ["--worker"])):
                name = f"{who}-{suffix}"
                added = cluster.dstack("users", "add", name, *flags)  # as the scheduler's own account, the admin
                assert added.returncode == 0, added.stderr
                urls[name] = added.stdout.strip()
            worker = f"gpu-{suffix}"
            cluster.start_worker(worker, DSTACK_BROKER_URL=urls[worker])  # its own account; storage credentials
            yield Team(cluster, urls, tmp_path)
        finally:
            for name in urls:
                cluster.dstack("users", "remove", name, "--yes")


def test_a_team_shares_a_fleet_without_sharing_keys(team: Team, tmp_path: Path) -> None:
    alice, bob = team.name("alice"), team.name("bob")
    assert team.cli("alice", "secrets", "set", "TOKEN", input=TOKEN + "\n").returncode == 0
    project = graph_workflow_project(tmp_path / "project", [{
        "commands": [f'test "$TOKEN" = "{TOKEN}" && echo "has the token"', "mkdir -p out",
                     "printf 'bytes of alice' > out/a.txt", "sleep 12"],
        "artifacts": ["out"]}])
    submitted = team.cli("alice", "run", "w", "-d", cwd=project)  # the snapshot goes up through presigned URLs
    assert submitted.returncode == 0, submitted.stderr
    run = run_name_of(submitted)

    def status(who: str, *args: str) -> list[dict[str, Any]]:
        result = team.cli(who, "status", "--json", *args)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    following = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "logs", run, "-f"], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=team.env("alice"))
    wait_for(lambda: status("alice", run)[0]["status"] == "running", 90, "alice's run to start")
    assert status("bob", run)[0]["owner"] == alice  # everyone sees every run (DSTACK_VISIBILITY=all)
    for args in (("stop", run), ("tag", run, "bobs")):
        refused = team.cli("bob", *args)
        assert refused.returncode != 0 and f"belongs to {alice}" in refused.stderr, (args, refused.stderr)
    assert "No unfinished runs" in team.cli("bob", "stop", "--all", "--yes").stdout  # bob's own: none
    assert status("alice", run)[0]["status"] == "running"  # it goes on
    assert team.cli("boss", "tag", run, "by-the-admin").returncode == 0  # the admin may
    assert team.cli("boss", "untag", "by-the-admin").returncode == 0

    finished = wait_for(lambda: (lambda r: r if r["status"] in ("done", "failed") else None)(status("alice", run)[0]),
                        90, "alice's run to end")
    assert finished["status"] == "done", finished
    followed, _ = following.communicate(timeout=60)  # live, through her own queue, routed by owner and run
    assert following.returncode == 0 and "w.0 | has the token" in followed.splitlines()
    for args in (("restart", run), ("delete", run)):
        refused = team.cli("bob", *args)
        assert refused.returncode != 0 and alice in refused.stderr, (args, refused.stderr)
    assert [r["run_name"] for r in status("alice", "--mine")] == [run]
    assert status("bob", "--mine") == []

    logs = team.cli("alice", "logs", run)  # stored log chunks, read through presigned URLs
    assert logs.returncode == 0 and "has the token" in logs.stdout, logs.stderr
    assert TOKEN not in logs.stdout
    download = team.cli("alice", "artifacts", "download", run, "-o", str(tmp_path / "got"))
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "got" / "w.0" / "out" / "a.txt").read_bytes() == b"bytes of alice"
    listed = team.cli("boss", "users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(u["name"], u["role"]) for u in json.loads(listed.stdout)["users"]} >= {
        (alice, "user"), (bob, "user"), (team.name("boss"), "admin"), (team.name("gpu"), "worker")}
    deleted = team.cli("alice", "delete", run)  # the owner may; its objects go with it, through presigned URLs
    assert deleted.returncode == 0, deleted.stderr
    assert team.cli("alice", "status", run).returncode != 0
