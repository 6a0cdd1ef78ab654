"""dstack.planning: --name value overrides, the workflows a run needs in dependency order, and the
WorkflowSpecs of a run with variables substituted. Projects are real .dstack/ folders in tmp_path."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from dstack.errors import ConfigError
from dstack.messages import ProviderRepo, ProviderSpec, SubmitRun, TagRef, WorkflowSpec, decode, encode
from dstack.planning import parse_overrides, plan_run, workflow_order
from dstack.project import Project, load_project

PROVIDERS = """\
providers:
  - name: python
    image: python:3.11-slim
    commands: [python3 providers/python/main.py]
"""

PYTHON = ProviderSpec(name="python", image="python:3.11-slim", commands=["python3 providers/python/main.py"])


def project_of(root: Path, workflows: str, variables: Optional[str] = None) -> Project:
    folder = root / ".dstack"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workflows.yaml").write_text(workflows)
    (folder / "providers.yaml").write_text(PROVIDERS)
    if variables is not None:
        (folder / "variables.yaml").write_text(variables)
    return load_project(root)


def graph(root: Path, edges: dict[str, list[str]], key: str = "depends-on") -> Project:
    """A project whose workflows depend on each other as ``edges`` says (all with provider python)."""
    text = "workflows:\n"
    for name, upstream in edges.items():
        text += f"  - name: {name}\n    provider: python\n"
        if upstream:
            text += f"    {key}: [{', '.join(repr(u) for u in upstream)}]\n"
    return project_of(root, text)


def names(project: Project, target: str) -> list[str]:
    return [w.name for w in workflow_order(project, target)]


def config_error(call, *args) -> ConfigError:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        call(*args)
    return info.value


# ----------------------------------------------------------------------------- parse_overrides


@pytest.mark.parametrize("args,expected", [
    ([], {}),
    (["--epochs", "100"], {"epochs": "100"}),
    (["--epochs=100"], {"epochs": "100"}),
    (["--epochs", "100", "--lr=0.1", "--model", "resnet"], {"epochs": "100", "lr": "0.1", "model": "resnet"}),
    (["--query=a=b"], {"query": "a=b"}),        # only the first '=' separates
    (["--name="], {"name": ""}),                # an empty value is a value
    (["--lr", "-0.1"], {"lr": "-0.1"}),          # a value may start with '-'
    (["--epochs", "1", "--epochs", "2"], {"epochs": "2"}),  # the last one wins
])
def test_parse_overrides(args: list[str], expected: dict[str, str]) -> None:
    assert parse_overrides(args) == expected


def test_parse_overrides_takes_any_sequence() -> None:
    assert parse_overrides(("--a", "1")) == {"a": "1"}


@pytest.mark.parametrize("args", [["--epochs"], ["--lr=0.1", "--epochs"]])
def test_parse_overrides_missing_value(args: list[str]) -> None:
    error = config_error(parse_overrides, args)
    assert "--epochs needs a value" in str(error)


@pytest.mark.parametrize("args,stray", [
    (["100"], "100"),
    (["--epochs", "100", "200"], "200"),
    (["-e", "1"], "-e"),
    (["--"], "--"),
    (["train"], "train"),
])
def test_parse_overrides_stray_argument(args: list[str], stray: str) -> None:
    error = config_error(parse_overrides, args)
    assert f"unexpected argument {stray!r}" in str(error)
    assert "--name value" in str(error)  # says how to write one


# ----------------------------------------------------------------------------- workflow_order


def test_order_of_a_lone_workflow(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": [], "b": []})
    assert names(project, "a") == ["a"]
    assert workflow_order(project, "a")[0] is project.workflows["a"]


@pytest.mark.parametrize("key", ["depends-on", "depends_on"])
def test_order_of_a_chain(tmp_path: Path, key: str) -> None:
    project = graph(tmp_path, {"evaluate": ["train"], "train": ["prepare"], "prepare": [], "other": []}, key)
    assert names(project, "evaluate") == ["prepare", "train", "evaluate"]
    assert names(project, "train") == ["prepare", "train"]  # only what the target needs
    assert names(project, "prepare") == ["prepare"]


def test_order_of_a_diamond(tmp_path: Path) -> None:
    project = graph(tmp_path, {"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []})
    order = names(project, "d")
    assert sorted(order) == ["a", "b", "c", "d"]  # each once
    assert order[0] == "a" and order[-1] == "d"
    for name in order:  # dependencies first
        for upstream in project.workflows[name].depends_on:
            assert order.index(upstream) < order.index(name)


def test_order_of_a_wide_graph_places_each_once(tmp_path: Path) -> None:
    edges = {"root": []}
    edges.update({f"m{i}": ["root"] + [f"m{j}" for j in range(i)] for i in range(6)})
    edges["top"] = [f"m{i}" for i in range(6)]
    order = names(graph(tmp_path, edges), "top")
    assert order == ["root"] + [f"m{i}" for i in range(6)] + ["top"]


def test_tagged_dependency_is_not_expanded(tmp_path: Path) -> None:
    project = graph(tmp_path, {"prepare": [], "train": ["prepare:best"]})
    assert names(project, "train") == ["train"]


def test_tagged_dependency_is_no_cycle(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": ["b:v1"], "b": ["a"]})
    assert names(project, "b") == ["a", "b"]


def test_unknown_target(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": [], "b": []})
    error = config_error(workflow_order, project, "trian")
    assert "no workflow named 'trian'" in str(error)
    assert "known workflows: a, b" in str(error)


def test_unknown_dependency_names_the_workflow_and_lists_known_ones(tmp_path: Path) -> None:
    project = graph(tmp_path, {"prepare": [], "train": ["prepare", "prepair"]})
    error = config_error(workflow_order, project, "train")
    assert "workflow 'train' depends on 'prepair', which is not defined" in error.message
    assert "known workflows: prepare, train" in error.message
    assert error.file == ".dstack/workflows.yaml"
    assert error.field == "workflows.train.depends-on"
    assert error.line == 4  # where train is written


def test_unknown_workflow_of_a_tagged_dependency(tmp_path: Path) -> None:
    project = graph(tmp_path, {"train": ["ghost:best"]})
    error = config_error(workflow_order, project, "train")
    assert "workflow 'train' depends on 'ghost'" in error.message


def test_unknown_dependency_deep_in_the_graph(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": ["ghost"], "b": ["a"], "c": ["b"]})
    error = config_error(workflow_order, project, "c")
    assert "workflow 'a' depends on 'ghost'" in error.message
    assert error.field == "workflows.a.depends-on"


def test_cycle_message_lists_the_cycle(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": ["c"], "b": ["a"], "c": ["b"], "start": ["a"]})
    error = config_error(workflow_order, project, "start")
    assert "dependency cycle between workflows: a -> c -> b -> a" in error.message
    assert error.file == ".dstack/workflows.yaml"
    assert error.field == "workflows.a.depends-on"
    assert "start" not in error.message  # only the cycle, not the path into it


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    project = graph(tmp_path, {"a": ["a"]})
    error = config_error(workflow_order, project, "a")
    assert "dependency cycle between workflows: a -> a" in error.message


# ----------------------------------------------------------------------------- plan_run

PIPELINE = """\
workflows:
  - name: prepare
    provider: python
    script: prepare.py
    seed: ${{ seed }}
  - name: train
    provider: python
    depends-on: [prepare, 'data:best']
    script: train.py
    epochs: ${{ epochs }}
    args: ["--epochs ${{ epochs }}", "--lr=${{lr}}", "${{ model }}"]
    options:
      verbose: ${{ verbose }}
      seed: ${{ seed }}
  - name: data
    provider: python
  - name: evaluate
    provider:
      repo: https://github.com/acme/providers.git
      name: scorer
    depends_on: [train]
    threshold: ${{ threshold }}
