"""The SDK's validator never disagrees with ``jsonschema`` silently.

A provider container checks a workflow with ``dstack.sdk.validation``; the CLI checks the same workflow
with ``jsonschema.Draft7Validator``. Here both judge one table of (schema, instance) cases, which must
cover every keyword the built-in schemas use and every keyword the SDK implements, and the SDK must
refuse, by name, a keyword it does not implement (``jsonschema`` would quietly ignore it).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import dstack
from dstack.sdk.schemas import load_schema
from dstack.sdk.validation import (
    ANNOTATION_KEYWORDS,
    VALIDATION_KEYWORDS,
    SchemaError,
    check_schema,
    iter_violations,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(dstack.__file__).resolve().parent
PROVIDER_SCHEMAS = sorted(PACKAGE.glob("providers/*/schema.yaml")) + sorted(ROOT.glob("examples/**/schema.yaml"))
OTHER_SCHEMAS = sorted(PACKAGE.glob("providers/*.yaml")) + sorted(PACKAGE.glob("schemas/*.yaml"))


def keywords(schema: Any) -> Iterator[str]:
    """Every keyword used in ``schema``, at any depth (written independently of the SDK's own walk)."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        yield key
        if key in ("properties", "patternProperties", "definitions", "$defs", "dependencies"):
            subs = list(value.values()) if isinstance(value, dict) else []
        elif key in ("allOf", "anyOf", "oneOf", "items") and isinstance(value, list):
            subs = value
        elif key in ("items", "additionalItems", "additionalProperties", "propertyNames", "contains",
                     "not", "if", "then", "else"):
            subs = [value]
        else:
            subs = []  # data (enum, const, default...) or notes (x-...)
        for sub in subs:
            yield from keywords(sub)


def builtin_keywords() -> set[str]:
    found: set[str] = set()
    for path in PROVIDER_SCHEMAS + OTHER_SCHEMAS:
        found |= set(keywords(yaml.safe_load(path.read_text())))
    return found


def sdk_is_valid(instance: Any, schema: Any) -> bool:
    return not list(iter_violations(instance, schema))


def cli_is_valid(instance: Any, schema: Any) -> bool:
    return jsonschema.Draft7Validator(schema).is_valid(instance)


# -- the table ------------------------------------------------------------------------------------
# Each row: a schema and instances; each (schema, instance) pair is one case. Instances are JSON values
# (a workflow comes from YAML or JSON): no tuples, which the SDK takes for arrays and jsonschema does not.

_TREE = {
    "definitions": {"node": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/definitions/node"}}}}},
    "$ref": "#/definitions/node",
}
_SIZE = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\d+(MB|GB)$"}]}

TABLE: list[tuple[Any, list[Any]]] = [
    # type
    ({"type": "string"}, ["", "x", 1, None, ["x"]]),
    ({"type": "integer"}, [0, 3.0, 10**30, 3.5, True, "3"]),
    ({"type": "number"}, [1.5, -2, True, "1"]),
    ({"type": "boolean"}, [False, 0]),
    ({"type": "null"}, [None, 0, ""]),
    ({"type": "array"}, [[], {}]),
    ({"type": "object"}, [{}, []]),
    ({"type": ["string", "number", "boolean"]}, ["a", 1, True, None, [], {}]),
    # enum, const
    ({"enum": ["red", 1, None, [1, 2], {"a": True}]}, ["red", 1.0, None, [1, 2], {"a": True}, True, [2, 1], {"a": 1}]),
    ({"const": 0}, [0, 0.0, False, "0"]),
    ({"const": {"a": [1]}}, [{"a": [1]}, {"a": [True]}]),
    # objects
    ({"required": ["a", "b"]}, [{"a": 1, "b": 2}, {"a": 1}, ["a"], "a"]),
    ({"dependencies": {"a": ["b"]}}, [{}, {"b": 1}, {"a": 1, "b": 1}, {"a": 1}, ["a"]]),
    ({"dependencies": {"a": {"required": ["c"]}, "b": False, "d": True}},
     [{"a": 1, "c": 1}, {"a": 1}, {"b": 1}, {"d": 1}, {}]),
    ({"properties": {"a": {"type": "string"}, "b": False, "c": True}}, [{"a": "x", "c": 1}, {"a": 1}, {"b": 1}, "a"]),
    ({"properties": {"a": {}}, "additionalProperties": False}, [{"a": 1}, {"a": 1, "b": 2}, [1]]),
    ({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}, [{"a": "x", "b": 1}, {"b": "y"}]),
    ({"patternProperties": {"^x_": {"type": "integer"}, "n$": {"minimum": 0}}},
     [{"x_a": 1, "other": "s"}, {"x_a": "s"}, {"x_n": -1}, {"x_n": 1.5}]),
    ({"patternProperties": {"^x": {}}, "additionalProperties": False}, [{"xa": 1}, {"a": 1}]),
    ({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": {"type": "string"}},
     [{"xa": 1, "b": "s"}, {"xa": 1, "b": 2}]),
    ({"propertyNames": {"pattern": "^[a-z_]+$"}}, [{"ok": 1}, {"Bad-Name": 1}, "Bad-Name"]),
    ({"propertyNames": {"maxLength": 2}}, [{"ab": 1}, {"abc": 1}]),
    ({"minProperties": 1, "maxProperties": 2}, [{"a": 1}, {}, {"a": 1, "b": 2, "c": 3}, []]),
    # arrays
    ({"items": {"type": "string", "minLength": 1}}, [["a", "b"], [], ["a", ""], ["a", 1], "ab"]),
    ({"items": [{"type": "integer"}, {"type": "string"}]}, [[1, "a", None], [1], ["a"]]),
    ({"items": [{"type": "integer"}], "additionalItems": False}, [[1], [1, 2]]),
    ({"items": [{}], "additionalItems": {"type": "string"}}, [[1, "a", "b"], [1, "a", 2]]),
    ({"items": {}, "additionalItems": False}, [[1, 2]]),
    ({"additionalItems": False}, [[1, 2]]),
    ({"items": False}, [[], [1]]),
    ({"minItems": 1, "maxItems": 2}, [[1], [], [1, 2, 3], "abc"]),
    ({"uniqueItems": True}, [[1, True, "1", [1], {"a": 1}], [1, 1.0], [{"a": 1}, {"a": 1.0}], [[1], [True]]]),
    ({"uniqueItems": False}, [[1, 1]]),
    ({"contains": {"const": "main"}}, [["dev", "main"], ["dev"], [], "main"]),
    # strings
    ({"minLength": 2, "maxLength": 3}, ["ab", "héé", "a", "abcd", 12345]),
    ({"minLength": 1, "maxLength": 1}, ["😀", ""]),
    ({"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$"}, ["train-1", "-x", "a b", 5]),
    ({"pattern": "b"}, ["abc", "xyz"]),
    ({"pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]?)?\s*$"}, ["16GB", " 1.5 gi ", "16 GBs", "GB"]),
    # numbers
    ({"minimum": 0, "maximum": 10}, [0, 10, -1, 10.5, "100", True]),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 1}, [0.5, 0, 1, False]),
    ({"multipleOf": 3}, [9, 9.0, 10, "9"]),
    ({"multipleOf": 0.5}, [2.5, 2.25]),
    ({"multipleOf": 0.1}, [0.5, 0.3, 0.35, 1]),  # 0.3 is not: 0.3 / 0.1 == 2.9999999999999996
    ({"multipleOf": 2.0}, [4, 5, 10**300 + 1]),
    ({"multipleOf": 0.5}, [1e308, 0.75]),  # 1e308 / 0.5 overflows: both fall back to exact arithmetic
    # combining
    ({"allOf": [{"minimum": 1}, {"maximum": 2}]}, [1.5, 3, 0]),
    ({"anyOf": [{"type": "string"}, {"minimum": 5}]}, ["a", 5, 4]),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, [1.5, 1, "a"]),
    (_SIZE, [0, "16GB", -1, "16", 1.5, "1MB"]),
    ({"not": {"enum": [None]}}, [0, None]),
    ({"if": {"required": ["before_run"]}, "then": {"required": ["commands"]}},
     [{}, {"before_run": [], "commands": []}, {"before_run": []}]),
    ({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"minimum": 0}}, ["ab", "a", 0, -1]),
    ({"then": False}, [1]),
    ({"else": False}, [1]),
    ({"if": False}, [1]),
    # booleans and $ref
    (True, [None, {}]),
    (False, [None, {}]),
    ({"definitions": {"p": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/p"}}},
     [{"a": 1}, {"a": "x"}]),
    ({"$defs": {"p": {"type": "integer"}}, "items": {"$ref": "#/$defs/p"}}, [[1, 2], [1, "x"]]),
    ({"definitions": {"a/b": {"const": 1}, "c~d": {"const": 2}},
      "items": [{"$ref": "#/definitions/a~1b"}, {"$ref": "#/definitions/c~0d"}]}, [[1, 2], [1, 3]]),
    ({"definitions": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/definitions/s", "maxLength": 1}}},
     [{"a": "long"}, {"a": 1}]),  # Draft 7: keywords beside $ref are ignored
    ({"x-list": [{"type": "null"}], "items": {"$ref": "#/x-list/0"}}, [[None], [0]]),
    (_TREE, [{"kids": [{"kids": []}, {"kids": [{}]}]}, {"kids": [{"kids": [1]}]}]),
    # notes: they check nothing, whatever the instance
    ({"type": "string", "title": "T", "description": "D", "default": 3, "examples": [1], "$comment": "c",
      "deprecated": True, "readOnly": True, "writeOnly": True, "x-ui": {"widget": "tabs"}},
     ["s", 1]),
    ({"properties": {"script": {"type": "string", "x-alias-of": "file"}},  # the built-in providers' notes
      "patternProperties": {"^[^/]+/gpu$": {"type": "integer", "x-name": "MODEL/gpu"}}},
     [{"script": "t.py", "K80/gpu": 4}, {"script": 1}, {"K80/gpu": "four"}]),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "$id": "https://example.com/s.json",
      "definitions": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/definitions/n"}}},
     [{"n": 1}, {"n": "x"}]),
    ({"type": "string", "format": "email", "contentMediaType": "application/json", "contentEncoding": "base64"},
     ["not an email, not json", 1]),
    ({"format": "date-time"}, ["yesterday"]),
]

CASES = [(schema, instance) for schema, instances in TABLE for instance in instances]


@pytest.mark.parametrize("schema, instance", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_sdk_and_cli_agree(schema: Any, instance: Any) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    assert sdk_is_valid(instance, schema) == cli_is_valid(instance, schema), (schema, instance)


def verdicts_by_keyword() -> dict[str, set[bool]]:
    """keyword -> the verdicts of the cases whose schema uses it."""
    seen: dict[str, set[bool]] = {}
    for schema, instance in CASES:
        for keyword in set(keywords(schema)):
            seen.setdefault(keyword, set()).add(cli_is_valid(instance, schema))
    return seen


def test_table_covers_every_keyword_of_the_builtin_schemas() -> None:
    used = builtin_keywords()
    assert {"type", "properties", "$ref", "oneOf", "if", "then"} <= used  # the collector works
    missing = used - set(verdicts_by_keyword())
    assert not missing, f"add cases to TABLE for these keywords of the built-in schemas: {sorted(missing)}"


def test_table_covers_every_sdk_keyword_with_both_verdicts() -> None:
    seen = verdicts_by_keyword()
    for keyword in sorted(VALIDATION_KEYWORDS | ANNOTATION_KEYWORDS | builtin_keywords()):
        assert seen.get(keyword) == {True, False}, f"TABLE needs a valid and an invalid case using {keyword!r}"


def test_the_sdk_implements_all_of_draft_7() -> None:
    """So the SDK refuses nothing that jsonschema's Draft 7 evaluates; ``format`` the CLI does not check."""
    draft7 = set(jsonschema.Draft7Validator.VALIDATORS)
    assert draft7 - VALIDATION_KEYWORDS == {"format"}
    assert "format" in ANNOTATION_KEYWORDS
    assert VALIDATION_KEYWORDS - draft7 == {"then", "else"}  # evaluated by 'if' in jsonschema


# -- built-in schemas: real schemas, mutated examples ---------------------------------------------

SAMPLES = [None, True, 0, -1, 2.5, "", "x", "16GB", [], ["x"], [1], {}, {"a": "1"}, {"gpu": 1}]


def mutations(example: dict[str, Any], schema: dict[str, Any]) -> Iterator[Any]:
    """The example, then variants: each parameter replaced by each sample, each one left out, one extra."""
    yield example
    for name in list(schema.get("properties", {})) + ["unexpected"]:
        for sample in SAMPLES:
            yield {**example, name: copy.deepcopy(sample)}
    for name in example:
        yield {k: v for k, v in example.items() if k != name}


@pytest.mark.parametrize("path", PROVIDER_SCHEMAS + OTHER_SCHEMAS, ids=lambda p: str(p.relative_to(ROOT)))
def test_builtin_schemas_load_and_both_validators_agree_on_them(path: Path) -> None:
    schema = load_schema(str(path))
    check_schema(schema)  # only supported keywords
    jsonschema.Draft7Validator.check_schema(schema)
    examples = schema.get("examples") or [{}]
    for example in examples:
        for instance in mutations(example, schema):
            assert sdk_is_valid(instance, schema) == cli_is_valid(instance, schema), instance


def test_builtin_provider_examples_are_valid() -> None:
    for path in PROVIDER_SCHEMAS:
        schema = load_schema(str(path))
        for example in schema.get("examples", []):
            assert sdk_is_valid(example, schema) and cli_is_valid(example, schema), (path, example)


# -- refusing what the SDK does not implement -----------------------------------------------------

UNSUPPORTED = {
    "dependentRequired": {"a": ["b"]},
    "dependentSchemas": {"a": {"required": ["b"]}},
    "prefixItems": [{"type": "string"}],
    "unevaluatedProperties": False,
    "unevaluatedItems": False,
    "minContains": 2,
    "maxContains": 1,
    "$anchor": "node",
    "$dynamicRef": "#node",
    "$dynamicAnchor": "node",
    "$recursiveRef": "#",
    "$recursiveAnchor": True,
    "$vocabulary": {},
    "requird": ["a"],  # a typo
    "nullable": True,  # OpenAPI, not JSON Schema
}


def placed(keyword: str, value: Any) -> Iterator[tuple[Any, str]]:
    """``{keyword: value}`` at many depths of a schema, with the JSON pointer of where it is."""
    node = {keyword: value}
    yield node, "the top level"
    yield {"type": "object", "properties": {"a": node}}, "/properties/a"
    yield {"properties": {"a/b~": {"items": [{}, node]}}}, "/properties/a~1b~0/items/1"
    yield {"definitions": {"unused": node}}, "/definitions/unused"
    yield {"$defs": {"d": {"anyOf": [{"not": node}]}}}, "/$defs/d/anyOf/0/not"
    yield {"dependencies": {"a": node}, "if": True, "then": {"additionalProperties": node}}, "/dependencies/a"
    yield {"then": {"additionalProperties": node}}, "/then/additionalProperties"
    yield {"x-parts": {"p": node}, "properties": {"a": {"$ref": "#/x-parts/p"}}}, "/x-parts/p"


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED))
def test_unsupported_keyword_is_refused_by_name_and_place(keyword: str) -> None:
    for schema, where in placed(keyword, UNSUPPORTED[keyword]):
        with pytest.raises(SchemaError) as info:
            iter_violations({}, schema)  # refused at once, whatever the instance
        message = str(info.value)
        assert message.startswith(f"keyword '{keyword}' at {where} is not supported by dstack's SDK validator: ")
        assert info.value.violations == []
        with pytest.raises(SchemaError, match="not supported"):
            check_schema(schema)


