"""`dstack run NAME ARGS` beyond variables: ARGS split into variables and what goes to the provider; a built-in
provider's options overriding a workflow's parameters (resources and environment merged), unknown ones refused
naming what is known; a custom provider's arguments (``provider_args``) through planning, the scheduler and the
SDK; a provider of providers.yaml run by its name; and what `dstack run WORKFLOW --help` says of them."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dstack import builtin_providers
from dstack.cli.main import cli
from dstack.cli.workflows import asks_help, describe
from dstack.errors import ConfigError
from dstack.messages import ProviderSpec, ProviderTask, RestartRun, SubmitRun, WorkflowSpec
from dstack.planning import plan_run, provider_project, split_args
from dstack.project import Project, has_project_files, load_project
from dstack.sdk import Job, Provider, Workflow
from dstack.sdk.provider import OUTPUT_DIR_ENV
from dstack.sdk.workflow import WORKFLOW_FILE_ENV
from tests.scheduler_harness import PROVIDER, PROVIDER_TASK, RUN, WF, Harness

WORKFLOWS = """\
workflows:
  - name: prepare
    provider: echoargs
  - name: train
    provider: python
    help: Trains the model.
    depends-on: [prepare]
    file: train.py
    python: "3.9"
    working_dir: src
    environment:
      EPOCHS: ${{ epochs }}
      SEED: "1"
    resources:
      gpu: {count: 1, name: A100}
      memory: 8GB
  - name: build
    provider: bash
    commands: [make]
  - name: custom
    provider: echoargs
    depends-on: [prepare]
  - name: legacy
    provider: python
    file: train.py
    resources:
      K80/gpu: 2
"""
PROVIDERS = """\
providers:
  - name: echoargs
    image: python:3.11
    commands: [python3 providers/echoargs/main.py]
  - name: solo
    image: python:3.11
    commands: [python3 providers/solo/main.py]
"""
VARIABLES = """\
variables:
  global:
    epochs: 10
  train:
    lr: 0.1
