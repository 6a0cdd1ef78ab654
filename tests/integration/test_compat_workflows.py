"""Workflow files written for early dstack (2022), run unchanged through the real services: `help:`,
hyphenated variables, workflows with an image and no provider, and `depends-on: [- WORKFLOW: TAG]`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.services import Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

TRAIN_SCRIPT = """\
import os, sys
print("argv=" + " ".join(sys.argv[1:]))
print(f"env BATCH_SIZE={os.environ['BATCH_SIZE']} LOG_INTERVAL={os.environ['LOG_INTERVAL']}")
"""


def test_python_workflow_with_help_is_listed_described_and_runs(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: hello
    help: "Says hello [politely]"
    provider: python
    python_script: hello.py
  - name: other
    provider: bash
    commands: [echo other]
""",
        "hello.py": "print('hello from the script')\n",
    })

    listing = cluster.dstack("workflows", cwd=project)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows == [["NAME", "PROVIDER", "HELP"], ["hello", "python", "Says", "hello", "[politely]"],
                    ["other", "bash"]]
    as_json = json.loads(cluster.dstack("workflows", "--json", cwd=project).stdout)
    assert as_json[0] == {"name": "hello", "provider": "python", "provider_repo": None,
                          "help": "Says hello [politely]", "depends_on": []}

    before = len(json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout))
    described = cluster.dstack("run", "hello", "--help", cwd=project)
    assert described.returncode == 0, described.stderr
    assert "Workflow hello, provider python." in described.stdout
    assert "Says hello [politely]" in described.stdout and "python_script: hello.py" in described.stdout
    assert "help:" not in described.stdout  # a description, not a parameter
    assert len(json.loads(cluster.dstack("status", "--json", "-n", "1000").stdout)) == before  # nothing submitted

    result = cluster.dstack("run", "hello", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello from the script" in cluster.job_lines(run_name_of(result), "hello.0")


def test_hyphenated_variables_reach_the_job_as_shell_names(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: train
    provider: python
    file: train.py
    args: --batch-size ${{ batch-size }} --log-interval ${{ log-interval }}
""",
        ".dstack/variables.yaml": "variables:\n  train:\n    batch-size: 64\n    log-interval: 10\n",
        "train.py": TRAIN_SCRIPT,
    })

    described = cluster.dstack("run", "train", "-h", cwd=project)
    assert "--batch-size 64    $BATCH_SIZE" in described.stdout, described.stdout + described.stderr

    default = cluster.dstack("run", "train", cwd=project)
    assert default.returncode == 0, default.stdout + default.stderr
    logs = cluster.job_lines(run_name_of(default), "train.0")
    assert "argv=--batch-size 64 --log-interval 10" in logs
    assert "env BATCH_SIZE=64 LOG_INTERVAL=10" in logs

    overridden = cluster.dstack("run", "train", "--batch-size", "128", cwd=project)
    assert overridden.returncode == 0, overridden.stdout + overridden.stderr
    logs = cluster.job_lines(run_name_of(overridden), "train.0")
    assert "argv=--batch-size 128 --log-interval 10" in logs
    assert "env BATCH_SIZE=128 LOG_INTERVAL=10" in logs


def test_ambiguous_variables_are_refused_before_submitting(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": "workflows:\n  - name: train\n    provider: python\n    file: train.py\n",
        ".dstack/variables.yaml": "variables:\n  global:\n    batch_size: 32\n  train:\n    batch-size: 64\n",
        "train.py": TRAIN_SCRIPT,
    })
    result = cluster.dstack("run", "train", cwd=project)
    assert result.returncode == 1 and result.stdout == ""
    assert ".dstack/variables.yaml:5 (variables.train.batch-size)" in result.stderr
    assert "'batch_size' and 'batch-size'" in result.stderr and "$BATCH_SIZE" in result.stderr


IMAGE_ONLY = """\
workflows:
  - name: prepare
    help: Writes the data
    image: python:3.11
    environment:
      GREETING: hello
    working_dir: src
    commands:
      - mkdir -p out
      - echo "$GREETING $ROWS $(pwd)" > out/data.txt
    artifacts: [src/out]
    resources:
      cpu: 1
      memory: 256MB
  - name: train
    image: python:3.11
    depends-on: [prepare]
    commands:
      - cat src/out/data.txt
      - mkdir -p model && cp src/out/data.txt model/weights.txt
    artifacts: [model]
"""


def test_image_and_commands_without_a_provider_run_as_one_job(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": IMAGE_ONLY,
        ".dstack/variables.yaml": "variables:\n  global:\n    rows: 3\n",
        "src/.keep": "",
    })

    listing = cluster.dstack("workflows", cwd=project)
    assert ["prepare", "docker", "Writes", "the", "data"] in [line.split() for line in listing.stdout.splitlines()]

    result = cluster.dstack("run", "train", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    assert "hello 3 /workflow/src" in cluster.job_lines(run_name, "train.0")  # prepare's artifact, as input
    run = cluster.status(run_name)
    jobs = {job["job_id"]: job for job in run["jobs"]}
    assert jobs["prepare.0"]["image"] == "python:3.11" and jobs["train.0"]["image"] == "python:3.11"
    assert jobs["prepare.0"]["resources"]["cpu"] == 1 and jobs["prepare.0"]["resources"]["memory_mib"] == 256
    out = tmp_path / "out"
    assert cluster.dstack("artifacts", "download", run_name, "-o", str(out)).returncode == 0
    assert (out / "prepare.0" / "src" / "out" / "data.txt").read_text() == "hello 3 /workflow/src\n"
    assert (out / "train.0" / "model" / "weights.txt").read_text() == "hello 3 /workflow/src\n"


def test_neither_provider_nor_image_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": "workflows:\n  - name: w\n    commands: [echo hi]\n"})
    result = cluster.dstack("run", "w", cwd=project)
    assert result.returncode == 1 and result.stdout == ""
    assert ".dstack/workflows.yaml:2 (workflows[0].provider): 'provider' is required here" in result.stderr


def test_depends_on_a_tagged_run_written_as_a_one_key_map(cluster: Cluster, tmp_path: Path) -> None:
    tag = "compat-best"
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": f"""\
workflows:
  - name: prepare
    image: python:3.11
    commands:
      - mkdir -p data && echo "made by $RUN_NAME" > data/version.txt
    artifacts: [data]
  - name: train
    image: python:3.11
    depends-on:
      - prepare: {tag}
    commands:
      - cat data/version.txt
""",
    })
    prepared = cluster.dstack("run", "prepare", cwd=project)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert cluster.dstack("tag", run_name_of(prepared), tag).returncode == 0
    try:
        trained = cluster.dstack("run", "train", cwd=project)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert f"made by {run_name_of(prepared)}" in cluster.job_lines(run_name_of(trained), "train.0")
        run = cluster.status(run_name_of(trained))
        assert [(w["name"], w["tagged"]) for w in run["workflows"]] == [("train", [f"prepare:{tag}"])]
    finally:
        cluster.dstack("untag", tag)

    bad = write_project(tmp_path / "bad", {".dstack/workflows.yaml": (
        "workflows:\n  - name: train\n    image: python:3.11\n    commands: [ls]\n"
        "    depends-on:\n      - {prepare: best, other: v1}\n")})
    refused = cluster.dstack("run", "train", cwd=bad)
    assert refused.returncode == 1 and refused.stdout == ""
    assert ".dstack/workflows.yaml:6 (workflows[0].depends-on[0])" in refused.stderr
    assert "write it as 'WORKFLOW:TAG'" in refused.stderr