def test_refusals_say_what_to_write_instead() -> None:
    def refusal(schema: Any) -> str:
        with pytest.raises(SchemaError) as info:
            check_schema(schema)
        return str(info.value)

    assert refusal({"properties": {"x": {"dependentRequired": {"a": ["b"]}}}}) == (
        "keyword 'dependentRequired' at /properties/x is not supported by dstack's SDK validator: it is from a "
        "JSON Schema draft later than 7, which dstack uses (the CLI would ignore it); "
        "instead, write 'dependencies: {a: [b]}' (b is required when a is given)"
    )
    assert refusal({"requird": ["a"]}) == (
        "keyword 'requird' at the top level is not supported by dstack's SDK validator: it is not a JSON Schema "
        "Draft 7 keyword, so nothing would check it; check its spelling, or name a note 'x-requird'"
    )
    assert "'$id' changes what '$ref's refer to" in refusal({"properties": {"a": {"$id": "a.json"}}})


def test_the_values_of_data_keywords_are_not_taken_for_schemas() -> None:
    data = {"anything": 1, "prefixItems": 2}
    check_schema({"enum": [data], "const": data, "default": data, "examples": [data], "x-note": data})
    check_schema({"required": ["prefixItems"], "dependencies": {"a": ["minContains"]}})
    check_schema({"properties": {"prefixItems": {}, "nullable": {}}, "patternProperties": {"^\\$anchor": {}}})
