"""Tests for sdk.validation, the stdlib-only JSON Schema (Draft 7) validator."""

from __future__ import annotations

import dataclasses
import doctest

import jsonschema
import pytest

import dstack.sdk.validation
from dstack.sdk.validation import SchemaError, SchemaViolation, iter_violations, validate


def violations(instance, schema):
    return list(iter_violations(instance, schema))


def rules(instance, schema):
    return [v.rule for v in iter_violations(instance, schema)]


def is_valid(instance, schema):
    return not violations(instance, schema)


# -- SchemaViolation / SchemaError format ---------------------------------------


def test_field_is_dotted_path():
    assert SchemaViolation((), "type", "m").field == ""
    assert SchemaViolation(("url",), "type", "m").field == "url"
    assert SchemaViolation(("artifacts", 0), "type", "m").field == "artifacts[0]"
    assert SchemaViolation(("a", 2, "b", "c"), "type", "m").field == "a[2].b.c"
    assert SchemaViolation((0, 1), "type", "m").field == "[0][1]"


def test_str_names_field_or_root():
    nested = SchemaViolation(("artifacts", 0), "type", "123 is not of type 'string'")
    assert str(nested) == "field 'artifacts[0]': 123 is not of type 'string' (rule: type)"
    root = SchemaViolation((), "type", "1 is not of type 'object'")
    assert str(root) == "the parameters: 1 is not of type 'object' (rule: type)"


