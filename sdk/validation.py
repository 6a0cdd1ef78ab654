"""Check workflow parameters against a JSON Schema (Draft 7), standard library only.

Providers run inside arbitrary user images where nothing can be installed, so this
is a small, readable stand-in for the ``jsonschema`` package. JSON Schema in brief:

* A schema is a mapping of *keywords*, each an independent check (here: a ``_<keyword>``
  method, or a row of ``_LIMITS``). ``true`` accepts anything, ``false`` nothing.
* A keyword only looks at values of "its" type: ``minLength`` ignores numbers,
  ``properties`` ignores lists. Use ``type`` to demand a type.
* Notes for people (``description``, ``default``, ``format``, ``x-...``) check nothing. Any other
  keyword this module does not evaluate is refused (:func:`check_schema`), so that it never
  silently judges a workflow differently from the CLI, which uses ``jsonschema.Draft7Validator``.

    >>> schema = {"properties": {"url": {"type": "string"}}, "required": ["url"]}
    >>> [str(v) for v in iter_violations({"url": 1}, schema)]
    ["field 'url': 1 is not of type 'string' (rule: type)"]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, Generator, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .schemas import resolve_pointer

__all__ = [
    "ANNOTATION_KEYWORDS",
    "SchemaError",
    "SchemaViolation",
    "VALIDATION_KEYWORDS",
    "check_schema",
    "iter_violations",
    "validate",
]

Path = Tuple[Union[str, int], ...]


def _dotted(path: Path) -> str:
    """``("artifacts", 0, "name")`` -> ``"artifacts[0].name"``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True)
class SchemaViolation:
    """One problem: where in the instance, which keyword failed, and why."""

    path: Path
    rule: str
    message: str

    @property
    def field(self) -> str:
        return _dotted(self.path)

    def __str__(self) -> str:
        where = f"field '{self.field}'" if self.path else "the parameters"
        return f"{where}: {self.message} (rule: {self.rule})"


class SchemaError(ValueError):
    """Invalid parameters (``.violations`` says why), or an invalid schema (no violations)."""

    def __init__(self, message: str, violations: Sequence[SchemaViolation] = ()) -> None:
        super().__init__(message)
        self.violations: List[SchemaViolation] = list(violations)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is not 1 here


_TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "number": _is_number,
    # Draft 7: a number with a zero fractional part is an integer (3 and 3.0).
    "integer": lambda v: _is_number(v) and (isinstance(v, int) or v.is_integer()),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, (list, tuple)),
    "object": lambda v: isinstance(v, dict),
}


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: like ``==`` but ``True != 1`` (Python says they are equal)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _search(pattern: str, text: str) -> bool:
    """Patterns are unanchored: ``"^a"`` anchors, ``"a"`` matches anywhere."""
    try:
        return re.search(pattern, text) is not None
    except re.error as exc:
        raise SchemaError(f"invalid regular expression {pattern!r} in the schema: {exc}") from None