"""

VARIABLES = """\
variables:
  global:
    seed: 1
    lr: 0.01
  train:
    epochs: 3
    seed: 7
    model: resnet
    verbose: true
  evaluate:
    threshold: 0.9
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Project:
    return project_of(tmp_path, PIPELINE, VARIABLES)


def by_name(specs: list[WorkflowSpec]) -> dict[str, WorkflowSpec]:
    return {s.name: s for s in specs}


def test_plan_in_order_with_global_and_own_variables(pipeline: Project) -> None:
    specs = plan_run(pipeline, "evaluate")
    assert [s.name for s in specs] == ["prepare", "train", "evaluate"]
    prepare, train, evaluate = specs
    assert prepare.variables == {"seed": 1, "lr": 0.01}
    assert train.variables == {"seed": 7, "lr": 0.01, "epochs": 3, "model": "resnet", "verbose": True}
    assert evaluate.variables == {"seed": 1, "lr": 0.01, "threshold": 0.9}
    assert prepare.data == {"script": "prepare.py", "seed": 1}
    assert train.data == {"script": "train.py", "epochs": 3,
                          "args": ["--epochs 3", "--lr=0.01", "resnet"],
                          "options": {"verbose": True, "seed": 7}}
    assert evaluate.data == {"threshold": 0.9}
    for spec in specs:
        assert not {"name", "provider", "depends-on", "depends_on"} & set(spec.data)


