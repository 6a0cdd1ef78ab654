"""A project's ``.dstack/`` files: loading, validating, and resolving a workflow.

Every problem is a :class:`~dstack.errors.ConfigError` naming the file, the line and the
field, and saying what to do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jsonschema
import yaml

from dstack.errors import ConfigError
from dstack.messages import ProviderRepo, ProviderSpec, RetryPolicy
from sdk.retry import Retry, parse_duration_s

#: Keys of a workflow that dstack reads itself; every other key is the workflow's data.
SYSTEM_KEYS = ("name", "provider", "depends-on", "depends_on", "retry", "max_duration")


class _Located:
    """Marks a loaded mapping or list with the 1-based line of each key or item."""

    line: int = 0
    lines: Dict[Union[str, int], int] = {}  # replaced, never mutated


class LocatedDict(dict, _Located):
    pass


class LocatedList(list, _Located):
    pass


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader that remembers where every key and item was written."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LocatedDict:  # type: ignore[override]
        mapping = LocatedDict(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.lines = {self.construct_object(k): k.start_mark.line + 1 for k, _ in node.value}
        return mapping

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LocatedList:  # type: ignore[override]
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


@lru_cache(maxsize=None)
def _schema(name: str) -> Dict[str, Any]:
    return yaml.safe_load(resources.files("dstack.schemas").joinpath(f"{name}.yaml").read_text())


def schema_problem(instance: Any, schema: Dict[str, Any]) -> Optional[Tuple[List[Union[str, int]], str]]:
    """The most relevant way ``instance`` breaks ``schema``: where (a path) and what is wrong; ``None`` if it fits."""
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
    """Raise a :class:`ConfigError` for the most relevant way ``document`` breaks the schema."""
    problem = schema_problem(document, _schema(schema_name))
    if problem is not None:
        path, message = problem
        raise ConfigError(message, file=shown, line=line_of(document, path), field=field_path(path) or None)


@dataclass
class Workflow:
    """A workflow of the project, with its system keys apart from its own data."""

    name: str
    provider: Union[str, Dict[str, str]]
    data: Dict[str, Any]
    line: int = 0
    #: Workflow names, or ``WORKFLOW:TAG`` for the artifacts of a tagged run.
    depends_on: List[str] = field(default_factory=list)
    #: what its jobs get unless their provider says otherwise
    retry: Optional[RetryPolicy] = None
    max_duration_s: Optional[float] = None
    #: the line of each key of the workflow
    lines: Dict[str, int] = field(default_factory=dict)


@dataclass
class Project:
    """A project folder and its parsed ``.dstack/`` files."""

    root: Path
    workflows: Dict[str, Workflow] = field(default_factory=dict)
    providers: Dict[str, ProviderSpec] = field(default_factory=dict)
    variables: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def workflow(self, name: str) -> Workflow:
        """The workflow called ``name``.

        Raises:
            ConfigError: no such workflow; the message lists the known ones.
        """
        if name not in self.workflows:
            from dstack import builtin_providers

            known = ", ".join(sorted(self.workflows)) or "none"
            raise ConfigError(f"no workflow named '{name}' (known workflows: {known}; built-in providers, "
                              f"run as `dstack run PROVIDER ARGS`: {', '.join(builtin_providers.names())})",
                              file=".dstack/workflows.yaml")
        return self.workflows[name]

    def provider_for(self, workflow: Workflow) -> Union[ProviderSpec, ProviderRepo]:
        """The provider ``workflow`` names: one of this project's, a built-in one, or one in another
        repository (which the worker fetches). A project's provider hides a built-in one of the same name.

        Raises:
            ConfigError: unknown provider; the message lists the known ones.
        """
        from dstack import builtin_providers

        if isinstance(workflow.provider, dict):
            return ProviderRepo(url=workflow.provider["repo"], name=workflow.provider["name"])
        if workflow.provider in self.providers:
            return self.providers[workflow.provider]
        if builtin_providers.is_builtin(workflow.provider):
            return builtin_providers.provider_spec(workflow.provider)
        known = ", ".join(sorted(self.providers)) or "none"
        raise ConfigError(f"workflow '{workflow.name}' uses provider '{workflow.provider}', which is "
                          f"neither built in ({', '.join(builtin_providers.names())}) nor defined in "
                          f".dstack/providers.yaml (the project's providers: {known}); check its spelling or "
                          "add it there",
                          file=".dstack/workflows.yaml", line=workflow.lines.get("provider", workflow.line),
                          field=f"workflows.{workflow.name}.provider")


def find_root(start: Path, required: bool = True) -> Optional[Path]:
    """The nearest folder at or above ``start`` that holds ``.dstack/`` (``None`` if there is none
    and it is not ``required``).

    Raises:
        ConfigError: there is none, and it is ``required``.
    """
    for folder in (start, *start.parents):
        if (folder / ".dstack").is_dir():
            return folder
    if not required:
        return None
    raise ConfigError(f"no .dstack/ folder in {start} or above it; run dstack inside a project "
                      "that has .dstack/workflows.yaml")


def load_project(root: Path) -> Project:
    """Load and validate the ``.dstack/`` files under ``root``."""
    project = Project(root=root)
    docs = {}
    for name in ("workflows", "providers", "variables"):
        path, shown = root / ".dstack" / f"{name}.yaml", f".dstack/{name}.yaml"
        if not path.exists():
            if name == "workflows":
                raise ConfigError("the file is missing; create it (see the README), or run a built-in "
                                  "provider without one, e.g. `dstack run python train.py`", file=shown)
            continue
        document = load_yaml(path, shown)
        if document is None:
            document = LocatedDict()
        check_against_schema(document, name, shown)
        docs[name] = document

    for i, raw in enumerate(docs.get("providers", {}).get("providers", [])):
        if raw["name"] in project.providers:
            raise ConfigError(f"provider '{raw['name']}' is defined twice", file=".dstack/providers.yaml",
                              line=raw.line, field=f"providers[{i}].name")
        project.providers[raw["name"]] = ProviderSpec(name=raw["name"], image=raw["image"],
                                                      commands=list(raw["commands"]))
    for i, raw in enumerate(docs["workflows"]["workflows"]):
        if raw["name"] in project.workflows:
            raise ConfigError(f"workflow '{raw['name']}' is defined twice", file=".dstack/workflows.yaml",
                              line=raw.line, field=f"workflows[{i}].name")
        if "depends-on" in raw and "depends_on" in raw:
            raise ConfigError("write depends-on or depends_on, not both", file=".dstack/workflows.yaml",
                              line=raw.line, field=f"workflows[{i}]")
        data = {k: _plain(v) for k, v in raw.items() if k not in SYSTEM_KEYS}
        depends_on = _plain(raw.get("depends-on", raw.get("depends_on", [])))
        where = f"workflows[{i}]"
        retry = _parsed(lambda: Retry.from_value(_plain(raw["retry"])), raw, "retry", where)
        max_duration_s = _parsed(lambda: parse_duration_s(raw["max_duration"], "max_duration"), raw, "max_duration",
                                 where)
        project.workflows[raw["name"]] = Workflow(
            name=raw["name"], provider=_plain(raw["provider"]), data=data, line=raw.line, depends_on=depends_on,
            retry=RetryPolicy(retry.limit, retry.backoff_s) if retry else None, max_duration_s=max_duration_s,
            lines={str(k): v for k, v in raw.lines.items()})
    if "variables" in docs:
        project.variables = _plain(docs["variables"].get("variables", {}))
    return project


def _parsed(parse: Callable[[], Any], raw: Any, key: str, where: str) -> Any:
    """``parse()`` of ``raw[key]`` (``None`` without the key); a ValueError names the file, line and field."""
    if key not in raw:
        return None
    try:
        return parse()
    except ValueError as e:
        raise ConfigError(str(e), file=".dstack/workflows.yaml", line=line_of(raw, [key]),
                          field=f"{where}.{key}") from None


def _plain(value: Any) -> Any:
    """Strip line bookkeeping: plain dicts and lists, ready for msgpack and JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
