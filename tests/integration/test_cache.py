"""Job caching through the real services: a workflow with ``cache: true`` run again reuses the earlier
job's logs and artifacts and starts no container; each ingredient of the key changed in turn (the image
rebuilt under the same name, the commands, a variable, the working directory, a project file, the
content of an input artifact) and ``--no-cache`` run the job for real; ``--cache`` turns it on."""
from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.services import Cluster, FileServer, run_name_of, write_project

pytestmark = pytest.mark.integration

#: The job's image: rebuilt under the same name with another label, it has another id.
IMAGE = "dstack-test-cache:latest"

TRAIN = """import os
os.makedirs("/workflow/model", exist_ok=True)
data = open("/workflow/data/input.txt").read().strip()
line = f"trained on {data} for {os.environ['EPOCHS']} epochs in {os.getcwd()}"
print(line)
with open("/workflow/model/weights.txt", "w") as f:
    f.write(f"{line} {os.urandom(8).hex()}\\n")  # another run writes other weights
"""


@pytest.fixture
def image(docker_engine: docker.DockerClient) -> Iterator[Any]:
    """``build(label)`` builds :data:`IMAGE` anew (from python:3.11, no network); removed at the end."""
    built: list[str] = []

    def build(label: str) -> str:
        dockerfile = f"FROM python:3.11\nLABEL ai.dstack.test.cache={label}\n".encode()
        found, _ = docker_engine.images.build(fileobj=io.BytesIO(dockerfile), tag=IMAGE, rm=True, pull=False)
        built.append(str(found.id))
        return str(found.id)

    yield build
    for image_id in reversed(built):
        try:
            docker_engine.images.remove(image_id, force=True)
        except docker.errors.APIError:
            pass


def workflows(files: FileServer, train_commands: tuple[str, ...] = (), other: bool = False, **train: Any) -> str:
    """The project's workflows: ``prepare`` writes the variable ``content`` into an artifact, ``train`` (with
    caching) reads it and writes weights; ``other`` is a workflow nothing depends on."""
    unrelated = [{"name": "other", "provider": "docker", "image": "python:3.11", "commands": ["true"]}] if other else []
    return yaml.safe_dump({"workflows": [
        {"name": "prepare", "provider": "docker", "image": "python:3.11",
         "commands": ['mkdir -p data && echo "$CONTENT" > data/input.txt'], "artifacts": ["data"]},
        {"name": "train", "provider": "docker", "image": IMAGE, "depends-on": ["prepare"], "cache": True,
         "commands": [f"curl -sf -o /dev/null {files.url}/train", "python /workflow/train.py", *train_commands],
         "artifacts": ["model"], **train},
        *unrelated,
    ]})


def test_a_cached_job_reuses_its_result_until_an_ingredient_changes(cluster: Cluster, tmp_path: Path,
                                                                    files: FileServer, image: Any) -> None:
    image("1")
    (files.folder / "train").write_text("ok\n")  # type: ignore[attr-defined]
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": workflows(files),
        ".dstack/variables.yaml": yaml.safe_dump({"variables": {"prepare": {"content": "A"},
                                                                "train": {"epochs": 1}}}),
        "train.py": TRAIN})

    def run(*args: str) -> tuple[str, dict[str, Any], subprocess.CompletedProcess]:
        """``dstack run ARGS``: the run's name, its train job and what the CLI printed."""
        result = cluster.dstack("run", *args, cwd=project)
        assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
        name = run_name_of(result)
        job = next(j for j in cluster.status(name)["jobs"] if j["job_id"] == "train.0")
        return name, job, result

    def trained() -> int:
        """How often the train job's container ran."""
        return files.hits.get("/train", 0)

    def ran_again(what: str, *args: str) -> str:
        before = trained()
        name, job, _ = run(*args)
        assert (trained(), job["cached_from"]) == (before + 1, ""), f"{what}: the job did not run"
        return name

    first, job, _ = run("train")
    assert (trained(), job["cached_from"]) == (1, "")

    # the same job again (an unrelated workflow added meanwhile): reused, nothing ran
    (project / ".dstack" / "workflows.yaml").write_text(workflows(files, other=True))
    second, job, result = run("train")
    assert trained() == 1 and job["status"] == "done" and job["cached_from"] == f"{first}/train.0"
    assert f"train.0 done (cached from {first}/train.0)" in result.stderr
    shown = cluster.dstack("status", second, env={"COLUMNS": "250"})
    assert f"done (cached from {first}/train.0)" in shown.stdout, shown.stdout
    assert cluster.job_lines(second, "train.0") == cluster.job_lines(first, "train.0") == [
        "trained on A for 1 epochs in /workflow"]
    weights = []
    for name in (first, second):
        download = cluster.dstack("artifacts", "download", name, "-o", str(tmp_path / name))
        assert download.returncode == 0, download.stderr
        weights.append((tmp_path / name / "train.0" / "model" / "weights.txt").read_text())
    assert weights[0] == weights[1] and weights[0].startswith("trained on A")

    # each ingredient changed in turn runs the job
    image("2")
    ran_again("the image rebuilt", "train")
    (project / ".dstack" / "workflows.yaml").write_text(workflows(files, ("echo more",)))
    ran_again("the commands", "train")
    epochs = ("--epochs", "2")
    ran_again("a variable", "train", *epochs)
    (project / ".dstack" / "workflows.yaml").write_text(workflows(files, ("echo more",), working_dir="src"))
    in_src = ran_again("the working directory", "train", *epochs)
    assert cluster.job_lines(in_src, "train.0")[0] == "trained on A for 2 epochs in /workflow/src"
    (project / "train.py").write_text(TRAIN + "# changed\n")
    ran_again("a project file", "train", *epochs)
    content = ("--content", "B")
    on_b = ran_again("the content of its input", "train", *epochs, *content)
    ran_again("--no-cache", "--no-cache", "train", *epochs, *content)
    # --cache (for every workflow of the run): the job is reused again
    _, job, _ = run("--cache", "train", *epochs, *content)
    assert job["cached_from"] == f"{on_b}/train.0" and trained() == 8