def test_plan_does_not_change_the_project(pipeline: Project) -> None:
    plan_run(pipeline, "train", {"epochs": "100"})
    assert pipeline.workflows["train"].data["epochs"] == "${{ epochs }}"
    assert pipeline.variables["train"]["epochs"] == 3


def test_override_applies_with_its_yaml_type(pipeline: Project) -> None:
    train = by_name(plan_run(pipeline, "train", {"epochs": "100", "verbose": "false", "model": "vit"}))["train"]
    assert train.data["epochs"] == 100 and type(train.data["epochs"]) is int  # the whole value: typed
    assert train.data["args"][0] == "--epochs 100"  # inside a longer string: text
    assert train.data["args"][2] == "vit"
    assert train.data["options"]["verbose"] is False
    assert train.variables["epochs"] == 100
    assert train.variables["model"] == "vit"


def test_override_of_a_float_and_of_text(pipeline: Project) -> None:
    train = by_name(plan_run(pipeline, "train", {"lr": "0.5", "model": "resnet 50"}))["train"]
    assert train.data["args"][1] == "--lr=0.5"
    assert train.variables["lr"] == 0.5
    assert train.data["args"][2] == "resnet 50"


def test_override_applies_to_every_workflow_that_has_the_variable(pipeline: Project) -> None:
    specs = by_name(plan_run(pipeline, "train", {"seed": "42"}))
    assert specs["prepare"].data["seed"] == 42 and specs["prepare"].variables["seed"] == 42
    assert specs["train"].data["options"]["seed"] == 42 and specs["train"].variables["seed"] == 42


def test_unknown_override_refused_listing_known_ones(pipeline: Project) -> None:
    error = config_error(plan_run, pipeline, "train", {"epoch": "100"})
    assert "unknown variable --epoch " in error.message
    assert "--epochs" in error.message
    assert "known variables of this run: --epochs, --lr, --model, --seed, --verbose" in error.message
    assert error.file == ".dstack/variables.yaml"


def test_override_of_a_workflow_outside_the_run_refused(pipeline: Project) -> None:
    error = config_error(plan_run, pipeline, "train", {"threshold": "0.5"})
    assert "unknown variable --threshold" in error.message
    assert "(known variables of this run: --epochs, --lr, --model, --seed, --verbose)" in error.message
    assert plan_run(pipeline, "evaluate", {"threshold": "0.5"})[-1].data["threshold"] == 0.5


