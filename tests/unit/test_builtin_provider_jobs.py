"""The built-in providers' logic: the jobs each creates from its parameters, and their command lines.

Each provider runs here as in its container: the workflow in DSTACK_WORKFLOW_FILE, jobs.json written
to DSTACK_PROVIDER_OUTPUT.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from dstack import builtin_providers
from dstack.errors import ConfigError
from dstack.planning import plan_builtin_run

RESOURCES = {"cpu": 2, "memory": "4GB", "gpu": {"count": 2, "name": "A100"}, "shm_size": "1GB"}


def create_jobs(name: str, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps({"name": "w", "provider": name, "run_name": "r", "data": data}))
    monkeypatch.setenv("DSTACK_WORKFLOW_FILE", str(workflow))
    monkeypatch.setenv("DSTACK_PROVIDER_OUTPUT", str(tmp_path))
    builtin_providers.provider_class(name)().start()
    return json.loads((tmp_path / "jobs.json").read_text())["jobs"]


def test_every_provider_has_a_schema_and_a_class() -> None:
    for name in builtin_providers.names():
        assert builtin_providers.schema(name)["title"] == name
        assert builtin_providers.provider_class(name).name == name


def test_common_parameters_apply_to_every_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = {"environment": {"A": 1, "FLAG": True}, "working_dir": "src", "artifacts": ["out"],
              "before_run": ["apt-get install -y sox"], "resources": RESOURCES}
    cases = {"bash": {"commands": ["make"]}, "docker": {"image": "ubuntu", "commands": ["make"]},
             "python": {"file": "t.py"}, "curl": {"url": "http://x/a", "output": "d/a"},
             "torchrun": {"file": "t.py", "nodes": 2}, "tensorboard": {"logdir": "runs"}}
    assert set(cases) == set(builtin_providers.names())
    for name, own in cases.items():
        for job in create_jobs(name, {**own, **common}, tmp_path / name, monkeypatch):
            assert job["commands"][0] == "apt-get install -y sox", name
            assert job["env"] == {"A": "1", "FLAG": "true"}, name
            assert job["working_dir"] == "src" and job["artifacts"] == ["out"], name
            assert job["resources"]["memory_mib"] == 4096 and job["resources"]["gpu_count"] == 2, name


def test_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = create_jobs("python", {"file": "train.py", "args": ["--name", "two words", 3],
                                   "requirements": "req.txt", "version": "3.10"}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.10"
    install, run = job["commands"]
    assert install.endswith("-r req.txt")
    assert shlex.split(run) == ["python3", "train.py", "--name", "two words", "3"]
    [job] = create_jobs("python", {"file": "train.py", "args": "--run $RUN_NAME"}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.11" and job["commands"] == ["python3 train.py --run $RUN_NAME"]


def test_docker_and_bash_ports_are_any_free_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = create_jobs("docker", {"image": "nginx", "commands": ["nginx"], "ports": 2}, tmp_path, monkeypatch)
    assert job["ports"] == [0, 0] and job["image"] == "nginx"


def test_torchrun_master_and_followers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = create_jobs("torchrun", {"file": "train.py", "args": "--epochs 2", "nodes": 3,
                                    "resources": {"gpu": 4}}, tmp_path, monkeypatch)
    assert [job["master"] for job in jobs] == [None, "0", "0"]
    assert jobs[0]["ports"] == [0] and jobs[1]["ports"] == []
    assert jobs[0]["commands"][-1] == ('torchrun --nnodes=3 --node_rank=0 --nproc_per_node=4 '
                                       '--master_addr="$JOB_HOSTNAME" --master_port="$JOB_PORT_0" train.py --epochs 2')
    assert '--node_rank=2 --nproc_per_node=4 --master_addr="$MASTER_JOB_HOSTNAME" --master_port="$MASTER_JOB_PORT_0"' \
        in jobs[2]["commands"][-1]


def test_tensorboard_serves_an_app_on_its_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = create_jobs("tensorboard", {"logdir": "my runs"}, tmp_path, monkeypatch)
    assert job["ports"] == [0]
    assert job["apps"] == [{"name": "tensorboard", "port_index": 0, "url_path": "", "url_query_params": {}}]
    assert "--logdir 'my runs'" in job["commands"][-1]


def test_curl_fails_on_http_errors_and_creates_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = create_jobs("curl", {"url": "http://h/a b", "output": "data/in.txt"}, tmp_path, monkeypatch)
    assert job["commands"] == ["mkdir -p data",
                               "curl --fail --location --silent --show-error 'http://h/a b' -o data/in.txt"]


def test_a_bad_parameter_fails_in_the_container_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        create_jobs("python", {"file": "t.py", "nodes": 2}, tmp_path, monkeypatch)
    assert "nodes" in json.loads((tmp_path / "error.json").read_text())["reason"]


@pytest.mark.parametrize("argv, data", [
    (["bash", "-c", "echo hi", "-c", "ls"], {"commands": ["echo hi", "ls"]}),
    (["bash", "run.sh", "a b"], {"commands": ["bash run.sh 'a b'"]}),
    (["python", "-r", "req.txt", "--version", "3.10", "--gpu", "1", "t.py", "--lr", "1", "-e", "X=1"],
     {"file": "t.py", "args": ["--lr", "1", "-e", "X=1"], "requirements": "req.txt", "version": "3.10",
      "resources": {"gpu": 1}}),
    (["python", "-e", "X=1", "-a", "out", "--gpu", "2", "--gpu-name", "A100", "--memory", "8GB", "t.py"],
     {"file": "t.py", "environment": {"X": "1"}, "artifacts": ["out"],
      "resources": {"memory": "8GB", "gpu": {"count": 2, "name": "A100"}}}),
    (["docker", "-p", "1", "nginx", "nginx", "-g", "daemon off;"],
     {"image": "nginx", "commands": ["nginx -g 'daemon off;'"], "ports": 1}),
    (["torchrun", "--nodes", "2", "t.py"], {"file": "t.py", "nodes": 2}),
    (["curl", "http://x/a", "-o", "d/a"], {"url": "http://x/a", "output": "d/a"}),
    (["tensorboard", "runs"], {"logdir": "runs"}),
])
def test_command_lines(argv: list[str], data: dict[str, Any]) -> None:
    [workflow] = plan_builtin_run(argv[0], argv[1:])
    assert workflow.name == argv[0] and workflow.provider is not None and workflow.provider.builtin
    assert workflow.data == data


def test_the_working_dir_of_the_command_line_is_the_current_folder() -> None:
    [workflow] = plan_builtin_run("python", ["-a", "out", "-a", "../data", "t.py"], working_dir="src/models")
    assert workflow.data["working_dir"] == "src/models"
    assert workflow.data["artifacts"] == ["src/models/out", "src/data"]  # named from the current folder
    [workflow] = plan_builtin_run("python", ["-w", "other", "-a", "out", "t.py"], working_dir="src/models")
    assert workflow.data["working_dir"] == "other" and workflow.data["artifacts"] == ["out"]


@pytest.mark.parametrize("argv, message", [
    (["bash"], "give either -c COMMAND or a SCRIPT"),
    (["bash", "-c", "x", "s.sh"], "give either -c COMMAND or a SCRIPT"),
    (["python"], "the following arguments are required: file\nusage: dstack run python"),
    (["python", "--env", "novalue", "t.py"], "--env 'novalue': write NAME=VALUE"),
    (["python", "--memory", "lots", "t.py"], "parameter 'resources.memory': 'lots' is not in the expected form"),
    (["python", "--version", "three", "t.py"], "parameter 'version'"),
    (["torchrun", "--nodes", "0", "t.py"], "parameter 'nodes': 0 is less than the minimum of 1"),
    (["docker", "--before-run", "apt-get update", "nginx"], "parameter 'commands': 'commands' is required here"),
    (["curl", "http://x"], "the following arguments are required: -o/--output"),
])
def test_bad_command_lines_name_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_builtin_run(argv[0], argv[1:])
    assert message in str(info.value)
    assert str(info.value).startswith(f"dstack run {argv[0]}: ")


def test_parameter_problems_name_the_parameter_and_say_what_it_is() -> None:
    problem = builtin_providers.parameter_problem("python", {"file": "t.py", "version": 3.1})
    assert problem is not None and problem.field == "version"
    assert "quote it" in problem.message
    problem = builtin_providers.parameter_problem("bash", {"commands": ["x"], "comands": ["y"]})
    assert problem is not None and problem.field == "comands"
    assert "did you mean 'commands'?" in problem.message
    problem = builtin_providers.parameter_problem("bash", {"commands": ["x"], "resources": {"gpu": {"count": 0}}})
    assert problem is not None and problem.field == "resources.gpu.count"
    assert builtin_providers.parameter_problem("bash", {"commands": ["x"], "resources": RESOURCES}) is None