"""
ECHOARGS = ProviderSpec(name="echoargs", image="python:3.11", commands=["python3 providers/echoargs/main.py"])


@pytest.fixture
def project(tmp_path: Path) -> Project:
    folder = tmp_path / ".dstack"
    folder.mkdir()
    (folder / "workflows.yaml").write_text(WORKFLOWS)
    (folder / "providers.yaml").write_text(PROVIDERS)
    (folder / "variables.yaml").write_text(VARIABLES)
    return load_project(tmp_path)


def target(project: Project, name: str, *args: str) -> WorkflowSpec:
    """The spec of ``name`` in ``dstack run NAME ARGS``."""
    split = split_args(project, name, args)
    return {spec.name: spec for spec in plan_run(project, name, split.variables, split.provider_args)}[name]


def config_error(project: Project, name: str, *args: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        target(project, name, *args)
    return info.value


# ----------------------------------------------------------------------------- splitting ARGS


def test_split_variables_detach_and_the_rest_in_order(project: Project) -> None:
    split = split_args(project, "train", ["--epochs", "3", "--gpu", "2", "-d", "--lr=0.5", "-e", "A=1", "--detach"])
    assert split.variables == {"epochs": "3", "lr": "0.5"}
    assert split.provider_args == ["--gpu", "2", "-e", "A=1"]
    assert split.detach


def test_split_a_variable_of_another_workflow_is_no_variable_of_this_run(project: Project) -> None:
    split = split_args(project, "custom", ["--lr", "0.5", "ARG", "--epochs=4"])
    assert split.variables == {"epochs": "4"} and split.provider_args == ["--lr", "0.5", "ARG"]
    assert not split.detach


def test_split_double_dash_passes_the_rest_as_written(project: Project) -> None:
    split = split_args(project, "custom", ["--flag", "--", "-d", "--epochs", "5", "--"])
    assert split.variables == {} and not split.detach
    assert split.provider_args == ["--flag", "-d", "--epochs", "5", "--"]


def test_split_variable_without_value(project: Project) -> None:
    with pytest.raises(ConfigError, match="--epochs needs a value"):
        split_args(project, "train", ["--gpu", "1", "--epochs"])


# ----------------------------------------------------------------------------- a built-in provider's options


def test_options_override_parameters_after_substitution(project: Project) -> None:
    spec = target(project, "train", "--epochs", "3", "--gpu", "2", "--memory", "32GB", "-e", "SEED=7", "-e", "NEW=x",
                  "--version", "3.11", "-r", "req.txt")
    assert spec.data["resources"] == {"gpu": {"count": 2, "name": "A100"}, "memory": "32GB"}
    assert spec.data["environment"] == {"EPOCHS": 3, "SEED": "7", "NEW": "x"}  # ${{ epochs }} substituted first
    assert spec.data["version"] == "3.11" and "python" not in spec.data  # its older name, which it replaces
    assert spec.data["requirements"] == "req.txt" and spec.data["file"] == "train.py"
    assert spec.variables["epochs"] == 3 and spec.provider_args == []


def test_options_the_workflow_did_not_have(project: Project) -> None:
    spec = target(project, "build", "--cpu", "2", "--gpu-name", "T4", "-c", "make test", "-c", "make lint",
                  "-a", "out", "--before-run", "apt-get update")
    assert spec.data == {"commands": ["make test", "make lint"], "resources": {"cpu": 2.0, "gpu": {"name": "T4"}},
                         "artifacts": ["out"], "before_run": ["apt-get update"]}


def test_gpu_option_over_early_dstacks_model_gpu(project: Project) -> None:
    assert target(project, "legacy", "--gpu", "4").data["resources"] == {"gpu": {"count": 4, "name": "K80"}}
    assert target(project, "legacy", "--memory", "1GB").data["resources"] == {"K80/gpu": 2, "memory": "1GB"}


def test_artifact_option_is_relative_to_the_working_dir(project: Project) -> None:
    assert target(project, "train", "-a", "checkpoints").data["artifacts"] == ["src/checkpoints"]
    assert target(project, "train", "-w", "lab", "-a", "out").data["artifacts"] == ["lab/out"]


def test_options_apply_to_the_target_only(project: Project) -> None:
    specs = {s.name: s for s in plan_run(project, "custom", {}, ["--gpu", "2"])}
    assert specs["prepare"].provider_args == [] and specs["custom"].provider_args == ["--gpu", "2"]


@pytest.mark.parametrize("args,what", [
    (["--bogus", "1"], "unknown option --bogus"),
    (["--bogus=1"], "unknown option --bogus"),
    (["--mem", "1GB"], "unknown option --mem"),  # no abbreviations: --memory is written whole
    (["stray"], "unknown argument 'stray'"),
    (["--gpu", "1", "train.py"], "unknown argument 'train.py'"),  # positional arguments are no option
])
def test_unknown_refused_naming_variables_and_options(project: Project, args: list[str], what: str) -> None:
    error = config_error(project, "train", *args)
    assert error.message.startswith(f"`dstack run train`: {what}: it is neither a variable of this run")
    assert "(--epochs, --lr; .dstack/variables.yaml)" in error.message
    assert "an option of provider python (-r/--requirements, --version, -e/--env, -a/--artifact" in error.message
    assert "--gpu, --gpu-name, --gpu-memory, --shm-size)" in error.message
    assert "`dstack run train --help` describes them" in error.message


@pytest.mark.parametrize("args,message", [
    (["--gpu", "two"], "`dstack run train`: provider python: argument --gpu: invalid int value: 'two'"),
    (["--memory"], "`dstack run train`: provider python: argument --memory: expected one argument"),
    (["-e", "NOVALUE"], "--env 'NOVALUE': write NAME=VALUE"),
    (["--memory", "lots"], "`dstack run train --memory lots`: parameter 'resources.memory': 'lots' is not in"),
])
def test_wrong_option_values_named(project: Project, args: list[str], message: str) -> None:
    assert message in config_error(project, "train", *args).message


def test_every_providers_options_set_parameters_of_its_schema() -> None:
    for name in builtin_providers.names():
        parser = builtin_providers.provider_class(name).options_parser(f"dstack run {name}")
        mapping = builtin_providers.provider_class(name).option_parameters
        for action in parser.own:
            assert mapping.get(action.dest, action.dest) in builtin_providers.schema(name)["properties"], (name, action)


def test_image_only_workflow_takes_the_docker_options(tmp_path: Path) -> None:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(
        "workflows:\n  - name: w\n    image: alpine\n    commands: [env]\n")
    project = load_project(tmp_path)
    assert target(project, "w", "-p", "2", "-e", "A=1").data == {"image": "alpine", "commands": ["env"], "ports": 2,
                                                                 "environment": {"A": "1"}}
    assert "option of provider docker (-p/--ports" in config_error(project, "w", "--version", "3").message


# ----------------------------------------------------------------------------- a custom provider's arguments


def test_custom_provider_gets_what_is_no_variable(project: Project) -> None:
    spec = target(project, "custom", "ARG1", "--flag", "x", "--epochs", "5", "-d")
    assert spec.provider == ECHOARGS and spec.data == {}
    assert spec.provider_args == ["ARG1", "--flag", "x"] and spec.variables == {"epochs": 5}


def test_a_provider_of_providers_yaml_run_by_its_name(project: Project) -> None:
    with_solo = provider_project(project, "solo")
    assert "solo" not in project.workflows  # the project itself is left as it was
    [spec] = plan_run(with_solo, "solo", {"epochs": "2"}, ["data.csv", "--lr", "1"])
    assert (spec.name, spec.data, spec.provider_args, spec.variables) == ("solo", {}, ["data.csv", "--lr", "1"],
                                                                        {"epochs": 2})
    assert spec.provider == ProviderSpec(name="solo", image="python:3.11", commands=["python3 providers/solo/main.py"])


def test_a_project_of_providers_alone_runs_them_by_name(tmp_path: Path) -> None:
    folder = tmp_path / ".dstack"
    folder.mkdir()
    (folder / "providers.yaml").write_text(PROVIDERS)
    assert has_project_files(tmp_path)
    alone = load_project(tmp_path)
    assert alone.workflows == {} and "solo" in alone.providers
    [spec] = plan_run(provider_project(alone, "solo"), "solo", {}, ["data.csv"])
    assert spec.provider_args == ["data.csv"]
    (folder / "providers.yaml").unlink()
    assert not has_project_files(tmp_path)
    with pytest.raises(ConfigError, match="workflows.yaml"):
        load_project(tmp_path)


def test_provider_args_reach_the_provider_task_and_survive_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path / "state.db")
    h.scheduler.handle_request(SubmitRun(
        run_name=RUN, workflow=WF, snapshot_id="snap-1", submitted_at=1700000000.0, project="/p",
        workflows=[WorkflowSpec(name=WF, data={}, provider=PROVIDER, provider_args=["ARG1", "--flag", "x"])]))
    h.scheduler.flush_outbox()
    [task] = [message for _, _, message in h.messages() if isinstance(message, ProviderTask)]
    assert task.args == ["ARG1", "--flag", "x"]
    h.start(PROVIDER_TASK)
    h.finish(PROVIDER_TASK, status="failed", exit_code=2, reason="bad arguments")
    sent = len(h.sent)
    h.scheduler.handle_request(RestartRun(RUN))
    h.scheduler.flush_outbox()
    [again] = [message for _, _, message in h.messages(sent) if isinstance(message, ProviderTask)]
    assert again.attempt == 2 and again.args == ["ARG1", "--flag", "x"]


# ----------------------------------------------------------------------------- the SDK


def set_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"name": "custom", "provider": "echoargs", "run_name": RUN, "data": {}, **extra}))
    monkeypatch.setenv(WORKFLOW_FILE_ENV, str(path))
    monkeypatch.setenv(OUTPUT_DIR_ENV, str(tmp_path))


class ArgsProvider(Provider):
    """A provider that reads its arguments with argparse, as the docs show."""

    def create_jobs(self) -> list[Job]:
        parser = argparse.ArgumentParser(prog=f"dstack run {self.workflow.name}")
        parser.add_argument("name")
        parser.add_argument("--flag", default="none")
        args = parser.parse_args(self.provider_args)
        return [Job(image="python:3.11", commands=[f"echo {args.name} {args.flag}"])]


def test_sdk_exposes_provider_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, provider_args=["ARG1", "--flag", "x"])
    provider = ArgsProvider()
    assert provider.provider_args == provider.workflow.provider_args == ["ARG1", "--flag", "x"]
    provider.start()
    [job] = json.loads((tmp_path / "jobs.json").read_text())["jobs"]
    assert job["commands"] == ["echo ARG1 x"]


def test_sdk_provider_args_empty_when_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch)  # a worker of an earlier version writes no provider_args
    assert Workflow.from_environment().provider_args == []
    assert Workflow("w", "p", RUN, {}).provider_args == []


# ----------------------------------------------------------------------------- --help


def test_help_of_a_builtin_workflow_lists_its_providers_options(project: Project) -> None:
    text = describe(project, "train")
    assert text.splitlines()[0] == "Usage: dstack run train [--VARIABLE VALUE ...] [OPTIONS ...] [-d]"
    assert "Trains the model." in text and "--epochs 10" in text and "--lr 0.1" in text
    options = text[text.index("Options of provider python"):]
    assert "each overrides its parameter" in options
    for option in ("-r FILE, --requirements FILE", "--version VERSION", "-e NAME=VALUE, --env NAME=VALUE",
                   "--gpu COUNT", "--memory SIZE", "common options:"):
        assert option in options, option
    assert "FILE [ARGS" not in options and "-h, --help" not in options  # no positional arguments, no own help


def test_help_of_a_custom_workflow_says_it_takes_arguments(project: Project) -> None:
    text = describe(project, "custom")
    assert text.splitlines()[0] == "Usage: dstack run custom [--VARIABLE VALUE ...] [ARGS ...] [-d] [-- ARGS ...]"
    assert "Arguments of provider echoargs (.dstack/providers.yaml: image python:3.11" in text
    assert "self.provider_args" in text
    solo = describe(provider_project(project, "solo"), "solo")
    assert "the provider solo of .dstack/providers.yaml" in solo and "Arguments of provider solo" in solo


def test_asks_help_stops_at_double_dash() -> None:
    assert asks_help(["--gpu", "2", "-h"]) and not asks_help(["--", "-h"]) and not asks_help(["x", "--", "--help"])


def test_cli_help_of_workflow_and_provider(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.root)
    result = CliRunner().invoke(cli, ["run", "train", "--gpu", "2", "--help"])
    assert result.exit_code == 0, result.output
    assert "Options of provider python" in result.output and "--shm-size SIZE" in result.output
    result = CliRunner().invoke(cli, ["run", "solo", "-h"])
    assert result.exit_code == 0, result.output
    assert "Workflow solo, provider solo." in result.output and "Arguments of provider solo" in result.output
