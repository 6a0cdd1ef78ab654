"""sdk.schemas: a provider's schema may take definitions from another file."""
from __future__ import annotations

from pathlib import Path

import pytest

from dstack.sdk.schemas import load_schema, resolve_pointer
from dstack.sdk.validation import SchemaError, validate


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_references_to_another_file_are_inlined_with_their_own_references(tmp_path: Path) -> None:
    write(tmp_path / "common.yaml", """\
definitions:
  size: {type: string, pattern: "^[0-9]+GB$", description: a size}
  resources:
    type: object
    properties:
      memory: {$ref: "#/definitions/size"}
""")
    schema = load_schema(str(write(tmp_path / "p" / "schema.yaml", """\
type: object
properties:
  resources: {$ref: "../common.yaml#/definitions/resources", description: what the job needs}
  local: {$ref: "#/definitions/mine"}
definitions:
  mine: {type: integer}
""")))
    resources = schema["properties"]["resources"]
    assert resources["description"] == "what the job needs"  # a key beside $ref wins
    assert resources["properties"]["memory"]["pattern"] == "^[0-9]+GB$"  # common.yaml's own ref, followed
    assert schema["properties"]["local"] == {"$ref": "#/definitions/mine"}  # left to the validator
    validate({"resources": {"memory": "16GB"}, "local": 3}, schema)
    with pytest.raises(SchemaError, match="resources.memory"):
        validate({"resources": {"memory": "16"}}, schema)


def test_a_reference_that_cannot_be_followed_is_named(tmp_path: Path) -> None:
    write(tmp_path / "common.yaml", "definitions: {}\n")
    path = write(tmp_path / "schema.yaml", "properties:\n  a: {$ref: 'common.yaml#/definitions/nope'}\n")
    with pytest.raises(ValueError, match="cannot resolve \\$ref 'common.yaml#/definitions/nope'"):
        load_schema(str(path))
    loop = write(tmp_path / "loop.yaml", "a: {$ref: 'loop2.yaml#/b'}\n")
    write(tmp_path / "loop2.yaml", "b: {$ref: 'loop.yaml#/a'}\n")
    with pytest.raises(ValueError, match="refers back to itself"):
        load_schema(str(loop))


def test_json_pointers_follow_rfc_6901_as_jsonschema_does() -> None:
    document = {"": "empty key", "a/b": {"c~d": ["first", "second"]}, "e f": 1}
    assert resolve_pointer(document, "") is document
    assert resolve_pointer(document, "/") == "empty key"
    assert resolve_pointer(document, "/a~1b/c~0d/1") == "second"
    assert resolve_pointer(document, "/e%20f") == 1
    with pytest.raises(LookupError, match="no 'x' there"):
        resolve_pointer(document, "/a~1b/x")
    with pytest.raises(LookupError, match="is not a JSON pointer"):
        resolve_pointer(document, "definitions/x")