def test_violation_is_frozen_and_hashable():
    v = SchemaViolation(("a",), "type", "m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.rule = "other"  # type: ignore[misc]
    assert {v, SchemaViolation(("a",), "type", "m")} == {v}


def test_validate_passes_silently():
    assert validate({"a": 1}, {"type": "object"}) is None


def test_validate_raises_with_all_violations_first_first():
    schema = {"type": "object", "required": ["url"], "properties": {"n": {"type": "integer"}}}
    with pytest.raises(SchemaError) as info:
        validate({"n": "x"}, schema)
    error = info.value
    assert isinstance(error, ValueError)
    assert [v.field for v in error.violations] == ["url", "n"]
    lines = str(error).splitlines()
    assert lines[0] == "field 'url': 'url' is required (rule: required)"
    assert lines[1] == "1 more problem(s):"
    assert lines[2] == "  - field 'n': 'x' is not of type 'integer' (rule: type)"


def test_single_violation_message_is_one_line():
    with pytest.raises(SchemaError, match=r"^field 'url': 123 is not of type 'string' \(rule: type\)$"):
        validate({"url": 123}, {"properties": {"url": {"type": "string"}}})


def test_iteration_order_is_deterministic_sorted_keys():
    schema = {"properties": {k: {"type": "string"} for k in "zyxab"}}
    instance = {k: 1 for k in "bazyx"}
    assert [v.field for v in violations(instance, schema)] == ["a", "b", "x", "y", "z"]


def test_doctest_in_module_docstring():
    assert doctest.testmod(dstack.sdk.validation).failed == 0


# -- type, enum, const --------------------------------------------------------------


@pytest.mark.parametrize(
    "type_, good, bad",
    [
        ("string", ["", "x"], [1, None, b"x", ["x"]]),
        ("integer", [0, -3, 3, 3.0, 10**30], [3.5, True, False, "3", None]),
        ("number", [0, 1.5, -2, 10**30], [True, "1", None]),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("null", [None], [0, "", False, []]),
        ("array", [[], [1, "a"]], [{}, "ab", None]),
        ("object", [{}, {"a": 1}], [[], "a", None]),
    ],
)
def test_type(type_, good, bad):
    for value in good:
        assert is_valid(value, {"type": type_}), value
    for value in bad:
        assert rules(value, {"type": type_}) == ["type"], value


def test_type_list_and_message():
    schema = {"type": ["string", "null"]}
    assert is_valid("a", schema) and is_valid(None, schema)
    [v] = violations(5, schema)
    assert v.message == "5 is not of type 'string' or 'null'"
    assert violations(123, {"type": "string"})[0].message == "123 is not of type 'string'"


def test_unknown_type_is_a_schema_error():
    with pytest.raises(SchemaError, match="unknown type 'str'"):
        validate("a", {"type": "str"})


def test_enum_uses_json_equality():
    schema = {"enum": ["red", 1, None, [1, 2], {"a": True}]}
    for good in ["red", 1, 1.0, None, [1, 2], {"a": True}]:
        assert is_valid(good, schema), good
    for bad in ["blue", True, 2, [2, 1], {"a": 1}, False]:
        assert rules(bad, schema) == ["enum"], bad
    [v] = violations("purple", {"enum": ["red", "green"]})
    assert v.message == "'purple' is not one of: 'red', 'green'"


def test_const():
    assert is_valid(0, {"const": 0}) and is_valid(0.0, {"const": 0})
    assert rules(False, {"const": 0}) == ["const"]
    [v] = violations("b", {"const": "a"})
    assert v.message == "'b' must be exactly 'a'"


# -- objects ------------------------------------------------------------------------


def test_required_points_at_missing_property():
    [v] = violations({}, {"required": ["url"]})
    assert (v.path, v.rule, v.message) == (("url",), "required", "'url' is required")
    assert str(v) == "field 'url': 'url' is required (rule: required)"
    nested = {"properties": {"s3": {"type": "object", "required": ["bucket"]}}}
    assert violations({"s3": {}}, nested)[0].field == "s3.bucket"
    assert is_valid("not an object", {"required": ["url"]})


def test_additional_properties_false_names_the_key():
    schema = {"properties": {"a": {}, "b": {}}, "additionalProperties": False}
    [v] = violations({"a": 1, "colour": 2}, schema)
    assert (v.field, v.rule) == ("colour", "additionalProperties")
    assert v.message == "unexpected parameter 'colour'; allowed: a, b"
    assert str(v) == "field 'colour': unexpected parameter 'colour'; allowed: a, b (rule: additionalProperties)"


def test_additional_properties_hints_patterns_and_empty():
    schema = {"properties": {"a": {}}, "patternProperties": {"^x_": {}}, "additionalProperties": False}
    assert is_valid({"a": 1, "x_y": 2}, schema)
    [v] = violations({"b": 1}, schema)
    assert v.message == "unexpected parameter 'b'; allowed: a, or names matching '^x_'"
    [v] = violations({"b": 1}, {"additionalProperties": False})
    assert v.message == "unexpected parameter 'b'; no parameters are allowed here"


def test_additional_properties_schema():
    schema = {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert is_valid({"a": "x", "b": 1}, schema)
    [v] = violations({"a": "x", "b": "y"}, schema)
    assert (v.field, v.rule) == ("b", "type")


def test_pattern_properties():
    schema = {"patternProperties": {"^env_": {"type": "string"}, "_n$": {"type": "integer"}}}
    assert is_valid({"env_a": "x", "b_n": 1, "other": None}, schema)
    assert [v.field for v in violations({"env_n": "x", "env_b": 2}, schema)] == ["env_b", "env_n"]


def test_property_names():
    schema = {"propertyNames": {"pattern": "^[a-z_]+$"}}
    assert is_valid({"ok_name": 1}, schema)
    [v] = violations({"Bad-Name": 1}, schema)
    assert (v.field, v.rule) == ("Bad-Name", "propertyNames")
    assert v.message.startswith("parameter name 'Bad-Name' is not allowed: 'Bad-Name' does not match")


def test_min_max_properties():
    assert rules({}, {"minProperties": 1}) == ["minProperties"]
    assert rules({"a": 1, "b": 2}, {"maxProperties": 1}) == ["maxProperties"]
    assert violations({}, {"minProperties": 2})[0].message == "has 0 entries, needs at least 2"
    assert is_valid([], {"minProperties": 1})


def test_dependencies_names_what_is_missing():
    schema = {"dependencies": {"port": ["host"], "tls": {"required": ["cert"]}}}
    assert is_valid({}, schema) and is_valid({"host": "h"}, schema) and is_valid(["port"], schema)
    [v] = violations({"port": 80}, schema)
    assert str(v) == "field 'host': 'host' is required when 'port' is given (rule: dependencies)"
    [v] = violations({"tls": True}, schema)
    assert (v.field, v.rule) == ("cert", "required")


# -- arrays -------------------------------------------------------------------------


def test_items_schema_paths():
    schema = {"properties": {"artifacts": {"type": "array", "items": {"type": "string"}}}}
    [v] = violations({"artifacts": ["ok", 123]}, schema)
    assert str(v) == "field 'artifacts[1]': 123 is not of type 'string' (rule: type)"


def test_items_tuple_and_additional_items():
    schema = {"items": [{"type": "string"}, {"type": "integer"}], "additionalItems": False}
    assert is_valid(["a", 1], schema) and is_valid(["a"], schema)
    assert rules([1, "a"], schema) == ["type", "type"]
    [v] = violations(["a", 1, None], schema)
    assert (v.field, v.rule) == ("[2]", "additionalItems")
    extra = {"items": [{"type": "string"}], "additionalItems": {"type": "integer"}}
    assert is_valid(["a", 1, 2], extra)
    assert [v.path for v in violations(["a", 1, "b"], extra)] == [(2,)]
    # additionalItems means nothing when items is a single schema (or missing)
    assert is_valid([1, 2], {"items": {}, "additionalItems": False})
    assert is_valid([1, 2], {"additionalItems": False})


def test_min_max_items_and_unique():
    assert rules([], {"minItems": 1}) == ["minItems"]
    assert rules([1, 2], {"maxItems": 1}) == ["maxItems"]
    assert is_valid([1, True, "1", [1], {"a": 1}], {"uniqueItems": True})
    [v] = violations([1, 2, 1.0], {"uniqueItems": True})
    assert (v.path, v.rule, v.message) == ((2,), "uniqueItems", "1.0 repeats item 0")
    assert is_valid([1, 1], {"uniqueItems": False})


def test_contains():
    schema = {"contains": {"const": "main"}}
    assert is_valid(["dev", "main"], schema)
    assert rules(["dev"], schema) == ["contains"]
    assert rules([], schema) == ["contains"]
    assert is_valid("main", schema)


# -- strings and numbers ------------------------------------------------------------


def test_string_length_counts_characters():
    assert is_valid("héé", {"maxLength": 3}) and is_valid("😀", {"minLength": 1, "maxLength": 1})
    assert rules("ab", {"minLength": 3}) == ["minLength"]
    assert rules("abcd", {"maxLength": 3}) == ["maxLength"]
    assert is_valid(12345, {"maxLength": 1})


def test_pattern_is_a_search():
    assert is_valid("xx-abc", {"pattern": "abc"})
    assert rules("xx-abc", {"pattern": "^abc"}) == ["pattern"]
    assert violations("b", {"pattern": "^a"})[0].message == "'b' does not match the pattern '^a'"
    with pytest.raises(SchemaError, match="invalid regular expression"):
        validate("a", {"pattern": "("})


def test_format_and_notes_are_ignored():
    assert is_valid("not an email", {"format": "email", "default": 3, "x-whatever": {}, "title": "T"})


def test_unknown_keyword_is_refused_before_iterating():
    with pytest.raises(SchemaError, match="^keyword 'whatever' at the top level is not supported") as info:
        iter_violations("x", {"type": "string", "whatever": 2})
    assert info.value.violations == []


def test_numeric_ranges():
    assert rules(0, {"minimum": 1}) == ["minimum"] and is_valid(1, {"minimum": 1})
    assert rules(2, {"maximum": 1}) == ["maximum"] and is_valid(1, {"maximum": 1})
    assert rules(1, {"exclusiveMinimum": 1}) == ["exclusiveMinimum"] and is_valid(1.5, {"exclusiveMinimum": 1})
    assert rules(1, {"exclusiveMaximum": 1}) == ["exclusiveMaximum"] and is_valid(0.5, {"exclusiveMaximum": 1})
    assert violations(0, {"minimum": 1})[0].message == "0 is less than the minimum 1"
    assert is_valid(True, {"minimum": 5}) and is_valid("0", {"minimum": 5})  # not numbers


def test_multiple_of():
    assert is_valid(10, {"multipleOf": 5}) and rules(7, {"multipleOf": 5}) == ["multipleOf"]
    assert is_valid(0.5, {"multipleOf": 0.1}) and is_valid(4.5, {"multipleOf": 1.5})
    assert rules(0.35, {"multipleOf": 0.1}) == ["multipleOf"]
    # in floating point, as jsonschema (the CLI) decides: 0.3 / 0.1 == 2.9999999999999996
    assert rules(0.3, {"multipleOf": 0.1}) == ["multipleOf"]
    assert is_valid(10**400, {"multipleOf": 0.5}) and rules(10**400 + 1, {"multipleOf": 2.0}) == ["multipleOf"]
    assert rules(float("inf"), {"multipleOf": 2}) == ["multipleOf"]
    assert is_valid(10**40, {"multipleOf": 10**20})
    with pytest.raises(SchemaError, match="multipleOf must be a positive number"):
        validate(1, {"multipleOf": 0})


# -- combining schemas --------------------------------------------------------------


def test_all_of_reports_each_failure():
    schema = {"allOf": [{"type": "string"}, {"minLength": 3}]}
    assert is_valid("abc", schema)
    assert rules("a", schema) == ["minLength"]


def test_any_of_explains_each_option():
    schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    assert is_valid("a", schema) and is_valid(["a"], schema)
    [v] = violations([1], schema)
    assert v.rule == "anyOf"
    assert v.message == (
        "[1] matches none of the allowed options "
        "(option 1: [1] is not of type 'string'; option 2: [0]: 1 is not of type 'string')"
    )


def test_one_of():
    schema = {"oneOf": [{"type": "integer"}, {"minimum": 0}]}
    assert is_valid(-1, schema) and is_valid(0.5, schema)
    [v] = violations(3, schema)
    assert v.rule == "oneOf" and "matches options 1 and 2; exactly one must match" in v.message
    assert rules(-0.5, schema) == ["oneOf"]


def test_not():
    assert is_valid(1, {"not": {"type": "string"}})
    [v] = violations("a", {"not": {"type": "string"}})
    assert v.rule == "not"


def test_if_then_else():
    schema = {
        "if": {"properties": {"kind": {"const": "s3"}}},
        "then": {"required": ["bucket"]},
        "else": {"required": ["path"]},
    }
    assert is_valid({"kind": "s3", "bucket": "b"}, schema)
    assert [v.field for v in violations({"kind": "s3"}, schema)] == ["bucket"]
    assert [v.field for v in violations({"kind": "local"}, schema)] == ["path"]
    assert is_valid({}, {"then": False}) and is_valid({}, {"if": True})


def test_boolean_schemas():
    assert is_valid(123, True) and is_valid(None, {})
    [v] = violations(123, False)
    assert (v.rule, v.message) == ("false", "123 is not allowed here")
    assert rules({"a": 1}, {"properties": {"a": False}}) == ["false"]


# -- $ref ---------------------------------------------------------------------------


def test_ref_definitions_defs_and_root():
    schema = {
        "definitions": {"name": {"type": "string"}},
        "$defs": {"count": {"type": "integer"}},
        "properties": {
            "name": {"$ref": "#/definitions/name"},
            "n": {"$ref": "#/$defs/count"},
            "child": {"$ref": "#"},
        },
    }
    assert is_valid({"name": "a", "n": 1, "child": {"name": "b", "child": {}}}, schema)
    found = violations({"name": 1, "child": {"child": {"n": "x"}}}, schema)
    assert [(v.field, v.rule) for v in found] == [("child.child.n", "type"), ("name", "type")]


def test_ref_json_pointer_escapes_and_indexes():
    schema = {
        "definitions": {"a/b": {"type": "string"}, "c~d": {"type": "integer"}, "e f": {"minimum": 1}},
        "x-list": [{"type": "null"}],  # a $ref may point into an x-... note
        "properties": {
            "x": {"$ref": "#/definitions/a~1b"},
            "y": {"$ref": "#/definitions/c~0d"},
            "z": {"$ref": "#/definitions/e%20f"},
            "w": {"$ref": "#/x-list/0"},
        },
    }
    assert is_valid({"x": "s", "y": 1, "z": 2, "w": None}, schema)
    assert rules({"x": 1, "y": "s", "z": 0, "w": 1}, schema) == ["type", "type", "type", "minimum"]


def test_ref_ignores_sibling_keywords_in_draft7():
    schema = {
        "definitions": {"s": {"type": "string"}},
        "properties": {"a": {"$ref": "#/definitions/s", "maxLength": 1}},
    }
    assert is_valid({"a": "long"}, schema)


def test_ref_errors():
    with pytest.raises(SchemaError, match="cannot resolve"):
        validate(1, {"$ref": "#/definitions/missing"})
    with pytest.raises(SchemaError, match="only local"):
        validate(1, {"$ref": "http://example.com/schema.json"})
    with pytest.raises(SchemaError, match="refers back to itself"):
        validate(1, {"definitions": {"a": {"anyOf": [{"$ref": "#/definitions/a"}]}}, "$ref": "#/definitions/a"})


def test_recursive_ref_on_deeper_values_is_fine():
    tree = {
        "definitions": {"node": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/definitions/node"}}}}},
        "$ref": "#/definitions/node",
    }
    assert is_valid({"kids": [{"kids": []}, {"kids": [{}]}]}, tree)
    assert [v.field for v in violations({"kids": [{"kids": [1]}]}, tree)] == ["kids[0].kids[0]"]
    # the same ref may be evaluated twice on the same value when not nested (no false loop)
    twice = {
        "definitions": {"s": {"type": "string"}},
        "allOf": [{"$ref": "#/definitions/s"}, {"$ref": "#/definitions/s"}],
    }
    assert rules(1, twice) == ["type", "type"]
    assert is_valid("a", {"definitions": {"s": {"type": "string"}}, "not": {"not": {"$ref": "#/definitions/s"}}})


# -- the schema itself --------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, [], "string", 3])
def test_schema_must_be_a_mapping(bad):
    with pytest.raises(SchemaError, match="^the schema must be a mapping$") as info:
        validate({}, bad)
    assert info.value.violations == []
    with pytest.raises(SchemaError, match="^the schema must be a mapping$"):
        iter_violations({}, bad)  # raised eagerly, before iterating


def test_nested_schema_must_be_a_mapping():
    with pytest.raises(SchemaError, match="the schema must be a mapping"):
        validate({"a": 1}, {"properties": {"a": "string"}})


# -- parity with the jsonschema library (Draft 7) -----------------------------------

_TREE = {
    "definitions": {"n": {"type": "object", "properties": {"k": {"items": {"$ref": "#/definitions/n"}}}}},
    "$ref": "#/definitions/n",
}

PARITY = [
    ({"type": "integer"}, 3),
    ({"type": "integer"}, 3.0),
    ({"type": "integer"}, 3.5),
    ({"type": "integer"}, True),
    ({"type": "number"}, False),
    ({"type": ["string", "null"]}, None),
    ({"type": ["string", "null"]}, 0),
    ({"enum": [1, "a"]}, True),
    ({"enum": [1, "a"]}, 1.0),
    ({"enum": [[1, {"a": None}]]}, [1, {"a": None}]),
    ({"const": False}, 0),
    ({"const": {"a": [1]}}, {"a": [1]}),
    ({"required": ["a", "b"]}, {"a": 1}),
    ({"required": ["a"]}, ["a"]),
    ({"properties": {"a": {"type": "string"}}, "additionalProperties": False}, {"a": "x", "b": 1}),
    ({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False}, {"xa": 1}),
    ({"patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": {"type": "string"}}, {"xa": 1, "b": 2}),
    ({"propertyNames": {"maxLength": 2}}, {"abc": 1}),
    ({"propertyNames": {"enum": ["a", "b"]}}, {"a": 1, "b": 2}),
    ({"minProperties": 2, "maxProperties": 3}, {"a": 1}),
    ({"items": {"type": "integer"}}, [1, 2, "3"]),
    ({"items": [{"type": "integer"}, {"type": "string"}]}, [1, "a", None]),
    ({"items": [{"type": "integer"}], "additionalItems": False}, [1, 2]),
    ({"items": [{}], "additionalItems": {"type": "string"}}, [1, "a", "b"]),
    ({"items": False}, []),
    ({"minItems": 1, "maxItems": 2}, [1, 2, 3]),
    ({"uniqueItems": True}, [1, True]),
    ({"uniqueItems": True}, [{"a": 1}, {"a": 1.0}]),
    ({"contains": {"type": "string"}}, [1, 2]),
    ({"contains": {"type": "string"}}, []),
    ({"minLength": 2, "maxLength": 3}, "abcd"),
    ({"pattern": "^[a-z]+$"}, "abc1"),
    ({"pattern": "b"}, "abc"),
    ({"minimum": 1, "exclusiveMaximum": 3}, 3),
    ({"exclusiveMinimum": 0}, 0),
    ({"maximum": 10}, "100"),
    ({"multipleOf": 3}, 9),
    ({"multipleOf": 0.5}, 2.25),
    ({"allOf": [{"minimum": 1}, {"maximum": 2}]}, 3),
    ({"anyOf": [{"type": "string"}, {"minimum": 5}]}, 4),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 1),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 1.5),
    ({"not": {"enum": [None]}}, None),
    ({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"minimum": 0}}, "a"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"minimum": 0}}, -1),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, -1),
    ({"definitions": {"p": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/p"}}}, {"a": "x"}),
    ({"definitions": {"a/b": {"const": 1}}, "items": {"$ref": "#/definitions/a~1b"}}, [1, 1]),
    (_TREE, {"k": [{"k": [{"k": "x"}]}]}),
    (_TREE, {"k": [{"k": [{"k": []}]}]}),
    (False, None),
    ({"properties": {"a": True, "b": False}}, {"a": 1}),
    ({"properties": {"a": True, "b": False}}, {"b": 1}),
    ({"format": "email", "default": 1, "x-whatever": 2}, "nope"),
    ({"dependencies": {"a": ["b"], "c": {"required": ["d"]}}}, {"a": 1, "b": 2, "c": 3, "d": 4}),
    ({"dependencies": {"a": ["b"], "c": {"required": ["d"]}}}, {"c": 3}),
    ({"dependencies": {"a": ["b"]}}, {"a": 1}),
    ({"dependencies": {"a": False}}, {"a": 1}),
    ({"dependencies": {"a": False}}, ["a"]),
]


@pytest.mark.parametrize("schema, instance", PARITY, ids=[str(i) for i in range(len(PARITY))])
def test_parity_with_jsonschema(schema, instance):
    jsonschema.Draft7Validator.check_schema(schema)
    expected = jsonschema.Draft7Validator(schema).is_valid(instance)
    assert is_valid(instance, schema) == expected


def test_parity_table_has_both_verdicts():
    verdicts = [jsonschema.Draft7Validator(s).is_valid(i) for s, i in PARITY]
    assert verdicts.count(True) >= 10 and verdicts.count(False) >= 20
