"""Check workflow parameters against a JSON Schema (Draft 7), standard library only.

Providers run inside arbitrary user images where nothing can be installed, so this
is a small, readable stand-in for the ``jsonschema`` package. JSON Schema in brief:

* A schema is a mapping of *keywords*, each an independent check (here: a ``_<keyword>``
  method, or a row of ``_LIMITS``). ``true`` accepts anything, ``false`` nothing.
* A keyword only looks at values of "its" type: ``minLength`` ignores numbers,
  ``properties`` ignores lists. Use ``type`` to demand a type.
* Unknown keywords (``format``, ``default``, ``description``...) are ignored.

    >>> schema = {"properties": {"url": {"type": "string"}}, "required": ["url"]}
    >>> [str(v) for v in iter_violations({"url": 1}, schema)]
    ["field 'url': 1 is not of type 'string' (rule: type)"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .schemas import resolve_pointer

__all__ = ["SchemaError", "SchemaViolation", "iter_violations", "validate"]

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
    "type enum const required additionalProperties propertyNames minProperties maxProperties"
    " properties patternProperties minItems maxItems uniqueItems items contains"
    " minLength maxLength pattern minimum maximum exclusiveMinimum exclusiveMaximum multipleOf"
    " allOf anyOf oneOf not if"
).split()


class _Validator:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.active_refs: Set[Tuple[str, Path]] = set()  # to detect $ref loops

    def check(self, instance: Any, schema: Any, path: Path) -> Iterator[SchemaViolation]:
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
    def _type(self, types: Any, instance: Any, schema: Dict, path: Path):
        names = [types] if isinstance(types, str) else list(types)
        unknown = [name for name in names if name not in _TYPES]
        if unknown:
            raise SchemaError(f"unknown type {unknown[0]!r} in the schema")
        if not any(_TYPES[name](instance) for name in names):
            expected = " or ".join(repr(name) for name in names)
            yield SchemaViolation(path, "type", f"{_show(instance)} is not of type {expected}")

    def _enum(self, options: List, instance: Any, schema: Dict, path: Path):
        if not any(_equal(instance, option) for option in options):
            allowed = ", ".join(_show(option) for option in options)
            yield SchemaViolation(path, "enum", f"{_show(instance)} is not one of: {allowed}")

    def _const(self, value: Any, instance: Any, schema: Dict, path: Path):
        if not _equal(instance, value):
            yield SchemaViolation(path, "const", f"{_show(instance)} must be exactly {_show(value)}")

    # -- objects --------------------------------------------------------------
    def _required(self, names: List, instance: Any, schema: Dict, path: Path):
        for name in names if isinstance(instance, dict) else []:
            if name not in instance:
                yield SchemaViolation(path + (name,), "required", f"{name!r} is required")

    def _additionalProperties(self, extra: Any, instance: Any, schema: Dict, path: Path):
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

    def _propertyNames(self, names: Any, instance: Any, schema: Dict, path: Path):
        for name in sorted(instance, key=str) if isinstance(instance, dict) else []:
            problem = self.first(name, names, path + (name,))
            if problem:
                message = f"parameter name {name!r} is not allowed: {problem.message}"
                yield SchemaViolation(path + (name,), "propertyNames", message)

    def _properties(self, props: Dict, instance: Any, schema: Dict, path: Path):
        for name in sorted(props, key=str) if isinstance(instance, dict) else []:
            if name in instance:
                yield from self.check(instance[name], props[name], path + (name,))

    def _patternProperties(self, props: Dict, instance: Any, schema: Dict, path: Path):
        for name in sorted(instance, key=str) if isinstance(instance, dict) else []:
            for pattern in sorted(props):
                if _search(pattern, str(name)):
                    yield from self.check(instance[name], props[pattern], path + (name,))

    # -- arrays ---------------------------------------------------------------
    def _uniqueItems(self, unique: bool, instance: Any, schema: Dict, path: Path):
        for i, item in enumerate(instance) if unique is True and _TYPES["array"](instance) else []:
            twin = next((j for j in range(i) if _equal(instance[j], item)), None)
            if twin is not None:
                yield SchemaViolation(path + (i,), "uniqueItems", f"{_show(item)} repeats item {twin}")

    def _items(self, items: Any, instance: Any, schema: Dict, path: Path):
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

    def _contains(self, wanted: Any, instance: Any, schema: Dict, path: Path):
        if _TYPES["array"](instance):
            if all(self.first(item, wanted, path + (i,)) for i, item in enumerate(instance)):
                message = f"{_show(instance)} has no item matching the 'contains' schema"
                yield SchemaViolation(path, "contains", message)

    # -- strings and numbers (sizes and ranges are in _LIMITS) ----------------
    def _pattern(self, pattern: str, instance: Any, schema: Dict, path: Path):
        if isinstance(instance, str) and not _search(pattern, instance):
            message = f"{_show(instance)} does not match the pattern {pattern!r}"
            yield SchemaViolation(path, "pattern", message)

    def _multipleOf(self, step: Any, instance: Any, schema: Dict, path: Path):
        if not _is_number(step) or step <= 0:
            raise SchemaError(f"multipleOf must be a positive number, got {step!r}")
        if _is_number(instance):
            try:  # exact arithmetic on the numbers as written, so 0.3 is a multiple of 0.1
                ok = Fraction(repr(instance)) % Fraction(repr(step)) == 0
            except ValueError:  # inf or nan
                ok = False
            if not ok:
                yield SchemaViolation(path, "multipleOf", f"{_show(instance)} is not a multiple of {step}")

    # -- combining schemas ----------------------------------------------------
    def _allOf(self, schemas: List, instance: Any, schema: Dict, path: Path):
        for sub in schemas:
            yield from self.check(instance, sub, path)

    def _anyOf(self, schemas: List, instance: Any, schema: Dict, path: Path):
        reasons = [self.first(instance, sub, path) for sub in schemas]
        if all(reasons):
            yield self._no_match("anyOf", instance, reasons, path)

    def _oneOf(self, schemas: List, instance: Any, schema: Dict, path: Path):
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

    def _not(self, forbidden: Any, instance: Any, schema: Dict, path: Path):
        if self.first(instance, forbidden, path) is None:
            message = f"{_show(instance)} is not allowed here (it matches the 'not' schema)"
            yield SchemaViolation(path, "not", message)

    def _if(self, condition: Any, instance: Any, schema: Dict, path: Path):
        branch = "then" if self.first(instance, condition, path) is None else "else"
        if branch in schema:
            yield from self.check(instance, schema[branch], path)


def iter_violations(instance: Any, schema: Any) -> Iterator[SchemaViolation]:
    """Yield every violation in a deterministic order: keyword order, then sorted keys."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaError("the schema must be a mapping")
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
