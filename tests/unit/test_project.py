"""dstack.project: loading and validating a project's .dstack/ files; errors name file, line and field."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from dstack.errors import ConfigError
from dstack.located_yaml import field_path
from dstack.messages import ProviderRepo, ProviderSpec
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


@pytest.mark.parametrize("entry", ["'a b'", "'a:'", "':tag'", "'a:b:c'", "7"])
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
    error = load_error(write_project(tmp_path, workflows=None))
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