def test_override_without_any_variables(tmp_path: Path) -> None:
    project = project_of(tmp_path, "workflows:\n  - name: a\n    provider: python\n")
    error = config_error(plan_run, project, "a", {"epochs": "1"})
    assert "known variables of this run: none" in error.message


def test_placeholder_naming_no_variable_refused(pipeline: Project, tmp_path: Path) -> None:
    workflows = PIPELINE.replace("seed: ${{ seed }}\n  - name: train", "seed: ${{ sede }}\n  - name: train")
    project = project_of(tmp_path / "typo", workflows, VARIABLES)
    error = config_error(plan_run, project, "train")
    assert "${{ sede }} names no variable of workflow 'prepare'" in error.message
    assert error.file == ".dstack/workflows.yaml"
    assert error.field == "workflows.prepare.seed"
    assert error.line == 2


def test_placeholder_deep_in_a_list_names_its_field(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: w\n    provider: python\n    args: [a, 'x ${{ nope }} y']\n"
    error = config_error(plan_run, project_of(tmp_path, workflows), "w")
    assert "${{ nope }} names no variable of workflow 'w'" in error.message
    assert error.field == "workflows.w.args.1"


def test_variable_of_another_workflow_is_not_visible(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: python\n    x: ${{ epochs }}\n"
    project = project_of(tmp_path, workflows, "variables:\n  b:\n    epochs: 3\n")
    error = config_error(plan_run, project, "a")
    assert "names no variable of workflow 'a'" in error.message


def test_no_variables_file(tmp_path: Path) -> None:
    (spec,) = plan_run(project_of(tmp_path, "workflows:\n  - name: a\n    provider: python\n    x: 1\n"), "a")
    assert spec.variables == {}
    assert spec.data == {"x": 1}


def test_providers_local_and_from_another_repository(pipeline: Project) -> None:
    specs = by_name(plan_run(pipeline, "evaluate"))
    assert specs["train"].provider == PYTHON and specs["train"].provider_repo is None
    evaluate = specs["evaluate"]
    assert evaluate.provider is None
    assert evaluate.provider_repo == ProviderRepo(url="https://github.com/acme/providers.git", name="scorer")


def test_unknown_provider_refused(tmp_path: Path) -> None:
    project = project_of(tmp_path, "workflows:\n  - name: a\n    provider: pyhton\n")
    error = config_error(plan_run, project, "a")
    assert "provider 'pyhton'" in error.message


def test_depends_on_and_tagged_split(pipeline: Project) -> None:
    specs = by_name(plan_run(pipeline, "evaluate"))
    assert specs["train"].depends_on == ["prepare"]
    assert specs["train"].tagged == [TagRef(workflow="data", tag="best")]
    assert "data" not in specs  # a tagged workflow comes from the tagged run, it is not run again
    assert specs["evaluate"].depends_on == ["train"] and specs["evaluate"].tagged == []
    assert specs["prepare"].depends_on == [] and specs["prepare"].tagged == []


def test_plan_is_a_valid_submission(pipeline: Project) -> None:
    specs = plan_run(pipeline, "evaluate", {"epochs": "100"})
    submit = SubmitRun(run_name="r", workflow="evaluate", workflows=specs, snapshot_id="s", submitted_at=1.0)
    assert decode(encode(submit), SubmitRun) == submit


# ----------------------------------------------------------------------------- early dstack's spellings

HYPHENATED = """\
workflows:
  - name: train
    provider: python
    help: Trains the model
    args: ["--batch-size", "${{ batch-size }}", "--log ${{log-interval}}"]
    size: ${{ batch-size }}
"""


def test_hyphenated_variables_substitute_and_override(tmp_path: Path) -> None:
    project = project_of(tmp_path, HYPHENATED, "variables:\n  train:\n    batch-size: 64\n    log-interval: 10\n")
    (spec,) = plan_run(project, "train")
    assert spec.data == {"args": ["--batch-size", 64, "--log 10"], "size": 64}  # help is no parameter
    assert spec.variables == {"batch-size": 64, "log-interval": 10}
    (spec,) = plan_run(project, "train", parse_overrides(["--batch-size", "128"]))
    assert spec.data["size"] == 128 and spec.variables["batch-size"] == 128


def test_hyphenated_variables_reach_jobs_as_shell_names() -> None:
    from dstack.names import env_name
    from dstack.scheduler.flow import env_of
    assert env_of({"batch-size": 64, "log-interval": 10, "lr": 0.1}) == {
        "BATCH_SIZE": "64", "LOG_INTERVAL": "10", "LR": "0.1"}
    assert all(env_name(n) in env_of({n: 1}) for n in ("batch-size", "a-b_c", "x"))


def test_two_variables_of_one_env_name_with_different_values_refused(tmp_path: Path) -> None:
    variables = "variables:\n  global:\n    batch_size: 32\n  train:\n    lr: 1\n    batch-size: 64\n"
    error = config_error(plan_run, project_of(tmp_path, HYPHENATED, variables), "train")
    assert "variables 'batch_size' and 'batch-size' of workflow 'train' both reach the jobs as $BATCH_SIZE" \
        in error.message
    assert "rename or remove one of them" in error.message
    assert error.file == ".dstack/variables.yaml"
    assert error.line == 6 and error.field == "variables.train.batch-size"


def test_two_variables_of_one_env_name_with_the_same_value_accepted(tmp_path: Path) -> None:
    variables = "variables:\n  train:\n    batch_size: 64\n    batch-size: 64\n    log-interval: 1\n"
    (spec,) = plan_run(project_of(tmp_path, HYPHENATED, variables), "train")
    assert spec.data["size"] == 64


def test_an_override_that_splits_one_env_name_refused(tmp_path: Path) -> None:
    variables = "variables:\n  train:\n    batch_size: 64\n    batch-size: 64\n    log-interval: 1\n"
    error = config_error(plan_run, project_of(tmp_path, HYPHENATED, variables), "train", {"batch-size": "8"})
    assert "both reach the jobs as $BATCH_SIZE, with different values (64, 8)" in error.message


IMAGE_ONLY = """\
workflows:
  - name: prepare
    image: python:3.11
    commands: ["mkdir -p data", "echo ${{ rows }} > data/rows.txt"]
    artifacts: [data]
    environment: {A: "1"}
    working_dir: src
    resources: {cpu: 1}
  - name: train
    image: python:3.11
    depends-on: [prepare, {prepare: golden}]
    commands: [cat data/rows.txt]
"""


def test_image_without_provider_plans_as_builtin_docker(tmp_path: Path) -> None:
    project = project_of(tmp_path, IMAGE_ONLY, "variables:\n  global:\n    rows: 3\n")
    prepare, train = plan_run(project, "train")
    assert prepare.provider is not None and prepare.provider.builtin and prepare.provider.name == "docker"
    assert prepare.data == {"image": "python:3.11", "commands": ["mkdir -p data", "echo 3 > data/rows.txt"],
                            "artifacts": ["data"], "environment": {"A": "1"}, "working_dir": "src",
                            "resources": {"cpu": 1}}
    assert train.depends_on == ["prepare"] and train.tagged == [TagRef(workflow="prepare", tag="golden")]


def test_image_without_provider_is_checked_as_docker(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: w\n    image: python:3.11\n    commands: [x]\n    script: a.py\n"
    error = config_error(plan_run, project_of(tmp_path, workflows), "w")
    assert "provider docker (what a workflow with an image and no provider runs as)" in error.message
    assert "has no parameter 'script'" in error.message
    assert error.line == 5 and error.field == "workflows.w.script"


def test_neither_provider_nor_image_is_still_refused(tmp_path: Path) -> None:
    error = config_error(project_of, tmp_path, "workflows:\n  - name: w\n    commands: [x]\n")
    assert error.message == "'provider' is required here"
    assert error.field == "workflows[0].provider" and error.line == 2