def _is_multiple(value: Union[int, float], step: Union[int, float]) -> bool:
    """Decided as ``jsonschema`` (so the CLI) does: in floating point when ``step`` is a float, so 0.3 is
    *not* a multiple of 0.1 (0.3 / 0.1 == 2.9999999999999996); exactly when both are integers."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if not isinstance(step, float):
        return not value % step
    try:
        quotient = value / step
        return int(quotient) == quotient
    except OverflowError:  # a huge value over a small step: exact arithmetic, as jsonschema falls back to
        return (Fraction(value) / Fraction(step)).denominator == 1


# Sizes and ranges: keyword -> (which values it applies to, when it fails, message).
_LIMITS = {
    "minProperties": (_TYPES["object"], lambda v, n: len(v) < n, "has {size} entries, needs at least {n}"),
    "maxProperties": (_TYPES["object"], lambda v, n: len(v) > n, "has {size} entries, at most {n} allowed"),
    "minItems": (_TYPES["array"], lambda v, n: len(v) < n, "has {size} items, needs at least {n}"),
    "maxItems": (_TYPES["array"], lambda v, n: len(v) > n, "has {size} items, at most {n} allowed"),
    "minLength": (_TYPES["string"], lambda v, n: len(v) < n, "{value} is shorter than {n} characters"),
    "maxLength": (_TYPES["string"], lambda v, n: len(v) > n, "{value} is longer than {n} characters"),
    "minimum": (_is_number, lambda v, n: v < n, "{value} is less than the minimum {n}"),
    "maximum": (_is_number, lambda v, n: v > n, "{value} is more than the maximum {n}"),
    "exclusiveMinimum": (_is_number, lambda v, n: v <= n, "{value} must be greater than {n}"),
    "exclusiveMaximum": (_is_number, lambda v, n: v >= n, "{value} must be less than {n}"),
}

# Keywords are checked in this order, so the most telling problem comes first.
# (additionalItems and then/else are handled by items and if.)
_KEYWORDS = (
    "type enum const required dependencies additionalProperties propertyNames minProperties maxProperties"
    " properties patternProperties minItems maxItems uniqueItems items contains"
    " minLength maxLength pattern minimum maximum exclusiveMinimum exclusiveMaximum multipleOf"
    " allOf anyOf oneOf not if"
).split()

#: Every keyword that checks something here: all of Draft 7's (``jsonschema.Draft7Validator.VALIDATORS``)
#: but ``format``, which the CLI does not check either (it passes no format checker).
VALIDATION_KEYWORDS = frozenset(_KEYWORDS) | {"$ref", "additionalItems", "then", "else"}

#: Keywords that check nothing (notes for people and tools), and ``definitions``, a place for schemas that
#: ``$ref`` points to. Also allowed: any name starting with ``x-``, whose value is not looked at.
ANNOTATION_KEYWORDS = frozenset(
    "title description default examples $comment $schema deprecated readOnly writeOnly format"
    " contentMediaType contentEncoding definitions $defs".split()
)

# Where a schema holds other schemas, for check_schema's walk (the values of other keywords are data).
_ONE_SCHEMA = {
    "additionalProperties", "additionalItems", "propertyNames", "items", "contains", "not", "if", "then", "else"
}
_SCHEMA_LIST = {"allOf", "anyOf", "oneOf", "items"}
_SCHEMA_MAP = {"properties", "patternProperties", "definitions", "$defs", "dependencies"}

# Keywords of later drafts (2019-09, 2020-12): the CLI's Draft 7 validator ignores them, so do not use them.
_LATER_DRAFTS = {
    "dependentRequired": "write 'dependencies: {a: [b]}' (b is required when a is given)",
    "dependentSchemas": "write 'dependencies: {a: {...schema...}}' (the schema applies when a is given)",
    "prefixItems": "write 'items' as a list of schemas, one per position",
    "unevaluatedProperties": "use 'additionalProperties' next to 'properties'",
    "unevaluatedItems": "use 'additionalItems' next to a list of 'items'",
    "minContains": "Draft 7 has only 'contains' (at least one item); count items with 'items' and 'minItems'",
    "maxContains": "Draft 7 has only 'contains' (at least one item)",
    "$anchor": "refer to the schema by its JSON pointer, e.g. '$ref: #/definitions/x'",
    "$dynamicRef": "use '$ref' with a JSON pointer, e.g. '#/definitions/x'",
    "$dynamicAnchor": "use '$ref' with a JSON pointer, e.g. '#/definitions/x'",
    "$recursiveRef": "use '$ref' with a JSON pointer, e.g. '#' for the whole schema",
    "$recursiveAnchor": "use '$ref' with a JSON pointer, e.g. '#' for the whole schema",
    "$vocabulary": "remove it (it belongs in meta-schemas)",
}


def _pointer(path: Path) -> str:
    """``("properties", "a/b")`` -> ``"/properties/a~1b"``: a JSON pointer (RFC 6901), as ``$ref`` uses."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _where(location: str) -> str:
    return f"at {location}" if location else "at the top level"  # "" points at the whole schema


def _refusal(keyword: Any, location: str) -> str:
    """Why ``keyword`` is refused, and what to write instead."""
    head = f"keyword {str(keyword)!r} {_where(location)} is not supported by dstack's SDK validator"
    if keyword in _LATER_DRAFTS:
        why = "it is from a JSON Schema draft later than 7, which dstack uses (the CLI would ignore it)"
        return f"{head}: {why}; instead, {_LATER_DRAFTS[keyword]}"
    if keyword == "$id":
        return f"{head}: inside a schema, '$id' changes what '$ref's refer to; it is allowed only at the top level"
    return (f"{head}: it is not a JSON Schema Draft 7 keyword, so nothing would check it; "
            f"check its spelling, or name a note 'x-{keyword}'")


