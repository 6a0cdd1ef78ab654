"""The CLI's record of documents that passed their schema (``dstack/validated.py``): a document known valid
is not checked again, one that fails is never remembered, and a changed document or schema is checked."""
from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack import validated
from dstack.errors import ConfigError
from dstack.project import load_project


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home" / validated.FILE
    validated.remember_in(path)
    yield path
    validated.remember_in(None)


def test_nothing_is_remembered_without_a_file() -> None:
    validated.remember_in(None)
    validated.remember_valid("workflows", {"workflows": []})
    assert not validated.is_known_valid("workflows", {"workflows": []})


def test_a_remembered_document_is_known_across_commands(record: Path) -> None:
    validated.remember_valid("workflows", {"workflows": [{"name": "a"}]})
    validated.remember_in(record)  # as the next command starts: read from the file
    assert validated.is_known_valid("workflows", {"workflows": [{"name": "a"}]})
    assert not validated.is_known_valid("workflows", {"workflows": [{"name": "b"}]})
    assert not validated.is_known_valid("providers", {"workflows": [{"name": "a"}]})  # another schema


def test_a_value_without_a_json_form_keeps_its_type(record: Path) -> None:
    validated.remember_valid("variables", {"when": "2020-01-01"})
    assert not validated.is_known_valid("variables", {"when": datetime.date(2020, 1, 1)})


def test_the_record_is_trimmed(record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validated, "KEEP", 3)
    for i in range(10):
        validated.remember_valid("workflows", {"i": i})
    assert len(record.read_text().split()) <= 2 * 3 + 1
    validated.remember_in(record)
    assert validated.is_known_valid("workflows", {"i": 9})


def write(root: Path, workflows: str) -> None:
    (root / ".dstack").mkdir(parents=True, exist_ok=True)
    (root / ".dstack" / "workflows.yaml").write_text(textwrap.dedent(workflows))


def test_a_project_is_checked_until_it_passes_and_after_each_change(record: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    write(root, """\
        workflows:
          - provider: bash
            commands: [echo hi]
        """)
    for _ in range(2):  # a failure is never remembered: the error comes every time
        with pytest.raises(ConfigError, match="'name' is required"):
            load_project(root)
    write(root, """\
        workflows:
          - name: hello
            provider: bash
            commands: [echo hi]
        """)
    load_project(root)
    assert len(record.read_text().split()) == 1
    load_project(root)
    assert len(record.read_text().split()) == 1  # known: not checked, not recorded again


def test_an_unchanged_project_loads_without_jsonschema(tmp_path: Path) -> None:
    root = tmp_path / "project"
    write(root, """\
        workflows:
          - name: hello
            provider: bash
            commands: [echo hi]
        """)
    code = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from dstack import validated
        from dstack.planning import plan_run
        from dstack.project import load_project
        validated.remember_in(Path({str(tmp_path / 'home' / validated.FILE)!r}))
        plan_run(load_project(Path({str(root)!r})), "hello", {{}}, [])
        print("jsonschema" in sys.modules)
        """)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)]
    assert runs == ["True", "False"]
