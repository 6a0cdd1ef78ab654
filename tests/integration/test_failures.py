"""Bad input and failing jobs: a clear reason, naming what is wrong, and nothing half-submitted."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.projects import graph_project
from tests.services import Cluster, free_port, run_name_of, write_project

pytestmark = pytest.mark.integration


def run_workflow(cluster: Cluster, tmp_path: Path, files: dict, workflow: str = "w"):
    project = write_project(tmp_path / "project", files)
    result = cluster.dstack("run", workflow, cwd=project)
    run_name = run_name_of(result)
    return result, run_name


def failed_run(cluster: Cluster, tmp_path: Path, jobs: list, **kw: object):
    result, run_name = run_workflow(cluster, tmp_path, graph_project([{"name": "w", "jobs": jobs}], **kw))
    assert result.returncode == 1, result.stdout + result.stderr
    run = cluster.status(run_name)
    assert run["status"] == "failed"
    return run, {j["job_id"]: j for j in run["jobs"]}


def test_provider_crash_reports_exit_code_and_last_lines(cluster: Cluster, tmp_path: Path) -> None:
    run, jobs = failed_run(cluster, tmp_path, [{"commands": ["true"]}], provider_commands=[
        "echo preparing", "python3 -c 'import sys; print(\"boom\"); sys.exit(3)'"])
    provider = jobs["w.provider"]
    assert provider["exit_code"] == 3
    assert "exit code 3" in provider["reason"] and "boom" in provider["reason"]
    assert list(jobs) == ["w.provider"]


@pytest.mark.parametrize("jobs, expected", [
    ([], "must return a non-empty list"),
    ([{"commands": ["true"], "depends_on_outsider": True}], "depends_on names a job that create_jobs() did not return"),
    ([{"commands": ["true"], "depends_on": [1]}, {"commands": ["true"], "depends_on": [0]}],
     "dependency cycle: 0 -> 1 -> 0"),
    ([{"commands": ["true"], "artifacts": ["../outside"]}], "leaves the project root"),
    ([{"commands": ["true"], "artifacts": ["/etc"]}], "must be relative to the project root"),
], ids=["no-jobs", "unknown-dependency", "cycle", "artifact-parent", "artifact-absolute"])
def test_bad_jobs_fail_the_provider_and_create_nothing(cluster: Cluster, tmp_path: Path, jobs: list,
                                                      expected: str) -> None:
    run, by_id = failed_run(cluster, tmp_path, jobs)
    assert expected in by_id["w.provider"]["reason"], by_id["w.provider"]["reason"]
    assert list(by_id) == ["w.provider"]


def test_missing_image(cluster: Cluster, tmp_path: Path) -> None:
    """A missing image that may not be pulled (pulls from real registries: test_images.py)."""
    job = {"commands": ["true"], "image": "dstack-test/no-such-image:1"}
    result, run_name = run_workflow(cluster, tmp_path, graph_project([{"name": "w", "pull_policy": "never",
                                                                       "jobs": [job]}]))
    assert result.returncode == 1
    reason = {j["job_id"]: j for j in cluster.status(run_name)["jobs"]}["w.0"]["reason"]
    assert "image 'dstack-test/no-such-image:1' is not present on this worker and its pull policy is never" in reason


def test_command_exit_code(cluster: Cluster, tmp_path: Path) -> None:
    run, jobs = failed_run(cluster, tmp_path, [{"commands": ["echo before > out/partial.txt", "cat out/partial.txt",
                                                             "exit 4"], "artifacts": ["out"]},
                                               {"commands": ["true"], "depends_on": [0]}])
    assert jobs["w.0"]["exit_code"] == 4 and "exit code 4" in jobs["w.0"]["reason"]
    assert "before" in jobs["w.0"]["reason"]
    assert jobs["w.1"]["status"] == "failed" and jobs["w.1"]["reason"] == "dependency w.0 failed"
    assert run["reason"].startswith("w.0: exit code 4")
    listing = cluster.dstack("artifacts", "list", run["run_name"]).stdout
    assert "w.0\tout/partial.txt\t7" in listing  # uploaded although the job failed


def test_out_of_memory(cluster: Cluster, tmp_path: Path) -> None:
    run, jobs = failed_run(cluster, tmp_path, [{
        "commands": ["python3 -c 'b = bytearray(400 * 1024 * 1024); print(len(b))'"],
        "resources": {"memory": "64MB"}}])
    assert jobs["w.0"]["reason"] == "out of memory (the limit is 64 MiB)"


@pytest.mark.parametrize("workflows, providers, expected", [
    ("workflows:\n  - name: w\n    provider: graph\n    jobs: [\n", None,
     ".dstack/workflows.yaml:5: not valid YAML: while parsing a flow node"),
    ("workflows:\n  - name: other\n    provider: graph\n", None,
     "no workflow named 'w' (known workflows: other; built-in providers"),
    ("workflows:\n  - name: w\n    provider: nope\n", None,
     ".dstack/workflows.yaml:3 (workflows.w.provider): workflow 'w' uses provider 'nope', which is neither built in "
     "(bash, curl, docker, python, tensorboard, torchrun) nor defined in .dstack/providers.yaml (the project's "
     "providers: graph)"),
    ("workflows:\n  - name: w\n", None, ".dstack/workflows.yaml:2 (workflows[0].provider): 'provider' is required"),
    (None, "providers:\n  - name: graph\n    image: python:3.9\n", ".dstack/providers.yaml:2 (providers[0].commands): "
     "'commands' is required"),
], ids=["yaml-syntax", "unknown-workflow", "unknown-provider", "missing-provider-key", "missing-commands"])
def test_bad_project_files_are_refused_before_submission(cluster: Cluster, tmp_path: Path, workflows: str,
                                                         providers: str, expected: str) -> None:
    files = graph_project([{"name": "w", "jobs": [{"commands": ["true"]}]}])
    if workflows:
        files[".dstack/workflows.yaml"] = workflows
    if providers:
        files[".dstack/providers.yaml"] = providers
    before = cluster.dstack("status", "--json", "-n", "1000").stdout
    result, _ = run_workflow(cluster, tmp_path, files)
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""  # no run name: nothing was submitted
    assert cluster.dstack("status", "--json", "-n", "1000").stdout == before


def test_unreachable_broker_is_named(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    files = graph_project([{"name": "w", "jobs": [{"commands": ["true"]}]}])
    project = write_project(tmp_path / "project", files)
    result = cluster.dstack("run", "w", cwd=project,
                            env={"DSTACK_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F"})
    assert result.returncode == 1
    assert f"cannot reach RabbitMQ at amqp://127.0.0.1:{port}/" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_storage_is_named(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    files = graph_project([{"name": "w", "jobs": [{"commands": ["true"]}]}])
    project = write_project(tmp_path / "project", files)
    result = cluster.dstack("run", "w", cwd=project, env={"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}" in result.stderr and "s3://" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_scheduler_is_named(tmp_path: Path, vhost: object, s3: object) -> None:
    from tests.services import Vhost
    empty = Vhost()
    try:
        files = graph_project([{"name": "w", "jobs": [{"commands": ["true"]}]}])
        project = write_project(tmp_path / "project", files)
        cluster = Cluster(tmp_path, empty.url, {"DSTACK_STORAGE_URL": (tmp_path / "storage").as_uri()})
        result = cluster.dstack("run", "w", cwd=project)
        assert result.returncode == 1
        assert "no scheduler is running on the broker" in result.stderr
    finally:
        empty.delete()


def test_unknown_run_is_named(cluster: Cluster) -> None:
    for command in (["status", "no-such-run"], ["logs", "no-such-run"], ["stop", "no-such-run"],
                    ["artifacts", "list", "no-such-run"], ["artifacts", "download", "no-such-run"]):
        result = cluster.dstack(*command)
        assert result.returncode == 1 and "no run named 'no-such-run'" in result.stderr, command