def check_schema(schema: Any) -> None:
    """Refuse a schema that uses a keyword this module does not evaluate (``SchemaError`` names it and where).

    Walks every schema inside ``schema`` (``properties``, ``items``, ``definitions``...) and every
    target of a ``$ref``, even ones no workflow reaches. ``jsonschema`` would ignore an unknown
    keyword; refusing it here means the SDK and the CLI never judge a workflow differently unnoticed.

        >>> check_schema({"properties": {"a": {"type": "object", "description": "A", "x-ui": "tabs"}}})
        >>> try:
        ...     check_schema({"properties": {"a": {"requird": ["b"]}}})
        ... except SchemaError as e:
        ...     print(str(e).split(":")[0])
        keyword 'requird' at /properties/a is not supported by dstack's SDK validator
    """
    if not isinstance(schema, (dict, bool)):
        raise SchemaError("the schema must be a mapping")
    seen: Set[int] = set()
    refs: List[str] = []
    _walk(schema, "", True, seen, refs)
    validator = _Validator(schema)
    while refs:  # targets of $ref not reached above, e.g. under an 'x-...' key
        ref = refs.pop()
        _walk(validator.resolve(ref), ref[1:], False, seen, refs)


def _walk(node: Any, location: str, top: bool, seen: Set[int], refs: List[str]) -> None:
    if not isinstance(node, dict) or id(node) in seen:
        return  # true/false, or seen already; a node of the wrong type is reported when validating
    seen.add(id(node))
    for keyword, value in node.items():
        here = location + _pointer((keyword,))
        if keyword == "$ref":
            refs.append(value)
        elif keyword not in VALIDATION_KEYWORDS and keyword not in ANNOTATION_KEYWORDS:
            if not (isinstance(keyword, str) and keyword.startswith("x-")) and not (keyword == "$id" and top):
                raise SchemaError(_refusal(keyword, location))
        if keyword in _ONE_SCHEMA:
            _walk(value, here, False, seen, refs)
        if keyword in _SCHEMA_LIST and isinstance(value, list):
            for i, sub in enumerate(value):
                _walk(sub, f"{here}/{i}", False, seen, refs)
        if keyword in _SCHEMA_MAP and isinstance(value, dict):
            for name, sub in value.items():
                _walk(sub, f"{here}{_pointer((name,))}", False, seen, refs)


