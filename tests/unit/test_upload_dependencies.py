"""``depends-on: [:NAME]``: every artifact of the run tagged NAME (local data stored by `dstack artifacts
upload`, or any tagged run), in the project files and in the plan of a run."""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.errors import ConfigError
from dstack.messages import TagRef
from dstack.planning import plan_run, workflow_order
from dstack.project import load_project

PROVIDERS = """\
providers:
  - name: python
    image: python:3.11-slim
    commands: [python3 providers/python/main.py]
"""


def project(root: Path, depends_on: str) -> Path:
    (root / ".dstack").mkdir(parents=True)
    (root / ".dstack" / "providers.yaml").write_text(PROVIDERS)
    (root / ".dstack" / "workflows.yaml").write_text(f"""\
workflows:
  - name: prepare
    provider: python
  - name: train
    provider: python
    depends-on: {depends_on}
""")
    return root


def test_a_colon_tag_names_the_whole_tagged_run_and_no_workflow(tmp_path: Path) -> None:
    loaded = load_project(project(tmp_path, '[:dataset, prepare, "prepare:golden"]'))
    assert loaded.workflows["train"].depends_on == [":dataset", "prepare", "prepare:golden"]
    assert [w.name for w in workflow_order(loaded, "train")] == ["prepare", "train"]
    specs = {spec.name: spec for spec in plan_run(loaded, "train")}
    assert specs["train"].depends_on == ["prepare"]
    assert specs["train"].tagged == [TagRef(workflow="", tag="dataset"), TagRef(workflow="prepare", tag="golden")]


def test_a_colon_tag_alone_runs_only_its_workflow(tmp_path: Path) -> None:
    loaded = load_project(project(tmp_path, '[:my-data.v2]'))
    (spec,) = plan_run(loaded, "train")
    assert spec.tagged == [TagRef(workflow="", tag="my-data.v2")] and spec.depends_on == []


@pytest.mark.parametrize("entry", ['":"', '"::data"', '":-data"', '":da ta"'])
def test_a_malformed_colon_entry_is_refused_with_its_line(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_project(project(tmp_path, f"[{entry}]"))
    assert "depends-on" in str(info.value) and "workflows.yaml" in str(info.value)
