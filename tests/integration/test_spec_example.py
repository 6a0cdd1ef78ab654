"""The spec's curl example, run from the project's verbatim copy in examples/curl (the spec:
docs/custom-providers.md; tests/unit/test_spec_copy.py checks that the two agree)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.services import Cluster, FileServer, run_name_of, write_project
from tests.spec import curl_example

pytestmark = pytest.mark.integration

SPEC_URL = "https://github.com/karpathy/char-rnn/blob/master/data/tinyshakespeare/input.txt"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_curl_example_runs_verbatim(cluster: Cluster, files: FileServer, tmp_path: Path) -> None:
    (files.folder / "input.txt").write_text(TEXT)  # type: ignore[attr-defined]
    example = curl_example()
    assert SPEC_URL in example[".dstack/workflows.yaml"]
    example[".dstack/workflows.yaml"] = example[".dstack/workflows.yaml"].replace(SPEC_URL, f"{files.url}/input.txt")
    project = write_project(tmp_path / "project", example)

    result = cluster.dstack("run", "tinyshakespeare", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    run_name = run_name_of(result)
    assert "tinyshakespeare.provider | dstack: tinyshakespeare: created 1 job(s)" in result.stdout
    assert f"{run_name} done" in result.stderr

    run = cluster.status(run_name)
    assert run["status"] == "done" and run["workflow"] == "tinyshakespeare"
    assert [(j["job_id"], j["status"], j["exit_code"]) for j in run["jobs"]] == [
        ("tinyshakespeare.provider", "done", 0), ("tinyshakespeare.0", "done", 0)]

    listing = cluster.dstack("artifacts", "list", run_name)
    assert listing.returncode == 0 and "data/input.txt" in listing.stdout
    download = cluster.dstack("artifacts", "download", run_name, "-o", str(tmp_path / "out"))
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "out" / "tinyshakespeare.0" / "data" / "input.txt").read_text() == TEXT

    logs = cluster.dstack("logs", run_name)
    assert "tinyshakespeare.provider | dstack: tinyshakespeare: created 1 job(s)" in logs.stdout
    json.loads(cluster.dstack("status", "--json").stdout)  # the listing parses too


def test_schema_violation_fails_the_run_naming_the_field(cluster: Cluster, tmp_path: Path) -> None:
    example = curl_example()
    example[".dstack/workflows.yaml"] = example[".dstack/workflows.yaml"].replace(
        "output: data/input.txt", "output: 42")
    project = write_project(tmp_path / "project", example)

    result = cluster.dstack("run", "tinyshakespeare", cwd=project)

    assert result.returncode == 1
    assert "field 'output': 42 is not of type 'string' (rule: type)" in result.stderr
    run = cluster.status(run_name_of(result))
    assert run["status"] == "failed" and "field 'output'" in run["reason"]
    assert [j["job_id"] for j in run["jobs"]] == ["tinyshakespeare.provider"]  # no job was created
