"""Workflow DAGs through the real services: dependencies, artifacts downstream, tags, variables,
failure semantics, restart, and providers from another repository."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.projects import GRAPH_PROVIDER, GRAPH_SCHEMA, graph_project
from tests.services import Cluster, FileServer, run_name_of, write_project

pytestmark = pytest.mark.integration


def job(commands: list[str], artifacts: list[str] = ()) -> dict[str, Any]:
    return {"commands": commands, "artifacts": list(artifacts)}


def project_of(tmp_path: Path, workflows: list[dict[str, Any]], variables: dict[str, Any] = None) -> Path:
    files = graph_project(workflows)
    if variables is not None:
        files[".dstack/variables.yaml"] = yaml.safe_dump({"variables": variables})
    return write_project(tmp_path / "project", files)


def test_diamond_runs_each_workflow_once_in_order_with_upstream_artifacts(cluster: Cluster, tmp_path: Path) -> None:
    project = project_of(tmp_path, [
        {"name": "a", "jobs": [job(["echo from-a > out-a/a.txt"], ["out-a"])]},
        {"name": "b", "depends-on": ["a"], "jobs": [job(["cp out-a/a.txt out-b/seen-a.txt"], ["out-b"])]},
        {"name": "c", "depends_on": ["a"], "jobs": [job(["cat out-a/a.txt > out-c/seen-a.txt"], ["out-c"])]},
        {"name": "d", "depends-on": ["b", "c"],
         "jobs": [job(["cat out-b/seen-a.txt out-c/seen-a.txt > out-d/all.txt", "test ! -e out-a"], ["out-d"])]},
    ])
    result = cluster.dstack("run", "d", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    run = cluster.status(run_name_of(result))
    assert [w["name"] for w in run["workflows"]] == ["a", "b", "c", "d"]
    assert all(w["status"] == "done" for w in run["workflows"])
    jobs = {j["job_id"]: j for j in run["jobs"]}
    assert sorted(jobs) == sorted(f"{w}.{k}" for w in "abcd" for k in ("provider", "0"))
    assert jobs["a.0"]["finished_at"] <= jobs["b.provider"]["started_at"]
    assert max(jobs["b.0"]["finished_at"], jobs["c.0"]["finished_at"]) <= jobs["d.provider"]["started_at"]
    out = tmp_path / "out"
    cluster.dstack("artifacts", "download", run["run_name"], "-o", str(out))
    assert (out / "d.0" / "out-d" / "all.txt").read_text() == "from-a\nfrom-a\n"


def test_unknown_workflows_and_cycles_are_refused_before_submission(cluster: Cluster, tmp_path: Path) -> None:
    project = project_of(tmp_path, [
        {"name": "a", "depends-on": ["b"], "jobs": [job(["true"])]},
        {"name": "b", "depends-on": ["a"], "jobs": [job(["true"])]},
        {"name": "c", "depends-on": ["nope"], "jobs": [job(["true"])]},
    ])
    cycle = cluster.dstack("run", "a", cwd=project)
    assert cycle.returncode == 1 and cycle.stdout == ""
    assert "dependency cycle between workflows: a -> b -> a" in cycle.stderr
    unknown = cluster.dstack("run", "c", cwd=project)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "workflow 'c' depends on 'nope', which is not defined (known workflows: a, b, c)" in unknown.stderr


def test_tagged_run_provides_artifacts_without_running_again(cluster: Cluster, tmp_path: Path,
                                                             files: FileServer) -> None:
    project = project_of(tmp_path, [
        {"name": "prepare", "jobs": [job([f"curl -s {files.url}/prepare", "echo v1 > data/version.txt"], ["data"])]},
        {"name": "train", "depends-on": ["prepare:golden"], "jobs": [job(["cat data/version.txt"])]},
    ])
    missing = cluster.dstack("run", "train", cwd=project)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "depends on prepare:golden, but there is no tag 'golden'" in missing.stderr

    prepared = cluster.dstack("run", "prepare", cwd=project)
    assert prepared.returncode == 0
    assert cluster.dstack("tag", run_name_of(prepared), "golden").returncode == 0
    listing = cluster.dstack("tags").stdout
    assert f"golden\t{run_name_of(prepared)}\tdone\tprepare" in listing

    trained = cluster.dstack("run", "train", cwd=project)
    assert trained.returncode == 0, trained.stderr
    assert "train.0 | v1" in trained.stdout
    assert files.hits["/prepare"] == 1  # prepare did not run again
    run = cluster.status(run_name_of(trained))
    assert [(w["name"], w["tagged"]) for w in run["workflows"]] == [("train", ["prepare:golden"])]

    assert cluster.dstack("untag", "golden").returncode == 0
    assert "no tag 'golden'" in cluster.dstack("run", "train", cwd=project).stderr


def test_variables_reach_data_and_jobs_and_are_shown(cluster: Cluster, tmp_path: Path) -> None:
    project = project_of(tmp_path, [{"name": "w", "jobs": [
        job(["echo epochs=$EPOCHS rate=$RATE name=$NAME", "echo '${{ name }}-${{ epochs }}'"]),
    ]}], variables={"global": {"name": "demo", "epochs": 10}, "w": {"rate": 0.5}})
    result = cluster.dstack("run", "w", "--epochs", "100", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "w.0 | epochs=100 rate=0.5 name=demo" in result.stdout
    assert "w.0 | demo-100" in result.stdout
    run_name = run_name_of(result)
    assert cluster.status(run_name)["variables"] == {"name": "demo", "epochs": 100, "rate": 0.5}
    assert "variables epochs=100 name=demo rate=0.5" in cluster.dstack("status", run_name).stdout

    # no variable of the run: an argument of the workflow's (custom) provider, shown as such
    # (a built-in provider refuses it, naming the variables: tests/integration/test_run_args.py)
    unknown = cluster.dstack("run", "w", "--epoch", "3", cwd=project)
    assert unknown.returncode == 0, unknown.stderr
    assert "arguments of provider graph: --epoch 3" in unknown.stderr
    assert "w.0 | epochs=10 rate=0.5 name=demo" in unknown.stdout


def test_failure_stops_dependents_and_independent_branches_go_on(cluster: Cluster, tmp_path: Path) -> None:
    project = project_of(tmp_path, [
        {"name": "broken", "jobs": [job(["exit 3"])]},
        {"name": "after", "depends-on": ["broken"], "jobs": [job(["true"])]},
        {"name": "other", "jobs": [job(["sleep 2"])]},
        {"name": "all", "depends-on": ["after", "other"], "jobs": [job(["true"])]},
    ])
    result = cluster.dstack("run", "all", cwd=project)
    assert result.returncode == 1
    run = cluster.status(run_name_of(result))
    workflows = {w["name"]: w for w in run["workflows"]}
    jobs = {j["job_id"]: j for j in run["jobs"]}
    assert jobs["broken.0"]["status"] == "failed" and jobs["broken.0"]["exit_code"] == 3
    assert workflows["broken"]["reason"] == "dependency broken.0 failed"
    assert jobs["after.provider"]["status"] == "failed"
    assert jobs["after.provider"]["reason"] == "workflow broken failed"
    assert jobs["other.0"]["status"] == "done"  # the independent branch went on
    assert jobs["all.provider"]["reason"] == "workflow after failed"
    assert run["status"] == "failed" and run["reason"].startswith("broken.0: exit code 3")


def test_restart_reruns_what_failed_and_reuses_what_is_done(cluster: Cluster, tmp_path: Path,
                                                            files: FileServer) -> None:
    project = project_of(tmp_path, [
        {"name": "prepare", "jobs": [job([f"curl -s {files.url}/prepare", "echo rows > data/rows.txt"], ["data"])]},
        {"name": "train", "depends-on": ["prepare"],
         "jobs": [job([f"curl -sf {files.url}/ready", "cat data/rows.txt > model/m.txt"], ["model"])]},
        {"name": "evaluate", "depends-on": ["train"], "jobs": [job(["cat model/m.txt"])]},
    ])
    first = cluster.dstack("run", "evaluate", cwd=project)
    assert first.returncode == 1  # /ready does not exist yet
    run_name = run_name_of(first)
    again = cluster.dstack("restart", run_name)  # nothing changed: it fails again, as attempt 2
    assert again.returncode == 1
    run = cluster.status(run_name)
    assert run["status"] == "failed"
    assert {j["job_id"]: j["attempt"] for j in run["jobs"]}["train.0"] == 2

    (files.folder / "ready").write_text("ok")  # type: ignore[attr-defined]
    restarted = cluster.dstack("restart", run_name)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "evaluate.0 | rows" in restarted.stdout
    run = cluster.status(run_name)
    jobs = {j["job_id"]: j for j in run["jobs"]}
    assert run["status"] == "done"
    assert jobs["prepare.0"]["attempt"] == 1 and files.hits["/prepare"] == 1  # done parts were not run again
    assert jobs["train.0"]["attempt"] == 3 and jobs["evaluate.provider"]["attempt"] == 3
    nothing = cluster.dstack("restart", run_name)
    assert nothing.returncode == 1 and "nothing to restart" in nothing.stderr


def test_provider_from_another_repository(cluster: Cluster, tmp_path: Path) -> None:
    repo = write_project(tmp_path / "providers-repo", {
        ".dstack/providers.yaml": yaml.safe_dump({"providers": [
            {"name": "remote-graph", "image": "python:3.9", "commands": ["python3 graph/main.py"]}]}),
        "graph/main.py": GRAPH_PROVIDER, "graph/schema.yaml": GRAPH_SCHEMA,
    })
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    url = repo.as_uri()
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": "providers: []\n",
        ".dstack/workflows.yaml": yaml.safe_dump({"workflows": [
            {"name": "w", "provider": {"repo": url, "name": "remote-graph"},
             "jobs": [job(["test -d $DSTACK_PROJECT_DIR || true", "ls"])]},
            {"name": "missing", "provider": {"repo": url, "name": "nope"}, "jobs": [job(["true"])]},
            {"name": "unreachable", "provider": {"repo": (tmp_path / "no-repo").as_uri(), "name": "x"},
             "jobs": [job(["true"])]},
        ]}),
        "marker.txt": "project file\n",
    })
    result = cluster.dstack("run", "w", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "w.0 | marker.txt" in result.stdout  # the jobs run in the project, not in the provider's repo
    run = cluster.status(run_name_of(result))
    assert run["workflows"][0]["provider_commit"] == commit
    assert run["jobs"][0]["provider_commit"] == commit

    missing = cluster.status(run_name_of(cluster.dstack("run", "missing", cwd=project)))
    assert "has no provider 'nope' (it has: remote-graph)" in missing["jobs"][0]["reason"]
    unreachable = cluster.status(run_name_of(cluster.dstack("run", "unreachable", cwd=project)))
    assert "cannot fetch" in unreachable["jobs"][0]["reason"] and "no-repo" in unreachable["jobs"][0]["reason"]
