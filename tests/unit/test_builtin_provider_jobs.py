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
    problem = builtin_providers.parameter_problem("python", {"file": "t.py", "version": 3})
    assert problem is not None and problem.field == "version"
    assert "quote it" in problem.message
    problem = builtin_providers.parameter_problem("bash", {"commands": ["x"], "comands": ["y"]})
    assert problem is not None and problem.field == "comands"
    assert "did you mean 'commands'?" in problem.message
    problem = builtin_providers.parameter_problem("bash", {"commands": ["x"], "resources": {"gpu": {"count": 0}}})
    assert problem is not None and problem.field == "resources.gpu.count"
    assert builtin_providers.parameter_problem("bash", {"commands": ["x"], "resources": RESOURCES}) is None


# --------------------------------------------------------------------------- early dstack's spellings


def jobs_and_cli(name: str, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The jobs the provider's container creates, after checking that the CLI accepts ``data`` too."""
    assert builtin_providers.parameter_problem(name, data) is None
    return create_jobs(name, data, tmp_path, monkeypatch)


def container_refusal(name: str, data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Why the provider's container refuses ``data``."""
    with pytest.raises(SystemExit):
        create_jobs(name, data, tmp_path, monkeypatch)
    return str(json.loads((tmp_path / "error.json").read_text())["reason"])


@pytest.mark.parametrize("old", ["script", "python_script"])
def test_python_script_and_script_are_file(old: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = jobs_and_cli("python", {old: "train.py", "args": ["--lr", 1]}, tmp_path, monkeypatch)
    assert job["commands"] == ["python3 train.py --lr 1"]
    [job] = jobs_and_cli("python", {"file": "train.py", old: "train.py"}, tmp_path, monkeypatch)  # the same: fine
    assert job["commands"] == ["python3 train.py"]


def test_python_is_version_and_a_version_may_be_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = jobs_and_cli("python", {"file": "t.py", "python": 3.9}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.9"
    [job] = jobs_and_cli("python", {"file": "t.py", "version": 3.12}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.12"
    [job] = jobs_and_cli("python", {"file": "t.py", "version": "3.9", "python": 3.9}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.9"
    assert builtin_providers.parameter_notes("python", {"file": "t.py", "python": 3.9}) == []


def test_yaml_3_1_is_taken_as_3_10_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("version", "python"):
        [job] = jobs_and_cli("python", {"file": "t.py", key: 3.1}, tmp_path / key, monkeypatch)
        assert job["image"] == "python:3.10"
        assert builtin_providers.parameter_notes("python", {"file": "t.py", key: 3.1}) == [
            (key, "3.1 read as 3.10; quote it: '3.10'")]
    [job] = jobs_and_cli("python", {"file": "t.py", "version": "3.1"}, tmp_path / "text", monkeypatch)
    assert job["image"] == "python:3.1"  # text is taken as written
    assert builtin_providers.parameter_notes("python", {"file": "t.py", "version": "3.10"}) == []


def test_the_cli_warns_of_3_1_naming_the_file_line_and_field(tmp_path: Path) -> None:
    from dstack.errors import ConfigWarning
    from dstack.planning import plan_run
    from dstack.project import load_project
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(
        "workflows:\n  - name: train\n    provider: python\n    file: t.py\n    version: 3.10\n")
    with pytest.warns(ConfigWarning) as caught:
        [spec] = plan_run(load_project(tmp_path), "train")
    assert [str(w.message) for w in caught] == [
        ".dstack/workflows.yaml:5 (workflows.train.version): 3.1 read as 3.10; quote it: '3.10'"]
    assert spec.data["version"] == 3.1  # the provider reads it as the CLI did


@pytest.mark.parametrize("data, message", [
    ({"file": "a.py", "script": "b.py"},
     "'file' and 'script' both give the file ('a.py' and 'b.py'); keep one: 'file'"),
    ({"python_script": "a.py", "script": "b.py"}, "'python_script' and 'script' both give the file"),
    ({"file": "a.py", "version": "3.9", "python": 3.11},
     "'version' and 'python' both give the version ('3.9' and '3.11'); keep one: 'version'"),
])
def test_a_parameter_given_twice_differently_is_refused(data: dict[str, Any], message: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    problem = builtin_providers.parameter_problem("python", data)
    assert problem is not None and message in problem.message
    assert problem.field == list(data)[-1]  # the second of the two, where the line is
    assert message in container_refusal("python", data, tmp_path, monkeypatch)


def test_old_names_are_not_offered_as_suggestions() -> None:
    problem = builtin_providers.parameter_problem("python", {"file": "t.py", "pyton": "3.9"})
    assert problem is not None and "did you mean" not in problem.message and "python_script" not in problem.message
    problem = builtin_providers.parameter_problem("python", {})
    assert problem is not None and problem.field == "file" and "'file' is required" in problem.message


def test_bash_takes_a_python_version_and_requirements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = jobs_and_cli("bash", {"commands": ["python3 run.py"], "python": 3.9, "requirements": "req.txt",
                                  "before_run": ["echo first"]}, tmp_path, monkeypatch)
    assert job["image"] == "python:3.9"
    first, install, run = job["commands"]
    assert first == "echo first" and install.endswith("-r req.txt") and run == "python3 run.py"
    [job] = jobs_and_cli("bash", {"commands": ["ls"], "version": "3.11"}, tmp_path / "v", monkeypatch)
    assert job["image"] == "python:3.11" and job["commands"] == ["ls"]
    [workflow] = plan_builtin_run("bash", ["--version", "3.9", "-r", "req.txt", "-c", "ls"])
    assert workflow.data == {"commands": ["ls"], "version": "3.9", "requirements": "req.txt"}


def test_docker_ports_may_be_a_list_of_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = jobs_and_cli("docker", {"image": "nginx", "ports": [8080, 9090]}, tmp_path, monkeypatch)
    assert job["ports"] == [8080, 9090]
    problem = builtin_providers.parameter_problem("docker", {"image": "nginx", "ports": [8080, 8080]})
    assert problem is not None and problem.field == "ports"
    problem = builtin_providers.parameter_problem("docker", {"image": "nginx", "ports": [0]})
    assert problem is not None and problem.field == "ports[0]"


def test_torchrun_script_is_file_and_nnodes_is_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = jobs_and_cli("torchrun", {"script": "train.py", "nodes": 2}, tmp_path, monkeypatch)
    assert len(jobs) == 2 and jobs[0]["commands"][-1].endswith(" train.py")
    [workflow] = plan_builtin_run("torchrun", ["--nnodes", "3", "train.py"])
    assert workflow.data == {"file": "train.py", "nodes": 3}


@pytest.mark.parametrize("name, own", [("bash", {"commands": ["x"]}), ("docker", {"image": "i"}),
                                       ("python", {"file": "t.py"}), ("curl", {"url": "http://x/a", "output": "a"}),
                                       ("torchrun", {"file": "t.py"}), ("tensorboard", {"logdir": "runs"})])
def test_resources_interruptible_and_model_gpu(name: str, own: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    resources = {"interruptible": True, "K80/gpu": 4, "memory": "1GB"}
    [job, *_] = jobs_and_cli(name, {**own, "resources": resources}, tmp_path, monkeypatch)
    assert job["resources"]["interruptible"] is True
    assert (job["resources"]["gpu_count"], job["resources"]["gpu_name"]) == (4, "K80")
    assert job["resources"]["memory_mib"] == 1024


@pytest.mark.parametrize("resources, message", [
    ({"K80/gpu": 4, "gpu": 1}, "'K80/gpu' and 'gpu' both say which GPUs the job needs; keep one, "
                               "e.g. gpu: {count: 4, name: K80}"),
    ({"K80/gpu": 4, "V100/gpu": 2}, "'K80/gpu' and 'V100/gpu' both say which GPUs"),
])
def test_model_gpu_beside_gpu_is_refused(resources: dict[str, Any], message: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    problem = builtin_providers.parameter_problem("bash", {"commands": ["x"], "resources": resources})
    assert problem is not None and problem.field == "resources" and message in problem.message
    assert message in container_refusal("bash", {"commands": ["x"], "resources": resources}, tmp_path, monkeypatch)


def test_interruptible_names_no_queue_and_changes_no_placement() -> None:
    from dstack.messages import Inventory, Resources, from_dict
    from dstack.names import DEFAULT_TASK_QUEUE, task_queue
    from dstack.placement import fits
    assert task_queue(Resources(interruptible=True)) == DEFAULT_TASK_QUEUE
    assert task_queue(Resources(gpu_count=1, interruptible=True)) == task_queue(Resources(gpu_count=1))
    assert fits(Resources(cpu=1, interruptible=True), Inventory(cpu=2, memory_mib=1024)) == []
    assert from_dict(Resources, {"cpu": 1.0, "gpu_count": 0}) == Resources(cpu=1.0)  # a message of before