class _Validator:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.active_refs: Set[Tuple[str, Path]] = set()  # to detect $ref loops

    def check(self, instance: Any, schema: Any, path: Path) -> Generator[SchemaViolation, None, None]:
        if schema is True:
            return
        if schema is False:
            yield SchemaViolation(path, "false", f"{_show(instance)} is not allowed here")
            return
        if not isinstance(schema, dict):
            raise SchemaError(f"the schema must be a mapping (or true/false), got {_show(schema)}")
        if "$ref" in schema:  # Draft 7: keywords next to $ref are ignored
            yield from self._ref(schema["$ref"], instance, path)
            return
        for keyword in _KEYWORDS:
            if keyword not in schema:
                continue
            if keyword in _LIMITS:
                applies, fails, text = _LIMITS[keyword]
                if applies(instance) and fails(instance, schema[keyword]):
                    size = None if _is_number(instance) else len(instance)
                    message = text.format(value=_show(instance), n=schema[keyword], size=size)
                    yield SchemaViolation(path, keyword, message)
            else:
                yield from getattr(self, "_" + keyword)(schema[keyword], instance, schema, path)

    def first(self, instance: Any, schema: Any, path: Path) -> Optional[SchemaViolation]:
        """The first violation, or None when the instance is valid."""
        violations = self.check(instance, schema, path)
        try:
            return next(violations, None)
        finally:
            violations.close()  # runs the bookkeeping in _ref's `finally` now

    # -- references -----------------------------------------------------------
    def _ref(self, ref: Any, instance: Any, path: Path) -> Iterator[SchemaViolation]:
        key = (str(ref), path)
        if key in self.active_refs:  # same ref on the same value again: endless recursion
            raise SchemaError(f"$ref {ref!r} refers back to itself")
        self.active_refs.add(key)
        try:
            yield from self.check(instance, self.resolve(ref), path)
        finally:
            self.active_refs.discard(key)

    def resolve(self, ref: Any) -> Any:
        """Follow a local reference: ``#`` is the root, ``#/a/b`` a JSON pointer."""
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"unsupported $ref {ref!r}: only local ones like '#/definitions/x'")
        try:
            return resolve_pointer(self.root, ref[1:])
        except LookupError:
            raise SchemaError(f"cannot resolve $ref {ref!r}") from None

    # -- any type -------------------------------------------------------------
    def _type(self, types: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        names = [types] if isinstance(types, str) else list(types)
        unknown = [name for name in names if name not in _TYPES]
        if unknown:
            raise SchemaError(f"unknown type {unknown[0]!r} in the schema")
        if not any(_TYPES[name](instance) for name in names):
            expected = " or ".join(repr(name) for name in names)
            yield SchemaViolation(path, "type", f"{_show(instance)} is not of type {expected}")

    def _enum(self, options: List, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if not any(_equal(instance, option) for option in options):
            allowed = ", ".join(_show(option) for option in options)
            yield SchemaViolation(path, "enum", f"{_show(instance)} is not one of: {allowed}")

    def _const(self, value: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if not _equal(instance, value):
            yield SchemaViolation(path, "const", f"{_show(instance)} must be exactly {_show(value)}")

    # -- objects --------------------------------------------------------------
    def _required(self, names: List, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for name in names if isinstance(instance, dict) else []:
            if name not in instance:
                yield SchemaViolation(path + (name,), "required", f"{name!r} is required")

    def _dependencies(self, needs: Dict, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        """When a key is given: a list names other keys it needs, a schema applies to the whole object."""
        for name in sorted(needs, key=str) if isinstance(instance, dict) else []:
            if name not in instance:
                continue
            if isinstance(needs[name], list):
                for other in needs[name]:
                    if other not in instance:
                        message = f"{other!r} is required when {name!r} is given"
                        yield SchemaViolation(path + (other,), "dependencies", message)
            else:
                yield from self.check(instance, needs[name], path)

    def _additionalProperties(self, extra: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        """Keys matched by neither ``properties`` nor ``patternProperties``."""
        if not isinstance(instance, dict):
            return
        known = schema.get("properties", {})
        patterns = sorted(schema.get("patternProperties", {}))
        allowed = ", ".join(sorted(map(str, known)))
        if patterns:
            allowed += (", or " if allowed else "") + "names matching " + " or ".join(map(repr, patterns))
        hint = f"allowed: {allowed}" if allowed else "no parameters are allowed here"
        for name in sorted(instance, key=str):
            if name in known or any(_search(p, str(name)) for p in patterns):
                continue
            if extra is False:
                message = f"unexpected parameter {name!r}; {hint}"
                yield SchemaViolation(path + (name,), "additionalProperties", message)
            else:
                yield from self.check(instance[name], extra, path + (name,))

    def _propertyNames(self, names: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for name in sorted(instance, key=str) if isinstance(instance, dict) else []:
            problem = self.first(name, names, path + (name,))
            if problem:
                message = f"parameter name {name!r} is not allowed: {problem.message}"
                yield SchemaViolation(path + (name,), "propertyNames", message)

    def _properties(self, props: Dict, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for name in sorted(props, key=str) if isinstance(instance, dict) else []:
            if name in instance:
                yield from self.check(instance[name], props[name], path + (name,))

    def _patternProperties(self, props: Dict, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for name in sorted(instance, key=str) if isinstance(instance, dict) else []:
            for pattern in sorted(props):
                if _search(pattern, str(name)):
                    yield from self.check(instance[name], props[pattern], path + (name,))

    # -- arrays ---------------------------------------------------------------
    def _uniqueItems(self, unique: bool, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for i, item in enumerate(instance) if unique is True and _TYPES["array"](instance) else []:
            twin = next((j for j in range(i) if _equal(instance[j], item)), None)
            if twin is not None:
                yield SchemaViolation(path + (i,), "uniqueItems", f"{_show(item)} repeats item {twin}")

    def _items(self, items: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        """One schema for every item, or a list: one schema per position, then ``additionalItems``."""
        if not _TYPES["array"](instance):
            return
        if not isinstance(items, list):
            for i, item in enumerate(instance):
                yield from self.check(item, items, path + (i,))
            return
        extra = schema.get("additionalItems", True)
        for i, item in enumerate(instance):
            if i < len(items):
                yield from self.check(item, items[i], path + (i,))
            elif extra is False:
                message = f"unexpected item {_show(item)}; at most {len(items)} items allowed"
                yield SchemaViolation(path + (i,), "additionalItems", message)
            else:
                yield from self.check(item, extra, path + (i,))

    def _contains(self, wanted: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if _TYPES["array"](instance):
            if all(self.first(item, wanted, path + (i,)) for i, item in enumerate(instance)):
                message = f"{_show(instance)} has no item matching the 'contains' schema"
                yield SchemaViolation(path, "contains", message)

    # -- strings and numbers (sizes and ranges are in _LIMITS) ----------------
    def _pattern(self, pattern: str, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if isinstance(instance, str) and not _search(pattern, instance):
            message = f"{_show(instance)} does not match the pattern {pattern!r}"
            yield SchemaViolation(path, "pattern", message)

    def _multipleOf(self, step: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if not _is_number(step) or step <= 0:
            raise SchemaError(f"multipleOf must be a positive number, got {step!r}")
        if _is_number(instance) and not _is_multiple(instance, step):
            yield SchemaViolation(path, "multipleOf", f"{_show(instance)} is not a multiple of {step}")

    # -- combining schemas ----------------------------------------------------
    def _allOf(self, schemas: List, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        for sub in schemas:
            yield from self.check(instance, sub, path)

    def _anyOf(self, schemas: List, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        reasons = [self.first(instance, sub, path) for sub in schemas]
        if all(reasons):
            yield self._no_match("anyOf", instance, reasons, path)

    def _oneOf(self, schemas: List, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        reasons = [self.first(instance, sub, path) for sub in schemas]
        matched = [i for i, reason in enumerate(reasons, 1) if reason is None]
        if not matched:
            yield self._no_match("oneOf", instance, reasons, path)
        elif len(matched) > 1:
            message = f"{_show(instance)} matches options {matched[0]} and {matched[1]}; exactly one must match"
            yield SchemaViolation(path, "oneOf", message)

    def _no_match(self, rule: str, instance: Any, reasons: List, path: Path) -> SchemaViolation:
        """Say why each option failed: that is what the author needs to pick one."""
        def brief(v: SchemaViolation) -> str:
            inner = v.path[len(path):]
            return f"{_dotted(inner)}: {v.message}" if inner else v.message

        why = "; ".join(f"option {i}: {brief(v)}" for i, v in enumerate(reasons, 1))
        return SchemaViolation(path, rule, f"{_show(instance)} matches none of the allowed options ({why})")

    def _not(self, forbidden: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        if self.first(instance, forbidden, path) is None:
            message = f"{_show(instance)} is not allowed here (it matches the 'not' schema)"
            yield SchemaViolation(path, "not", message)

    def _if(self, condition: Any, instance: Any, schema: Dict, path: Path) -> Iterator[SchemaViolation]:
        branch = "then" if self.first(instance, condition, path) is None else "else"
        if branch in schema:
            yield from self.check(instance, schema[branch], path)


def iter_violations(instance: Any, schema: Any) -> Iterator[SchemaViolation]:
    """Yield every violation in a deterministic order: keyword order, then sorted keys."""
    check_schema(schema)  # now, not when iterating
    return _Validator(schema).check(instance, schema, ())


def validate(instance: Any, schema: Any) -> None:
    """Return None if valid, else raise SchemaError listing every violation, the first one first."""
    violations = list(iter_violations(instance, schema))
    if violations:
        message = str(violations[0])
        if len(violations) > 1:
            others = "".join(f"\n  - {v}" for v in violations[1:])
            message += f"\n{len(violations) - 1} more problem(s):{others}"
        raise SchemaError(message, violations)
