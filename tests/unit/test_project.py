"""dstack.project: loading and validating a project's .dstack/ files; errors name file, line and field."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from dstack.errors import ConfigError
from dstack.located_yaml import field_path
from dstack.messages import ProviderRepo, ProviderSpec, RegistryAuth
from dstack.project import SYSTEM_KEYS, Project, Workflow, find_root, load_project

WORKFLOWS = """\
workflows:
  - name: download
    provider: curl
    url: https://example.com/data.csv
    output: data
  - name: train
    provider: python
    depends_on: [download]
    resources:
      gpu: 1
      memory: 16GB
"""

PROVIDERS = """\
providers:
  - name: curl
    image: curlimages/curl
    commands: ["python3 providers/curl/main.py"]
  - name: python
    image: python:3.11-slim
    commands:
      - pip install -q pyyaml
      - python3 providers/python/main.py
"""

VARIABLES = """\
variables:
  train:
    epochs: 3
    lr: 0.01
    verbose: true
    model: resnet
"""


def write_project(root: Path, workflows: Optional[str] = WORKFLOWS, providers: Optional[str] = PROVIDERS,
                  variables: Optional[str] = None) -> Path:
    folder = root / ".dstack"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("workflows", workflows), ("providers", providers), ("variables", variables)):
        if text is not None:
            (folder / f"{name}.yaml").write_text(text)
    return root


def load_error(root: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_project(root)
    return info.value


# ----------------------------------------------------------------------------- valid


def test_load_valid_project(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path, variables=VARIABLES))
    assert project.root == tmp_path
    assert list(project.workflows) == ["download", "train"]
    download = project.workflows["download"]
    assert download.name == "download"
    assert download.provider == "curl"
    assert download.data == {"url": "https://example.com/data.csv", "output": "data"}
    assert download.line == 2
    train = project.workflows["train"]
    assert train.data == {"resources": {"gpu": 1, "memory": "16GB"}}  # depends_on is a system key now
    assert train.depends_on == ["download"]
    assert download.depends_on == []
    assert train.line == 6
    for workflow in project.workflows.values():
        assert not set(SYSTEM_KEYS) & set(workflow.data)
    assert project.providers == {
        "curl": ProviderSpec(name="curl", image="curlimages/curl", commands=["python3 providers/curl/main.py"]),
        "python": ProviderSpec(name="python", image="python:3.11-slim",
                               commands=["pip install -q pyyaml", "python3 providers/python/main.py"]),
    }
    assert project.variables == {"train": {"epochs": 3, "lr": 0.01, "verbose": True, "model": "resnet"}}


def test_loaded_data_is_plain(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    data = project.workflows["train"].data
    assert type(data) is dict
    assert type(project.workflows["train"].depends_on) is list
    assert type(data["resources"]) is dict
    assert type(project.workflows["train"].provider) is str


def test_variables_optional(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    assert project.variables == {}


def test_empty_variables_file(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path, variables=""))
    assert project.variables == {}


def test_no_workflows_at_all(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path, workflows="workflows: []\n"))
    assert project.workflows == {}
    with pytest.raises(ConfigError, match=r"known workflows: none"):
        project.workflow("train")


def test_workflow_lookup(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    assert project.workflow("train") is project.workflows["train"]
    assert project.provider_for(project.workflow("train")).image == "python:3.11-slim"


# ----------------------------------------------------------------------------- lookups refused


def test_unknown_workflow_lists_known_ones(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    with pytest.raises(ConfigError) as info:
        project.workflow("trian")
    assert "no workflow named 'trian'" in str(info.value)
    assert "known workflows: download, train" in str(info.value)
    assert info.value.file == ".dstack/workflows.yaml"


def test_unknown_provider_lists_known_ones(tmp_path: Path) -> None:
    workflows = WORKFLOWS + "  - name: broken\n    provider: pyhton\n"
    project = load_project(write_project(tmp_path, workflows=workflows))
    with pytest.raises(ConfigError) as info:
        project.provider_for(project.workflow("broken"))
    error = info.value
    assert "provider 'pyhton'" in str(error)
    assert "the project's providers: curl, python" in str(error)
    assert "neither built in (bash, curl, docker, python, tensorboard, torchrun)" in str(error)
    assert error.file == ".dstack/workflows.yaml"
    assert error.line == 13  # the line of its provider key
    assert error.field == "workflows.broken.provider"


def test_provider_from_another_repo(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: w\n    provider:\n      repo: github.com/x/y\n      name: p\n"
    project = load_project(write_project(tmp_path, workflows=workflows))
    assert project.workflow("w").provider == {"repo": "github.com/x/y", "name": "p"}
    assert project.workflow("w").data == {}
    # not looked up in this project's providers: the worker fetches it from the repository
    assert project.provider_for(project.workflow("w")) == ProviderRepo(url="github.com/x/y", name="p")


@pytest.mark.parametrize("provider,field", [
    ("{repo: github.com/x/y}", "workflows[0].provider"),
    ("{repo: '', name: p}", "workflows[0].provider"),
    ("{repo: github.com/x/y, name: 'a b'}", "workflows[0].provider"),
    ("{repo: github.com/x/y, name: p, ref: main}", "workflows[0].provider"),
])
def test_provider_from_another_repo_shape_refused(tmp_path: Path, provider: str, field: str) -> None:
    error = load_error(write_project(tmp_path, workflows=f"workflows:\n  - name: w\n    provider: {provider}\n"))
    assert error.file == ".dstack/workflows.yaml"
    assert error.field is not None and error.field.startswith(field)
    assert error.line == 3


# ----------------------------------------------------------------------------- depends-on


@pytest.mark.parametrize("key", ["depends-on", "depends_on"])
def test_depends_on_both_spellings(tmp_path: Path, key: str) -> None:
    workflows = ("workflows:\n  - name: a\n    provider: curl\n"
                 f"  - name: b\n    provider: curl\n    {key}: [a, 'data:best']\n    epochs: 3\n")
    project = load_project(write_project(tmp_path, workflows=workflows))
    assert project.workflows["b"].depends_on == ["a", "data:best"]
    assert project.workflows["b"].data == {"epochs": 3}
    assert project.workflows["a"].depends_on == []


def test_depends_on_both_spellings_at_once_refused(tmp_path: Path) -> None:
    workflows = ("workflows:\n  - name: a\n    provider: curl\n"
                 "  - name: b\n    provider: curl\n    depends-on: [a]\n    depends_on: [a]\n")
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert "depends-on or depends_on, not both" in error.message
    assert error.file == ".dstack/workflows.yaml"
    assert error.line == 4
    assert error.field == "workflows[1]"


@pytest.mark.parametrize("entry", ["'a b'", "'a:'", "'::tag'", "'a:b:c'", "7"])
def test_depends_on_bad_entry_refused(tmp_path: Path, entry: str) -> None:
    workflows = f"workflows:\n  - name: b\n    provider: curl\n    depends-on: [{entry}]\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert error.file == ".dstack/workflows.yaml"
    assert error.field == "workflows[0].depends-on[0]"
    assert error.line == 4


def test_depends_on_not_a_list_refused(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: b\n    provider: curl\n    depends_on: a\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert error.field == "workflows[0].depends_on"
    assert "not of type 'array'" in error.message


# ----------------------------------------------------------------------------- files refused


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows:\n  - name: a\n   provider: p\n"))
    assert error.file == ".dstack/workflows.yaml"
    assert error.line == 3
    assert "not valid YAML" in str(error)
    assert str(error).startswith(".dstack/workflows.yaml:3: ")


def test_yaml_syntax_error_in_providers(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, providers="providers:\n  - name: p\n    image: {oops\n"))
    assert error.file == ".dstack/providers.yaml"
    assert error.line is not None and error.line >= 3


def test_missing_required_key_names_field_and_line(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: curl\n  - name: b\n    url: x\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert error.message == "'provider' is required here"
    assert error.field == "workflows[1].provider"
    assert error.line == 4
    assert error.file == ".dstack/workflows.yaml"
    assert str(error) == ".dstack/workflows.yaml:4 (workflows[1].provider): 'provider' is required here"


def test_missing_required_provider_key(tmp_path: Path) -> None:
    providers = "providers:\n  - name: p\n    commands: [run]\n"
    error = load_error(write_project(tmp_path, workflows="workflows: []\n", providers=providers))
    assert error.file == ".dstack/providers.yaml"
    assert error.field == "providers[0].image"
    assert error.line == 2


def test_missing_top_key(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="flows: []\n"))
    assert error.file == ".dstack/workflows.yaml"
    assert "workflows" in str(error)


def test_empty_workflows_file(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows=""))
    assert error.field == "workflows"


def test_wrong_type_names_field_and_line(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows:\n  - name: 7\n    provider: curl\n"))
    assert "7 is not of type 'string'" in error.message
    assert error.field == "workflows[0].name"
    assert error.line == 2


def test_wrong_type_deeper_line(tmp_path: Path) -> None:
    providers = "providers:\n  - name: p\n    image: img\n    commands: run\n"
    error = load_error(write_project(tmp_path, workflows="workflows: []\n", providers=providers))
    assert "'run' is not of type 'array'" in error.message
    assert error.field == "providers[0].commands"
    assert error.line == 4


def test_wrong_provider_type(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows:\n  - name: a\n    provider: 5\n"))
    assert error.field == "workflows[0].provider"
    assert error.line == 3


def test_bad_workflow_name(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows:\n  - name: my workflow\n    provider: p\n"))
    assert error.field == "workflows[0].name"
    assert error.line == 2


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows: []\nworkflow: []\n"))
    assert "'workflow' was unexpected" in error.message
    assert "check its spelling" in error.message


def test_duplicate_workflow(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: curl\n  - name: a\n    provider: python\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert error.message == "workflow 'a' is defined twice"
    assert error.file == ".dstack/workflows.yaml"
    assert error.line == 4
    assert error.field == "workflows[1].name"


def test_duplicate_provider(tmp_path: Path) -> None:
    providers = PROVIDERS + "  - name: curl\n    image: other\n    commands: [x]\n"
    error = load_error(write_project(tmp_path, providers=providers))
    assert error.message == "provider 'curl' is defined twice"
    assert error.file == ".dstack/providers.yaml"
    assert error.line == 10
    assert error.field == "providers[2].name"


def test_providers_file_is_optional_with_built_in_providers(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path, providers=None))
    assert project.providers == {}
    with pytest.raises(ConfigError, match="neither built in"):
        project.provider_for(Workflow(name="b", provider="pyhton", data={}))
    assert project.provider_for(Workflow(name="b", provider="bash", data={})).builtin
    assert project.provider_for(project.workflows["download"]).builtin  # curl is built in too


def test_a_project_provider_hides_a_built_in_one(tmp_path: Path) -> None:
    project = load_project(write_project(tmp_path))
    curl = project.provider_for(project.workflows["download"])
    assert not curl.builtin and curl.image == "curlimages/curl"


def test_missing_workflows_file(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, workflows=None, providers=None))
    assert error.file == ".dstack/workflows.yaml"
    assert "missing" in error.message


def test_variables_shape_error(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, variables="variables: [1, 2]\n"))
    assert error.file == ".dstack/variables.yaml"
    assert error.field == "variables"
    assert "not of type 'object'" in error.message
    assert error.line == 1


def test_variables_value_shape_error(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, variables="variables:\n  train:\n    epochs: 3\n    lr: [1]\n"))
    assert error.file == ".dstack/variables.yaml"
    assert error.field == "variables.train.lr"
    assert error.line == 4


def test_variables_unknown_top_key(tmp_path: Path) -> None:
    error = load_error(write_project(tmp_path, variables="vars:\n  a: {}\n"))
    assert error.file == ".dstack/variables.yaml"
    assert "'vars' was unexpected" in error.message


def test_unreadable_file(tmp_path: Path) -> None:
    write_project(tmp_path)
    (tmp_path / ".dstack" / "workflows.yaml").write_bytes(b"workflows:\n  - name: \xff\xfe\n")
    error = load_error(tmp_path)
    assert error.file == ".dstack/workflows.yaml"


# ----------------------------------------------------------------------------- find_root


def test_find_root_walks_up(tmp_path: Path) -> None:
    write_project(tmp_path)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_root(deep) == tmp_path
    assert find_root(tmp_path) == tmp_path


def test_find_root_nearest_wins(tmp_path: Path) -> None:
    write_project(tmp_path)
    inner = write_project(tmp_path / "sub")
    (inner / "x").mkdir()
    assert find_root(inner / "x") == inner


def test_find_root_ignores_dstack_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".dstack").write_text("not a folder")
    write_project(tmp_path)
    assert find_root(tmp_path / "a") == tmp_path


def test_find_root_none(tmp_path: Path) -> None:
    start = tmp_path / "nowhere"
    start.mkdir()
    if any((p / ".dstack").is_dir() for p in (start, *start.parents)):
        pytest.skip("a folder above the temporary folder holds .dstack/")
    with pytest.raises(ConfigError, match=r"no \.dstack/ folder"):
        find_root(start)


def test_field_path() -> None:
    assert field_path(["workflows", 0, "name"]) == "workflows[0].name"
    assert field_path([]) == ""
    assert field_path(["variables", "a", "b"]) == "variables.a.b"


def test_project_dataclass_defaults(tmp_path: Path) -> None:
    project = Project(root=tmp_path)
    project.workflows["w"] = Workflow(name="w", provider="nope", data={})
    with pytest.raises(ConfigError, match="the project's providers: none"):
        project.provider_for(project.workflow("w"))


# ----------------------------------------------------------------------------- early dstack's spellings


def test_help_is_a_description_not_data(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: curl\n    help: Downloads the data\n    url: x\n"
    workflow = load_project(write_project(tmp_path, workflows=workflows)).workflow("a")
    assert workflow.help == "Downloads the data"
    assert workflow.data == {"url": "x"}  # never reaches the provider


def test_help_must_be_text(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: curl\n    help: [one, two]\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert error.field == "workflows[0].help" and error.line == 4
    assert "is not of type 'string'" in error.message


def test_image_without_provider_runs_as_builtin_docker(tmp_path: Path) -> None:
    workflows = ("workflows:\n  - name: a\n    image: python:3.11\n    commands: [echo hi]\n"
                 "    artifacts: [out]\n    depends-on: [b]\n  - name: b\n    provider: curl\n")
    # a project's own provider called docker does not capture it: the oldest format meant an image
    providers = PROVIDERS + "  - name: docker\n    image: mine\n    commands: [run]\n"
    project = load_project(write_project(tmp_path, workflows=workflows, providers=providers))
    workflow = project.workflow("a")
    assert workflow.image_only and workflow.provider == "docker"
    assert workflow.data == {"image": "python:3.11", "commands": ["echo hi"], "artifacts": ["out"]}
    assert workflow.depends_on == ["b"]
    spec = project.provider_for(workflow)
    assert isinstance(spec, ProviderSpec) and spec.builtin and spec.name == "docker"
    assert not project.workflow("b").image_only


def test_image_with_provider_is_the_providers_parameter(tmp_path: Path) -> None:
    workflows = "workflows:\n  - name: a\n    provider: curl\n    image: x\n"
    workflow = load_project(write_project(tmp_path, workflows=workflows)).workflow("a")
    assert not workflow.image_only and workflow.provider == "curl" and workflow.data == {"image": "x"}


def test_depends_on_one_key_map_is_workflow_colon_tag(tmp_path: Path) -> None:
    workflows = ("workflows:\n  - name: a\n    provider: curl\n"
                 "  - name: b\n    provider: curl\n    depends-on:\n      - a\n      - a: best\n      - 'a:v2'\n")
    project = load_project(write_project(tmp_path, workflows=workflows))
    assert project.workflow("b").depends_on == ["a", "a:best", "a:v2"]


@pytest.mark.parametrize("entry,what", [
    ("{a: best, c: other}", "not one WORKFLOW: TAG"),
    ("{a: 1}", "not one WORKFLOW: TAG"),
    ("{a: {x: y}}", "not one WORKFLOW: TAG"),
    ("{a: null}", "not one WORKFLOW: TAG"),
    ("{'a b': best}", "'a b:best' is not in the expected form"),
    ("{a: 'b:c'}", "'a:b:c' is not in the expected form"),
])
def test_depends_on_map_that_is_not_one_workflow_and_tag_refused(tmp_path: Path, entry: str, what: str) -> None:
    workflows = f"workflows:\n  - name: b\n    provider: curl\n    depends_on:\n      - a\n      - {entry}\n"
    error = load_error(write_project(tmp_path, workflows=workflows))
    assert what in error.message
    assert "write it as 'WORKFLOW:TAG'" in error.message or "write 'WORKFLOW:TAG'" in error.message
    assert error.file == ".dstack/workflows.yaml"
    assert error.field == "workflows[0].depends_on[1]"
    assert error.line == 6


def test_variable_lines_are_kept(tmp_path: Path) -> None:
    variables = "variables:\n  global:\n    seed: 1\n  train:\n    batch-size: 64\n    lr: 0.1\n"
    project = load_project(write_project(tmp_path, variables=variables))
    assert project.variables == {"global": {"seed": 1}, "train": {"batch-size": 64, "lr": 0.1}}
    assert project.variable_lines == {"global": {"seed": 3}, "train": {"batch-size": 5, "lr": 6}}


# ----------------------------------------------------------------------------- as the CLI shows them


def test_dstack_workflows_lists_name_provider_and_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dstack.cli.main import cli
    workflows = ("workflows:\n  - name: a\n    provider: curl\n    help: Gets [the] data\n"
                 "  - name: b\n    image: python:3.11\n    depends-on: [{a: best}]\n"
                 "  - name: c\n    provider: {repo: github.com/x/y, name: p}\n")
    monkeypatch.chdir(write_project(tmp_path, workflows=workflows))
    table = CliRunner().invoke(cli, ["workflows"])
    assert table.exit_code == 0, table.output
    lines = [line.split() for line in table.output.splitlines()]
    assert lines[0] == ["NAME", "PROVIDER", "HELP"]
    assert lines[1] == ["a", "curl", "Gets", "[the]", "data"]  # the user's brackets are no markup
    assert lines[2] == ["b", "docker"] and lines[3] == ["c", "p", "(github.com/x/y)"]
    listing = CliRunner().invoke(cli, ["workflows", "--json"])
    import json
    assert json.loads(listing.output) == [
        {"name": "a", "provider": "curl", "provider_repo": None, "help": "Gets [the] data", "depends_on": []},
        {"name": "b", "provider": "docker", "provider_repo": None, "help": "", "depends_on": ["a:best"]},
        {"name": "c", "provider": "p", "provider_repo": "github.com/x/y", "help": "", "depends_on": []}]


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--epochs", "3", "-h"], ["--epochs=3", "--help"]])
def test_run_workflow_help_describes_it_without_submitting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           args: list[str]) -> None:
    from click.testing import CliRunner

    from dstack.cli.main import cli
    workflows = ("workflows:\n  - name: train\n    provider: python\n    help: Trains the model\n"
                 "    file: train.py\n    depends-on: [prep]\n  - name: prep\n    image: python:3.11\n")
    variables = "variables:\n  global:\n    seed: 1\n  train:\n    batch-size: 64\n"
    monkeypatch.chdir(write_project(tmp_path, workflows=workflows, providers=None, variables=variables))
    monkeypatch.setenv("DSTACK_BROKER_URL", "amqp://nobody@127.0.0.1:1/")  # reached: the test would fail
    result = CliRunner().invoke(cli, ["run", "train", *args])
    assert result.exit_code == 0, result.output
    assert "Workflow train, provider python." in result.output
    assert "Trains the model" in result.output and "Depends on: prep" in result.output
    assert "file: train.py" in result.output
    assert "--batch-size 64  $BATCH_SIZE  (variables.train)" in result.output
    assert "--seed 1" in result.output and "$SEED" in result.output


def test_help_as_a_variables_value_is_no_help_request() -> None:
    from dstack.cli.workflows import asks_help
    assert not asks_help(["--message", "--help"]) and not asks_help(["--message=x"])
    assert asks_help(["--message", "x", "-h"]) and asks_help(["--detach", "--help"])


# ----------------------------------------------------------------------------- images


def test_registry_auth_and_pull_policy_are_the_workflows_not_the_providers(tmp_path: Path) -> None:
    workflows = ("workflows:\n  - name: w\n    provider: docker\n    image: r.example.com/t:1\n"
                 "    pull_policy: always\n"
                 "    registry_auth: {username: ci, password: '${{ secrets.REGISTRY_TOKEN }}'}\n")
    workflow = load_project(write_project(tmp_path, workflows=workflows)).workflows["w"]
    assert workflow.pull_policy == "always" and workflow.data == {"image": "r.example.com/t:1"}
    assert workflow.registry_auth == RegistryAuth(username="ci", password="${{ secrets.REGISTRY_TOKEN }}")


@pytest.mark.parametrize("lines,field", [
    ("    pull_policy: sometimes\n", "workflows[0].pull_policy"),
    ("    registry_auth: {username: ci}\n", "workflows[0].registry_auth"),
    ("    registry_auth: {username: ci, password: p, token: t}\n", "workflows[0].registry_auth"),
])
def test_wrong_image_keys_are_named_with_their_line(tmp_path: Path, lines: str, field: str) -> None:
    error = load_error(write_project(tmp_path, workflows="workflows:\n  - name: w\n    provider: docker\n"
                                                         "    image: python:3.11\n" + lines))
    assert error.file == ".dstack/workflows.yaml" and error.line == 5
    assert error.field is not None and error.field.startswith(field)
