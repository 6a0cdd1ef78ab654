"""YAML files with the line of every key and item, and their checks against a JSON schema.

Each problem is a :class:`~dstack.errors.ConfigError` naming the file, the line and the field.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from dstack import validated
from dstack.errors import ConfigError


class _Located:
    """Marks a loaded mapping or list with the 1-based line of each key or item."""

    line: int = 0
    lines: dict[Union[str, int], int] = {}  # replaced, never mutated


class LocatedDict(dict, _Located):
    pass


class LocatedList(list, _Located):
    pass


#: What may not follow a ``:`` that starts a plain scalar inside ``[...]`` or ``{...}``.
_NOT_PLAIN_AFTER_COLON = "\0 \t\r\n\x85\u2028\u2029,[]{}"


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader that remembers where every key and item was written.

    It also reads ``[:data]`` as YAML 1.2 does, a list holding ``:data`` (a ``depends-on`` entry naming a tag),
    where PyYAML's YAML 1.1 scanner refuses a plain scalar that starts with ``:`` inside brackets.
    """

    def _colon_starts_plain(self) -> bool:
        """At a ``:`` where a node starts inside brackets (not after a key), followed by a name."""
        return bool(self.flow_level and self.allow_simple_key and self.peek(1) not in _NOT_PLAIN_AFTER_COLON)

    def check_value(self) -> bool:
        return not self._colon_starts_plain() and bool(super().check_value())

    def check_plain(self) -> bool:
        return (self.peek() == ":" and self._colon_starts_plain()) or bool(super().check_plain())

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedDict:
        mapping = LocatedDict(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.lines = {self.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LocatedList:
        items = LocatedList(super().construct_sequence(node, deep=True))
        items.line = node.start_mark.line + 1
        items.lines = {i: item.start_mark.line + 1 for i, item in enumerate(node.value)}
        return items


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)


def load_yaml(path: Path, shown: str) -> Any:
    """Load ``path`` keeping line numbers; ``shown`` is the name used in errors."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        detail = "; ".join(str(part) for part in (e.context, e.problem) if part)
        if e.context_mark and mark and e.context_mark.line != mark.line:
            detail += f" (the construct opened on line {e.context_mark.line + 1})"
        raise ConfigError(f"not valid YAML: {detail}; fix the syntax",
                          file=shown, line=mark.line + 1 if mark else None) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the file: {e}", file=shown) from None


def field_path(path: Sequence[Union[str, int]]) -> str:
    """``("workflows", 0, "name")`` -> ``workflows[0].name``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def line_of(document: Any, path: Sequence[Union[str, int]]) -> Optional[int]:
    """The line where ``path`` was written, or the closest enclosing line."""
    line, node = getattr(document, "line", None), document
    for part in path:
        if isinstance(node, _Located) and part in node.lines:
            line = node.lines[part]
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        line = getattr(node, "line", line) if isinstance(node, _Located) and not node.lines.get(part) else line
    return line


@cache
def _schema(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("dstack.schemas").joinpath(f"{name}.yaml").read_text())


def schema_problem(instance: Any, schema: dict[str, Any]) -> Optional[tuple[list[Union[str, int]], str]]:
    """The most relevant way ``instance`` breaks ``schema``: where (a path) and what is wrong; ``None`` if it fits."""
    import jsonschema  # here, not at the top: loading it takes tens of milliseconds, and only validation needs it

    validator = jsonschema.Draft7Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = next((k for k in error.validator_value if k not in (error.instance or {})), "?")
        return path + [missing], f"'{missing}' is required here"
    if error.validator == "additionalProperties":
        return path, f"{error.message}; remove it or check its spelling"
    if error.validator == "pattern":
        return path, f"{error.instance!r} is not in the expected form"
    return path, error.message


def check_against_schema(document: Any, schema_name: str, shown: str) -> None:
    """Raise a :class:`ConfigError` for the most relevant way ``document`` breaks the schema (a document that
    passed before, :mod:`dstack.validated`, is not checked again)."""
    if validated.is_known_valid(schema_name, document):
        return
    problem = schema_problem(document, _schema(schema_name))
    if problem is not None:
        path, message = problem
        raise ConfigError(message, file=shown, line=line_of(document, path), field=field_path(path) or None)
    validated.remember_valid(schema_name, document)
