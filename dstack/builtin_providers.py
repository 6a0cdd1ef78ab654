"""The built-in providers (``dstack/providers/``) as the CLI sees them: what runs them, their schemas, and
``dstack run NAME ARGS``.

A workflow that uses a built-in provider is checked against its schema before the run is submitted,
so a bad parameter is named at once and nothing starts. The provider checks it again in its container,
as any provider does.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Sequence
from functools import cache
from typing import Any, Optional

from dstack import defaults, providers
from dstack.errors import ConfigError
from dstack.located_yaml import field_path, schema_problem
from dstack.messages import ProviderSpec
from dstack.providers.common import ArgumentError, BuiltinProvider, ParameterError, aliases, current_parameters
from dstack.sdk.schemas import load_schema

#: Where the built-in providers are in a provider's container: in the SDK bundle (``workers/sdk_bundle.py``).
CONTAINER_PROVIDERS_DIR = f"{defaults.CONTAINER_DSTACK_DIR}/sdk/site/dstack/providers"


def is_builtin(name: str) -> bool:
    return name in providers.NAMES


def names() -> list[str]:
    return list(providers.NAMES)


def provider_spec(name: str) -> ProviderSpec:
    """The container that runs built-in provider ``name``."""
    return ProviderSpec(name=name, image=defaults.BUILTIN_PROVIDER_IMAGE, builtin=True,
                        commands=[f"python3 {CONTAINER_PROVIDERS_DIR}/{name}/main.py"])


@cache
def schema(name: str) -> dict[str, Any]:
    """The schema of built-in provider ``name``, self-contained (common parameters inlined)."""
    return load_schema(str(providers.FOLDER / name / "schema.yaml"))


@cache
def provider_class(name: str) -> type[BuiltinProvider]:
    """The class of built-in provider ``name`` (its module is imported, nothing runs)."""
    module = importlib.import_module(f"dstack.providers.{name}.main")
    return next(cls for cls in vars(module).values() if inspect.isclass(cls) and issubclass(cls, BuiltinProvider)
                and cls.__module__ == module.__name__)


def parameter_problem(name: str, data: dict[str, Any]) -> Optional[ConfigError]:
    """What is wrong with ``data`` as the parameters of built-in provider ``name``, or ``None``.

    The error's field is the parameter's path (``resources.memory``); its message says what is
    wrong and what the parameter is. Older names of parameters (``script`` for ``file``) are
    accepted as the provider's container accepts them; one given twice, differently, is a problem.
    """
    older = aliases(schema(name))
    parameters = [key for key in schema(name)["properties"] if key not in older]
    for key in data:
        if key not in parameters and key not in older:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return ConfigError(f"provider {name} has no parameter '{key}'; {hint}its parameters are "
                               f"{', '.join(parameters)}", field=key)
    found = schema_problem(data, schema(name))
    if found is None:
        try:
            current_parameters(schema(name), data)
        except ParameterError as e:
            return ConfigError(e.message, field=e.field)
        return None
    path, message = found
    described, description = _description(schema(name), path)
    return ConfigError(message + (f" ({described}: {description})" if description else ""),
                       field=field_path(path) or None)


def parameter_notes(name: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    """What the CLI tells about how the parameters ``data`` of built-in provider ``name`` were read, as
    ``(parameter, note)``: ``("version", "3.1 read as 3.10; quote it: '3.10'")``. ``data`` has no
    :func:`parameter_problem`."""
    return current_parameters(schema(name), data)[1]


def parameters_from_args(name: str, args: Sequence[str]) -> dict[str, Any]:
    """The parameters ``dstack run NAME ARGS`` stands for, checked against the schema.

    Raises:
        ConfigError: the arguments are wrong, or make wrong parameters; the message names them.
    """
    try:
        data = provider_class(name).parameters_from_args(list(args))
    except ArgumentError as e:
        raise ConfigError(f"dstack run {name}: {e}") from None
    problem = parameter_problem(name, data)
    if problem is not None:
        raise ConfigError(f"dstack run {name}: parameter '{problem.field}': {problem.message}") from None
    return data


def _description(node: dict[str, Any], path: list[Any]) -> tuple[str, str]:
    """The parameter at ``path`` (or the closest one above it that has a description), and its description."""
    found: tuple[str, str] = ("", "")
    for part in path:
        if not isinstance(part, str):
            continue
        node = (node.get("properties") or {}).get(part) or {}
        if isinstance(node, dict) and node.get("description"):
            found = (part, " ".join(str(node["description"]).split()))
    return found
