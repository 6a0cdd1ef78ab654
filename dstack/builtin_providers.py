"""The built-in providers (``dstack/providers/``) as the CLI sees them: what runs them, their schemas, and
``dstack run NAME ARGS``.

A workflow that uses a built-in provider is checked against its schema before the run is submitted,
so a bad parameter is named at once and nothing starts. The provider checks it again on the worker,
as any provider does.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import posixpath
from collections.abc import Sequence
from functools import cache
from typing import Any, Optional

from dstack import defaults, providers
from dstack.errors import ConfigError
from dstack.located_yaml import field_path, schema_problem
from dstack.messages import ProviderSpec
from dstack.providers.common import ArgumentError, BuiltinProvider, ParameterError, aliases, current_parameters
from dstack.sdk.resources import current_resources
from dstack.sdk.schemas import load_schema

#: Where the built-in providers are in a provider's container: in the SDK bundle (``workers/sdk_bundle.py``).
CONTAINER_PROVIDERS_DIR = f"{defaults.CONTAINER_DSTACK_DIR}/sdk/site/dstack/providers"


def is_builtin(name: str) -> bool:
    return name in providers.NAMES


def names() -> list[str]:
    return list(providers.NAMES)


def provider_spec(name: str) -> ProviderSpec:
    """The task's provider for built-in provider ``name``. A worker runs it by its name in its provider host
    (``workers/provider_process.py``); the image and commands are what a worker of an earlier version, which
    runs every provider in a container, runs in a mixed fleet."""
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
    accepted as the provider accepts them; one given twice, differently, is a problem.
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


# ----------------------------------------------------------- dstack run WORKFLOW --OPTION VALUE


def options_help(name: str, prog: str) -> str:
    """The options of built-in provider ``name`` that override a workflow's parameters (``dstack run
    WORKFLOW --gpu 2``), as argparse lists them; ``prog`` is the command they are shown for."""
    return provider_class(name).options_parser(prog).format_help().rstrip()


def option_names(name: str) -> list[str]:
    """The options of built-in provider ``name`` given after a workflow's name, each as ``-r/--requirements``."""
    parser = provider_class(name).options_parser(f"dstack run {name}")
    return ["/".join(action.option_strings) for action in parser._actions if action.option_strings]


def override_parameters(name: str, data: dict[str, Any], args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``data``, the parameters of a workflow of built-in provider ``name``, with the parameters the options
    ``args`` stand for over them (``dstack run WORKFLOW --gpu 2 --memory 32GB``); and the arguments of
    ``args`` that are none of its options, in order (``data`` unchanged then).

    An option replaces its parameter, except ``-e`` (merged into ``environment`` by name) and the
    resources (merged into ``resources`` key by key: ``--gpu 2`` keeps the workflow's GPU model).
    Artifacts (``-a``) are relative to the working directory, the workflow's or ``-w``'s. An older name
    of a parameter an option sets is dropped (``python: 3.9`` under ``--version 3.11``).

    Raises:
        ConfigError: an option's value is wrong or missing; the message names it.
    """
    try:
        given, unknown = provider_class(name).parameters_from_options(list(args))
    except ArgumentError as e:
        raise ConfigError(f"provider {name}: {e}") from None
    if unknown:
        return data, unknown
    merged = {key: value for key, value in data.items() if aliases(schema(name)).get(key) not in given}
    for key, value in given.items():
        if key == "environment" and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key == "resources":
            merged[key] = _merge_resources(merged.get(key), value)
        else:
            merged[key] = value
    working_dir = merged.get("working_dir")
    if "artifacts" in given and isinstance(working_dir, str) and working_dir.strip("./"):
        merged["artifacts"] = [posixpath.normpath(posixpath.join(working_dir, a)) for a in given["artifacts"]]
    return merged, []


def _merge_resources(base: Any, override: dict[str, Any]) -> Any:
    """The ``resources`` of a workflow (``base``) with those of options over them, key by key; the GPUs
    too (``--gpu 2`` over ``gpu: {count: 1, name: A100}`` is ``{count: 2, name: A100}``)."""
    if not isinstance(base, dict):
        return override
    merged = {**base, **{key: value for key, value in override.items() if key != "gpu"}}
    if "gpu" in override:
        try:
            merged = current_resources(merged)  # early dstack's MODEL/gpu: N as gpu: {count: N, name: MODEL}
        except ValueError:
            return merged  # said twice already: the check names it
        merged["gpu"] = _gpu_merged(merged.get("gpu"), override["gpu"])
    return merged


def _gpu_merged(base: Any, override: Any) -> Any:
    def as_dict(gpu: Any) -> dict[str, Any]:
        if isinstance(gpu, dict):
            return dict(gpu)
        return {} if gpu is None or isinstance(gpu, bool) else {"count": gpu}
    gpu = {**as_dict(base), **as_dict(override)}
    return gpu["count"] if set(gpu) == {"count"} else gpu


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
