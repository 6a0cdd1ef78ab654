"""The project's YAML reader: PyYAML's safe loader, with lines kept and ``[:tag]`` read as YAML 1.2 reads it."""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.located_yaml import load_yaml


@pytest.mark.parametrize(("text", "expected"), [
    ("depends-on: [:data, train:best, \"x\"]", {"depends-on": [":data", "train:best", "x"]}),
    ("depends-on: [ :data ]", {"depends-on": [":data"]}),
    ("depends-on:\n  - :data\n", {"depends-on": [":data"]}),
    ("{\"a\":1, \"b\":[1,2]}", {"a": 1, "b": [1, 2]}),  # JSON: a colon after a key is still a value
    ("u: [a: b, {c: d}]", {"u": [{"a": "b"}, {"c": "d"}]}),
])
def test_a_colon_starting_an_item_in_brackets_is_text(tmp_path: Path, text: str, expected: object) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(text)
    assert load_yaml(path, ".dstack/workflows.yaml") == expected
