"""A project's ``.dstack/`` files: loading, validating, and resolving a workflow.

Every problem is a :class:`~dstack.errors.ConfigError` naming the file, the line and the
field, and saying what to do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from dstack import builtin_providers
from dstack.errors import ConfigError
from dstack.located_yaml import LocatedDict, check_against_schema, line_of, load_yaml
from dstack.messages import ProviderRepo, ProviderSpec, RegistryAuth, RetryPolicy
from dstack.sdk.retry import Retry, parse_duration_s

#: Keys of a workflow that dstack reads itself; every other key is the workflow's data.
SYSTEM_KEYS = ("name", "provider", "help", "depends-on", "depends_on", "retry", "max_duration", "cache",
               "registry_auth", "pull_policy")
#: The provider of a workflow written in the oldest format: ``image`` and ``commands``, no ``provider``.
IMAGE_PROVIDER = "docker"
#: A ``depends-on`` entry: ``WORKFLOW``, ``WORKFLOW:TAG`` or ``:TAG`` (every artifact of the tagged run, such as
#: local data that ``dstack artifacts upload`` stored); as in ``schemas/workflows.yaml``.
_DEPENDENCY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(:[A-Za-z0-9][A-Za-z0-9_.-]*)?|:[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Workflow:
    """A workflow of the project, with its system keys apart from its own data."""

    name: str
    provider: Union[str, dict[str, str]]
    data: dict[str, Any]
    line: int = 0
    #: Workflow names, ``WORKFLOW:TAG`` for the artifacts of a workflow of a tagged run, or ``:TAG`` for all of them.
    depends_on: list[str] = field(default_factory=list)
    #: what its jobs get unless their provider says otherwise
    retry: Optional[RetryPolicy] = None
    max_duration_s: Optional[float] = None
    #: job caching: a job reuses the result of an earlier identical job (``cache: true``; docs/caching.md)
    cache: bool = False
    #: credentials for the registry of its jobs' images, and when workers pull them (docs/images.md)
    registry_auth: Optional[RegistryAuth] = None
    pull_policy: Optional[str] = None
    #: the line of each key of the workflow
    lines: dict[str, int] = field(default_factory=dict)
    #: what the workflow is for (``help:``), shown by `dstack workflows` and `dstack run NAME --help`
    help: Optional[str] = None
    #: no ``provider`` but an ``image``: the oldest format, run by the built-in docker provider
    #: (even where the project's providers.yaml defines a provider of that name)
    image_only: bool = False


@dataclass
class Project:
    """A project folder and its parsed ``.dstack/`` files."""

    root: Path
    workflows: dict[str, Workflow] = field(default_factory=dict)
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the line of each variable in .dstack/variables.yaml, by section
    variable_lines: dict[str, dict[str, int]] = field(default_factory=dict)

    def workflow(self, name: str) -> Workflow:
        """The workflow called ``name``.

        Raises:
            ConfigError: no such workflow; the message lists the known ones.
        """
        if name not in self.workflows:
            known = ", ".join(sorted(self.workflows)) or "none"
            own = f"; the project's providers, run so too: {', '.join(sorted(self.providers))}"
            raise ConfigError(f"no workflow named '{name}' (known workflows: {known}; built-in providers, "
                              f"run as `dstack run PROVIDER ARGS`: {', '.join(builtin_providers.names())}"
                              f"{own if self.providers else ''})", file=".dstack/workflows.yaml")
        return self.workflows[name]

    def provider_for(self, workflow: Workflow) -> Union[ProviderSpec, ProviderRepo]:
        """The provider ``workflow`` names: one of this project's, a built-in one, or one in another
        repository (which the worker fetches). A project's provider hides a built-in one of the same name.

        Raises:
            ConfigError: unknown provider; the message lists the known ones.
        """
        if workflow.image_only:
            return builtin_providers.provider_spec(IMAGE_PROVIDER)
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


def has_project_files(root: Path) -> bool:
    """Whether ``root/.dstack`` holds workflows or providers (a project of providers alone runs them by name)."""
    return any((root / ".dstack" / f"{name}.yaml").exists() for name in ("workflows", "providers"))


def load_project(root: Path) -> Project:
    """Load and validate the ``.dstack/`` files under ``root``; ``workflows.yaml`` may be missing only where
    ``providers.yaml`` is there."""
    project = Project(root=root)
    docs = {}
    for name in ("workflows", "providers", "variables"):
        path, shown = root / ".dstack" / f"{name}.yaml", f".dstack/{name}.yaml"
        if not path.exists():
            if name == "workflows" and not (root / ".dstack" / "providers.yaml").exists():
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
    for i, raw in enumerate(docs.get("workflows", {}).get("workflows", [])):
        if raw["name"] in project.workflows:
            raise ConfigError(f"workflow '{raw['name']}' is defined twice", file=".dstack/workflows.yaml",
                              line=raw.line, field=f"workflows[{i}].name")
        if "depends-on" in raw and "depends_on" in raw:
            raise ConfigError("write depends-on or depends_on, not both", file=".dstack/workflows.yaml",
                              line=raw.line, field=f"workflows[{i}]")
        data = {k: _plain(v) for k, v in raw.items() if k not in SYSTEM_KEYS}
        where = f"workflows[{i}]"
        depends_on = _dependencies(raw, where)
        # _parsed calls each lambda at once, in this iteration: the loop variable is the one meant
        retry = _parsed(lambda: Retry.from_value(_plain(raw["retry"])), raw, "retry", where)  # noqa: B023
        max_duration_s = _parsed(lambda: parse_duration_s(raw["max_duration"], "max_duration"),  # noqa: B023
                                 raw, "max_duration", where)
        project.workflows[raw["name"]] = Workflow(
            name=raw["name"], provider=_plain(raw.get("provider", IMAGE_PROVIDER)), data=data, line=raw.line,
            depends_on=depends_on, retry=RetryPolicy(retry.limit, retry.backoff_s) if retry else None,
            max_duration_s=max_duration_s, lines={str(k): v for k, v in raw.lines.items()},
            help=raw.get("help"), image_only="provider" not in raw, cache=bool(raw.get("cache", False)),
            registry_auth=RegistryAuth(**_plain(raw["registry_auth"])) if "registry_auth" in raw else None,
            pull_policy=raw.get("pull_policy"))
    if "variables" in docs:
        sections = docs["variables"].get("variables", {})
        project.variables = _plain(sections)
        project.variable_lines = {str(name): {str(k): v for k, v in getattr(section, "lines", {}).items()}
                                  for name, section in sections.items()}
    return project


def _dependencies(raw: Any, where: str) -> list[str]:
    """A workflow's ``depends-on`` (or ``depends_on``) entries as ``WORKFLOW``, ``WORKFLOW:TAG`` or ``:TAG``.

    Early dstack wrote a tagged dependency as a one-key map, ``- train: best``; it means ``train:best``.

    Raises:
        ConfigError: a map that is not one workflow and a text tag, or what it stands for is not
            in the expected form; the message says to write ``WORKFLOW:TAG``.
    """
    key = "depends-on" if "depends-on" in raw else "depends_on"
    entries = raw.get(key, [])
    found = []
    for j, entry in enumerate(entries):
        if isinstance(entry, dict):
            shown = ", ".join(f"{k}: {v}" for k, v in entry.items())
            if len(entry) != 1 or not all(isinstance(v, str) for v in entry.values()):
                raise ConfigError(f"depends-on entry {{{shown}}} is not one WORKFLOW: TAG; write it as "
                                  "'WORKFLOW:TAG' (e.g. 'train:best', quoted when the tag looks like a number)",
                                  file=".dstack/workflows.yaml", line=line_of(raw, [key, j]),
                                  field=f"{where}.{key}[{j}]")
            (workflow, tag), = entry.items()
            entry = f"{workflow}:{tag}"
            if not _DEPENDENCY.fullmatch(entry):
                raise ConfigError(f"depends-on entry {{{shown}}}: {entry!r} is not in the expected form; write "
                                  "'WORKFLOW:TAG' with the name of a workflow and a tag",
                                  file=".dstack/workflows.yaml", line=line_of(raw, [key, j]),
                                  field=f"{where}.{key}[{j}]")
        found.append(entry)
    return found


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
