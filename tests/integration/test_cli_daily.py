"""The CLI of a daily user through the real services: logs of a workflow or job and since a time, stopping one
workflow, tags and sizes in `dstack status`, app URLs, completion of run names, deleting and pruning runs with
their objects gone from the S3 server, `dstack stop --all`, and Ctrl-C on a terminal stopping the run."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import boto3
import pytest
import yaml

from tests.projects import graph_project
from tests.services import Cluster, FileServer, run_name_of, wait_for, write_project

pytestmark = pytest.mark.integration

WEB_PROVIDER = '''
from dstack import App, Job, Provider


class WebProvider(Provider):
    def create_jobs(self):
        return [Job(image="python:3.9", commands=["sleep 60"], ports=[0], apps=[App("web", 0, "/x")])]


if __name__ == "__main__":
    WebProvider().start()
'''


def daily_project(root: Path) -> Path:
    """prepare -> train; slow -> after-slow; web (an app); all waits on train, after-slow and web."""
    files = graph_project([
        {"name": "prepare", "jobs": [{"commands": ["echo prep-line"]}]},
        {"name": "train", "depends-on": ["prepare"], "jobs": [{"commands": ["echo early", "sleep 4", "echo late"]}]},
        {"name": "slow", "jobs": [{"commands": ["sleep 120"]}]},
        {"name": "after-slow", "depends-on": ["slow"], "jobs": [{"commands": ["echo never"]}]},
        {"name": "all", "depends-on": ["train", "after-slow", "web"], "jobs": [{"commands": ["echo all"]}]},
    ])
    providers = yaml.safe_load(files[".dstack/providers.yaml"])
    providers["providers"].append({"name": "web", "image": "python:3.9", "commands": ["python3 providers/web.py"]})
    workflows = yaml.safe_load(files[".dstack/workflows.yaml"])
    workflows["workflows"].insert(-1, {"name": "web", "provider": "web"})
    files.update({".dstack/providers.yaml": yaml.safe_dump(providers),
                  ".dstack/workflows.yaml": yaml.safe_dump(workflows), "providers/web.py": WEB_PROVIDER})
    return write_project(root, files)


def jobs_of(cluster: Cluster, run_name: str) -> dict[str, dict]:
    return {job["job_id"]: job for job in cluster.status(run_name)["jobs"]}


def test_logs_stop_a_workflow_apps_tags_status_and_completion(cluster: Cluster, tmp_path: Path) -> None:
    run_name = cluster.submit(daily_project(tmp_path / "project"), "all")
    wait_for(lambda: (lambda jobs: jobs.get("train.0", {}).get("status") == "done"
                      and jobs.get("web.0", {}).get("status") == "running"
                      and jobs.get("slow.0", {}).get("status") == "running")(jobs_of(cluster, run_name)),
             180, "train to be done, web and slow to run", interval=1)

    # apps: the URL of the running job
    port = jobs_of(cluster, run_name)["web.0"]["ports"][0]
    shown = cluster.dstack("app", run_name)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"web.0\tweb\thttp://127.0.0.1:{port}/x\n"
    assert cluster.dstack("app", run_name, "web.0").stdout == shown.stdout
    none = cluster.dstack("app", run_name, "prepare.0")
    assert none.returncode == 1 and f"{run_name} job prepare.0 has no apps" in none.stderr

    # stop one workflow: it and what depends on it stop; what is done stays done
    stopped = cluster.dstack("stop", run_name, "slow")
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: jobs_of(cluster, run_name)["slow.0"]["status"] == "stopped", 60, "slow.0 to stop")
    run = cluster.status(run_name)
    workflows = {w["name"]: w["status"] for w in run["workflows"]}
    assert workflows["slow"] == workflows["after-slow"] == workflows["all"] == "stopped"
    assert workflows["prepare"] == workflows["train"] == "done"
    assert run["status"] == "running" and jobs_of(cluster, run_name)["web.0"]["status"] == "running"  # goes on
    bad = cluster.dstack("stop", run_name, "slwo")
    assert bad.returncode == 1 and "has no workflow 'slwo' (it has: after-slow, all, prepare, slow, train, web)" \
        in bad.stderr
    assert cluster.dstack("stop", run_name, "web").returncode == 0
    assert cluster.wait_status(run_name, ("stopped", "failed", "done"), timeout=60)["status"] == "stopped"
    assert cluster.dstack("app", run_name).returncode == 1  # no URL once it ended

    # logs of a workflow, of a job, since a time
    by_workflow = cluster.dstack("logs", run_name, "prepare")
    assert by_workflow.returncode == 0, by_workflow.stderr
    assert "prepare.0 | prep-line" in by_workflow.stdout.splitlines()
    assert all(line.startswith("prepare.") for line in by_workflow.stdout.splitlines())
    by_job = cluster.dstack("logs", run_name, "train.0")
    assert by_job.stdout.splitlines() == ["train.0 | early", "train.0 | late"]
    followed = cluster.dstack("logs", run_name, "train", "-f")  # the run ended: prints what there is
    assert [line for line in followed.stdout.splitlines() if line.startswith("train.0")] == [
        "train.0 | early", "train.0 | late"]
    middle = datetime.fromtimestamp(jobs_of(cluster, run_name)["train.0"]["started_at"] + 2).isoformat()  # local
    since = cluster.dstack("logs", run_name, "train.0", "--since", middle)
    assert since.stdout.splitlines() == ["train.0 | late"], since.stderr
    assert "train.0 | late" in cluster.dstack("logs", run_name, "--since", "1h").stdout
    later = cluster.dstack("logs", run_name, "--since", "2099-01-01T00:00")
    assert later.returncode == 0 and later.stdout == "" and f"no lines of {run_name} since 2099-01-01" in later.stderr
    unknown = cluster.dstack("logs", run_name, "trian")
    assert unknown.returncode == 1
    assert f"run {run_name} has no workflow or job 'trian' (workflows: prepare, train, slow, after-slow, web, all" \
        in unknown.stderr

    # a tag named after the run; status shows it and the artifact size, in plain text when piped
    tagged = cluster.dstack("tag", run_name)
    assert tagged.returncode == 0 and f"{run_name} -> {run_name}" in tagged.stdout
    try:
        status = cluster.dstack("status", "-n", "50")
        assert status.returncode == 0 and "\x1b[" not in status.stdout and "[bold]" not in status.stdout
        header, *rows = status.stdout.splitlines()
        assert "TAGS" in header and "ARTIFACTS" in header
        row = next(r for r in rows if r.startswith(run_name))
        assert row.split()[:4] == [run_name, "all", "guest", "stopped"] and row.count(run_name) == 2
        assert cluster.status(run_name)["tags"] == [run_name]
        every = cluster.dstack("status", "--all", "--json")
        assert run_name in {r["run_name"] for r in json.loads(every.stdout)}
    finally:
        cluster.dstack("untag", run_name)

    # completion of run names (bash) and the scripts of bash and zsh
    completion = cluster.dstack("logs", env={"_DSTACK_COMPLETE": "bash_complete", "COMP_WORDS": f"dstack logs "
                                             f"{run_name[:-2]}", "COMP_CWORD": "2"})
    assert f"plain,{run_name}" in completion.stdout.splitlines()
    for shell in ("bash", "zsh"):
        script = cluster.dstack(env={"_DSTACK_COMPLETE": f"{shell}_source"})
        assert script.returncode == 0 and "_DSTACK_COMPLETE" in script.stdout


def test_delete_prune_and_stop_all_free_the_storage(private_cluster: Cluster, tmp_path: Path) -> None:
    cluster = private_cluster
    project = write_project(tmp_path / "project", graph_project([
        {"name": "w", "jobs": [{"commands": ["head -c 300000 /dev/urandom > out/data.bin", "echo wrote"],
                                "artifacts": ["out"]}]},
        {"name": "long", "jobs": [{"commands": ["sleep 120"]}]}]))
    bucket, _, prefix = cluster.env["DSTACK_STORAGE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=cluster.env["AWS_ENDPOINT_URL_S3"], region_name=cluster.env["AWS_DEFAULT_REGION"],
        aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"])

    def objects(run_name: str) -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/runs/{run_name}/")
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    done = []
    for _ in range(2):
        result = cluster.dstack("run", "w", cwd=project)
        assert result.returncode == 0, result.stderr
        done.append(run_name_of(result))
    first, kept = done
    assert any(key.endswith("out/data.bin") for key in objects(first)) and objects(kept)
    assert cluster.dstack("tag", kept, "keep").returncode == 0
    long_runs = [cluster.submit(project, "long") for _ in range(2)]
    wait_for(lambda: all(jobs_of(cluster, r).get("long.0", {}).get("status") == "running" for r in long_runs), 120,
             "the long runs to run", interval=1)

    # all or nothing: a tagged run, an unfinished one
    refused = cluster.dstack("delete", first, kept, long_runs[0])
    assert refused.returncode == 1
    assert f"nothing deleted: {kept} is tagged (keep); untag it first, or delete it with --force; {long_runs[0]} " \
           f"is running; stop it first" in refused.stderr
    assert objects(first) and cluster.status(first)["status"] == "done"

    deleted = cluster.dstack("delete", first)
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted 1 run; freed 300." in deleted.stdout and " KB (" in deleted.stdout
    assert objects(first) == []
    gone = cluster.dstack("status", first)
    assert gone.returncode == 1 and f"no run named '{first}'" in gone.stderr

    # stop --all -y: no question, every unfinished run stops
    stop_all = cluster.dstack("stop", "--all", "-y")
    assert stop_all.returncode == 0, stop_all.stderr
    assert all(f"{run_name}: stop requested" in stop_all.stdout for run_name in long_runs)
    for run_name in long_runs:
        assert cluster.wait_status(run_name, ("stopped",), timeout=60)["status"] == "stopped"
    assert objects(long_runs[0])  # their logs

    # prune: only what ended longer ago than asked, never a tagged run
    nothing = cluster.dstack("prune", "--older-than", "1d", "-y")
    assert nothing.returncode == 0 and "Nothing to prune: no finished untagged run that ended more than 1d ago." \
        in nothing.stdout
    pruned = cluster.dstack("prune", "-y")
    assert pruned.returncode == 0, pruned.stderr
    assert all(run_name in pruned.stdout for run_name in long_runs) and kept not in pruned.stdout
    assert "Deleted 2 runs; freed " in pruned.stdout
    assert objects(long_runs[0]) == objects(long_runs[1]) == [] and objects(kept)
    listed = cluster.dstack("status", "--all", "--json").stdout
    assert kept in listed and not any(run_name in listed for run_name in long_runs)

    # a tagged run goes with --force, and its tag with it
    forced = cluster.dstack("delete", kept, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "tags removed: keep" in forced.stdout and objects(kept) == []
    assert "keep" not in cluster.dstack("tags").stdout
    assert cluster.dstack("prune", "-y").stdout.startswith("Nothing to prune")


def test_ctrl_c_on_a_terminal_asks_and_stops_the_run(cluster: Cluster, tmp_path: Path, files: FileServer) -> None:
    jobs = [{"commands": [f"curl -s {files.url}/started-pty", "sleep 60"]}]
    project = write_project(tmp_path / "project", graph_project([{"name": "w", "jobs": jobs}]))
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", "run", "w"], cwd=project, env=cluster.env,
                               stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    errors: list[bytes] = []  # read as it comes: the question ends with no line break

    def read_errors() -> None:
        while chunk := os.read(process.stderr.fileno(), 4096):  # type: ignore[union-attr]
            errors.append(chunk)

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    try:
        wait_for(lambda: files.hits.get("/started-pty"), 90, "the job to start")
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        wait_for(lambda: b"[y/N]" in b"".join(errors), 30, "the question")
        os.write(controller, b"y\n")
        stdout = process.stdout.read().decode()  # type: ignore[union-attr]
        process.wait(90)
    finally:
        process.kill()
        os.close(controller)
    reader.join(5)
    run_name = stdout.splitlines()[0].strip()
    text = b"".join(errors).decode()
    assert f"Stop {run_name}? [y/N]" in text
    assert process.returncode == 1, text
    assert f"{run_name} stopped" in text and "Detached" not in text
    assert cluster.status(run_name)["status"] == "stopped"
