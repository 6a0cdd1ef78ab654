"""docs/providers/*.md are generated from the built-in providers' schemas (``python -m dstack.providers.docs``):
the committed pages must be what the schemas give, and the schemas must document every parameter and
hold examples that are valid."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dstack import builtin_providers
from dstack.providers import docs

NAMES = builtin_providers.names()
REGENERATE = "run `python -m dstack.providers.docs` to regenerate docs/providers/"

# The keywords of JSON Schema draft 7 (and the annotations the schemas use). A key that is none of
# these is most likely a YAML slip: in a flow mapping, `{description: a, e.g. b}` ends the
# description at the comma and makes `e.g. b` a key of its own.
KEYWORDS = {
    "$schema", "$id", "$ref", "$comment", "title", "description", "default", "examples", "readOnly", "writeOnly",
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "contentMediaType", "contentEncoding", "items",
    "additionalItems", "maxItems", "minItems", "uniqueItems", "contains", "maxProperties", "minProperties",
    "required", "properties", "patternProperties", "additionalProperties", "dependencies", "propertyNames",
    "if", "then", "else", "allOf", "anyOf", "oneOf", "not", "definitions",
    "x-alias-of", "x-name",  # an older name of a parameter; the name a pattern's parameters are shown by
}


def _properties(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every parameter of a schema, nested ones included (``resources.gpu.count``), with its schema."""
    for key, prop in (node.get("properties") or {}).items():
        yield prefix + key, prop
        for form in [prop] + list(prop.get("oneOf") or prop.get("anyOf") or []):
            if isinstance(form.get("properties"), dict):
                yield from _properties(form, f"{prefix}{key}.")


def _subschemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object inside ``node`` (not the values of ``examples``, ``default`` or ``enum``)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key, value in node.items():
        if key in ("properties", "definitions", "patternProperties"):
            for name, sub in value.items():
                yield from _subschemas(sub, f"{path}.{name}".lstrip("."))
        elif key in ("items", "additionalProperties", "additionalItems", "contains", "propertyNames", "not", "if",
                     "then", "else"):
            yield from _subschemas(value, path)
        elif key in ("allOf", "anyOf", "oneOf"):
            for sub in value:
                yield from _subschemas(sub, path)


# --------------------------------------------------------------------------- the committed pages


@pytest.mark.parametrize("name", NAMES)
def test_provider_page_is_up_to_date(name: str) -> None:
    path = docs.DOCS_DIR / f"{name}.md"
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == docs.render(name), f"{path} is stale: {REGENERATE}"


def test_index_is_up_to_date() -> None:
    path = docs.DOCS_DIR / "README.md"
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == docs.render_index(), f"{path} is stale: {REGENERATE}"


def test_check_passes_on_the_committed_pages() -> None:
    assert docs.stale_pages() == [], REGENERATE
    assert docs.main(["--check"]) == 0


def test_check_names_stale_missing_and_extra_pages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert docs.write_pages(tmp_path) == ["README.md"] + [f"{n}.md" for n in NAMES]
    assert docs.stale_pages(tmp_path) == [] and docs.write_pages(tmp_path) == []
    (tmp_path / "python.md").write_text("edited by hand\n")
    (tmp_path / "bash.md").unlink()
    (tmp_path / "gone.md").write_text("a provider that is no more\n")
    assert docs.stale_pages(tmp_path) == ["bash.md", "python.md", "gone.md"]


# --------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_has_a_description(name: str) -> None:
    undocumented = [path for path, prop in _properties(builtin_providers.schema(name))
                    if not str(prop.get("description") or "").strip()]
    assert not undocumented, f"providers/{name}/schema.yaml: no description for {', '.join(undocumented)}"
    description = str(builtin_providers.schema(name).get("description") or "").strip()
    assert description, f"providers/{name}/schema.yaml: no description"


@pytest.mark.parametrize("name", NAMES)
def test_schema_has_only_json_schema_keywords(name: str) -> None:
    strays = [f"{path or '(top)'}: {key!r}" for path, node in _subschemas(builtin_providers.schema(name))
              for key in node if key not in KEYWORDS]
    assert not strays, (f"providers/{name}/schema.yaml (or common.yaml) has keys that are not JSON Schema keywords, "
                        f"likely a description cut at a comma in a flow mapping (quote it): {'; '.join(strays)}")


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_valid(name: str) -> None:
    examples = builtin_providers.schema(name).get("examples")
    assert isinstance(examples, list) and examples, f"providers/{name}/schema.yaml has no examples"
    for number, example in enumerate(examples, 1):
        problem = builtin_providers.parameter_problem(name, example)
        assert problem is None, f"providers/{name}/schema.yaml, example {number}: {problem}"


# --------------------------------------------------------------------------- what the pages say


def test_python_table_lists_its_parameters() -> None:
    page = docs.render("python")
    table = page.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    for row in ("file", "args", "requirements", "version", "resources.gpu.count"):
        assert f"| `{row}` |" in table, row
    assert "| `file` | yes | string |" in table
    assert "| `resources.memory` | no | integer or string |" in table
    assert "| `artifacts` | no | array of string |" in table
    assert "| `resources.gpu` | no | integer or object |" in table


def test_page_parts() -> None:
    page = docs.render("torchrun")
    assert page.startswith("# torchrun\n\n")
    assert "`dstack/providers/torchrun/schema.yaml` by `python -m dstack.providers.docs`" in page
    assert "Default: `1`." in page  # nodes
    assert "```yaml\nworkflows:\n  - name: torchrun-example\n    provider: torchrun\n    file: train.py\n" in page
    assert "```text\nusage: dstack run torchrun" in page
    assert page.index("## Parameters") < page.index("## Examples") < page.index("## Command line")


def test_pipes_in_cells_are_escaped() -> None:
    assert docs._cell("a | b") == "a \\| b"


def test_types() -> None:
    assert docs.type_name({"type": "array", "items": {"type": "string"}}) == "array of string"
    assert docs.type_name({"oneOf": [{"type": "integer"}, {"type": "string"}]}) == "integer or string"
    assert docs.type_name({"type": ["string", "null"]}) == "string or null"
    assert docs.type_name({"type": "object", "additionalProperties": {"type": "string"}}) == "object"


def test_help_is_formatted_for_100_columns_and_columns_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    text = docs.command_help(builtin_providers.provider_class("python"))
    assert os.environ["COLUMNS"] == "40"
    assert max(len(line) for line in text.splitlines()) <= 100
    assert any(len(line) > 60 for line in text.splitlines())
    assert "\noptions:\n" in text and "-r FILE, --requirements FILE" in text  # the same on every Python version
    monkeypatch.delenv("COLUMNS")
    docs.command_help(builtin_providers.provider_class("python"))
    assert "COLUMNS" not in os.environ
