"""Planning a run: the workflows it needs, in dependency order, with variables substituted.

Everything is checked before anything is submitted: unknown workflows, dependency cycles,
unknown variables, ``${{ name }}`` placeholders that name no variable, and two variables that would
reach the jobs as one environment variable.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from dstack import builtin_providers, validated
from dstack.errors import ConfigError, ConfigWarning
from dstack.messages import ProviderRepo, ProviderSpec, TagRef, WorkflowSpec
from dstack.names import env_name
from dstack.project import IMAGE_PROVIDER, Project, Workflow

#: ``${{ name }}``; a name may hold ``-``, as early projects wrote them (``${{ batch-size }}``)
_PLACEHOLDER = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}")
_WORKFLOWS_FILE = ".dstack/workflows.yaml"
_VARIABLES_FILE = ".dstack/variables.yaml"


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--epochs", "100", "--lr=0.1"]`` -> ``{"epochs": "100", "lr": "0.1"}``.

    Raises:
        ConfigError: an argument is not ``--name value`` or ``--name=value``.
    """
    overrides: dict[str, str] = {}
    items = list(args)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or len(item) < 3:
            raise ConfigError(f"unexpected argument {item!r}; variables are given as --name value")
        name, eq, value = item[2:].partition("=")
        if not eq:
            if not items:
                raise ConfigError(f"--{name} needs a value")
            value = items.pop(0)
        overrides[name] = value
    return overrides


@dataclass
class RunArgs:
    """The ARGS of ``dstack run WORKFLOW ARGS``, split (:func:`split_args`)."""

    #: the variables they override: ``{"epochs": "100"}``
    variables: dict[str, str] = field(default_factory=dict)
    #: the rest, in order, for the workflow's provider: options of a built-in one, arguments of another
    provider_args: list[str] = field(default_factory=list)
    #: ``-d``/``--detach`` was among them
    detach: bool = False
    #: ``--cache`` (True) or ``--no-cache`` (False) was among them, the last one winning; ``None``: neither
    cache: Optional[bool] = None


def split_args(project: Project, target: str, args: Sequence[str]) -> RunArgs:
    """Split the ARGS of ``dstack run TARGET ARGS``: ``--name value`` (or ``--name=value``) where ``name`` is
    a variable of the run overrides it, ``-d``/``--detach`` detaches, ``--cache``/``--no-cache`` turn job caching
    on or off for the run (as they do before ``TARGET``), and the rest goes to the target's provider in order
    (:func:`plan_run` reads it). ``--`` ends what dstack reads: whatever follows it goes
    to the provider as written, a ``-d`` or a variable's name included.

    Raises:
        ConfigError: a variable's option has no value, or ``target`` is no workflow (the message lists them).
    """
    known = _known_variables(project, workflow_order(project, target))
    split = RunArgs()
    items = list(args)
    while items:
        item = items.pop(0)
        if item == "--":
            split.provider_args += items
            break
        if item in ("-d", "--detach"):
            split.detach = True
            continue
        name, eq, value = item[2:].partition("=")
        if item in ("--cache", "--no-cache") and name not in known:  # a variable of that name wins
            split.cache = item == "--cache"
            continue
        if not item.startswith("--") or name not in known:
            split.provider_args.append(item)
            continue
        if not eq:
            if not items:
                raise ConfigError(f"--{name} needs a value (it overrides the variable {name})")
            value = items.pop(0)
        split.variables[name] = value
    return split


def provider_project(project: Project, name: str) -> Project:
    """``project`` with a workflow ``name`` that runs the project's provider ``name`` (of
    ``.dstack/providers.yaml``) with no parameters of its own: what ``dstack run NAME ARGS`` runs for a
    provider that is no workflow, its ARGS going to the provider (``self.provider_args`` in the SDK)."""
    workflow = Workflow(name=name, provider=name, data={}, help=f"the provider {name} of .dstack/providers.yaml, "
                                                                 "run with the arguments given to it")
    return dataclasses.replace(project, workflows={**project.workflows, name: workflow})


def workflow_order(project: Project, target: str) -> list[Workflow]:
    """``target`` and every workflow it depends on (not through tags), each once, dependencies first.

    Raises:
        ConfigError: a dependency names no workflow, or the dependencies form a cycle.
    """
    project.workflow(target)
    order: list[Workflow] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise ConfigError("dependency cycle between workflows: " + " -> ".join(cycle), file=_WORKFLOWS_FILE,
                              line=project.workflows[name].line, field=f"workflows.{name}.depends-on")
        state[name] = 1
        workflow = project.workflows[name]
        for entry in workflow.depends_on:
            upstream, _, tag = entry.partition(":")
            if not upstream and tag:
                continue  # ``:TAG``: every artifact of the tagged run (an upload's files), no workflow of the project
            if upstream not in project.workflows:
                known = ", ".join(sorted(project.workflows))
                raise ConfigError(f"workflow '{name}' depends on '{upstream}', which is not defined "
                                  f"(known workflows: {known})", file=_WORKFLOWS_FILE, line=workflow.line,
                                  field=f"workflows.{name}.depends-on")
            if not tag:
                visit(upstream, path + [name])
        state[name] = 2
        order.append(workflow)

    visit(target, [])
    return order


def plan_run(project: Project, target: str, overrides: Optional[dict[str, str]] = None,
             provider_args: Sequence[str] = ()) -> list[WorkflowSpec]:
    """The workflows of a run of ``target``, ready for :class:`~dstack.messages.SubmitRun`.

    ``provider_args`` (:attr:`RunArgs.provider_args`) go to the target's provider: a built-in provider
    reads them as its options, each overriding a parameter of the workflow for this run
    (:func:`~dstack.builtin_providers.override_parameters`); another provider gets them as they are
    (:attr:`WorkflowSpec.provider_args`).

    Raises:
        ConfigError: see :func:`workflow_order`; also an override naming no variable (the
            message lists the known ones), a placeholder naming no variable, or an argument
            that is no option of the target's built-in provider (the message lists its options
            and the variables) or makes a wrong parameter.
    """
    overrides = overrides or {}
    order = workflow_order(project, target)
    sections = project.variables
    known = _known_variables(project, order)
    unknown = sorted(set(overrides) - known)
    if unknown:
        listing = ", ".join(f"--{name}" for name in sorted(known)) or "none"
        raise ConfigError(f"unknown variable --{unknown[0]} (known variables of this run: {listing}); "
                          "define it in .dstack/variables.yaml", file=_VARIABLES_FILE)
    specs = []
    for workflow in order:
        variables = {**sections.get("global", {}), **sections.get(workflow.name, {})}
        variables.update({k: _typed(v) for k, v in overrides.items() if k in variables})
        _check_env_names(project, workflow, variables)
        data = _substitute(workflow.data, variables, workflow, ())
        provider = project.provider_for(workflow)
        builtin = isinstance(provider, ProviderSpec) and provider.builtin
        args = list(provider_args) if workflow.name == target else []
        if builtin and args:
            data = _with_options(workflow, provider.name, data, args, known)
        if builtin:
            _check_builtin_parameters(workflow, provider.name, data)
        entries = [entry.partition(":") for entry in workflow.depends_on]
        specs.append(WorkflowSpec(
            name=workflow.name, data=data,
            provider=None if isinstance(provider, ProviderRepo) else provider,
            provider_repo=provider if isinstance(provider, ProviderRepo) else None,
            depends_on=list(dict.fromkeys(name for name, _, tag in entries if not tag)),
            tagged=[TagRef(workflow=name, tag=tag) for name, _, tag in entries if tag],
            variables={k: v for k, v in variables.items()},
            retry=workflow.retry, max_duration_s=workflow.max_duration_s, runs=_runs_of(provider, data),
            cache=workflow.cache, provider_args=[] if builtin else args,
            registry_auth=workflow.registry_auth, pull_policy=workflow.pull_policy))
    return specs


def _known_variables(project: Project, order: list[Workflow]) -> set[str]:
    """The variables a run of the workflows ``order`` knows: the global ones and those of each of them."""
    known = set(project.variables.get("global", {}))
    for workflow in order:
        known |= set(project.variables.get(workflow.name, {}))
    return known


def _with_options(workflow: Workflow, provider: str, data: dict[str, Any], args: list[str],
                  variables: set[str]) -> dict[str, Any]:
    """``data`` with the options ``args`` of its built-in ``provider`` over it (``dstack run train --gpu 2``).

    Raises:
        ConfigError: an argument is neither an option of the provider nor a variable of the run (the
            message lists both), or makes a wrong parameter (the message names the option's parameter).
    """
    command = f"dstack run {workflow.name}"
    try:
        merged, unknown = builtin_providers.override_parameters(provider, data, args)
    except ConfigError as e:
        raise ConfigError(f"`{command}`: {e.message}") from None
    if unknown:
        first = unknown[0]
        what = f"option {first.partition('=')[0]}" if first.startswith("-") else f"argument {first!r}"
        listing = ", ".join(f"--{name}" for name in sorted(variables)) or "none"
        options = ", ".join(builtin_providers.option_names(provider))
        raise ConfigError(f"`{command}`: unknown {what}: it is neither a variable of this run ({listing}; "
                          f".dstack/variables.yaml) nor an option of provider {provider} ({options}); "
                          f"`{command} --help` describes them")
    problem = builtin_providers.parameter_problem(provider, merged)
    changed = {key for key in merged if key not in data or merged[key] != data[key]}
    if problem is not None and (problem.field or "").split(".")[0].split("[")[0] in changed:
        raise ConfigError(f"`{command} {shlex.join(args)}`: parameter '{problem.field}': {problem.message}")
    return merged


def plan_builtin_run(name: str, args: Sequence[str], working_dir: str = "") -> list[WorkflowSpec]:
    """The one workflow of ``dstack run NAME ARGS``: built-in provider ``name`` with the parameters
    its command line stands for, run in ``working_dir`` (relative to the project root: the folder
    ``dstack run`` was started in) unless the arguments say otherwise; artifacts are then named
    relative to it too.

    Raises:
        ConfigError: the arguments are wrong; the message names them.
    """
    data = builtin_providers.parameters_from_args(name, args)
    if working_dir and working_dir != "." and "working_dir" not in data:
        data["working_dir"] = working_dir  # and artifacts are named from there too
        if "artifacts" in data:
            data["artifacts"] = [posixpath.normpath(posixpath.join(working_dir, a)) for a in data["artifacts"]]
    provider = builtin_providers.provider_spec(name)
    return [WorkflowSpec(name=name, data=data, provider=provider, runs=_runs_of(provider, data))]


def _runs_of(provider: Any, data: dict[str, Any]) -> list[str]:
    """The earlier runs whose artifacts a built-in provider's ``runs`` parameter asks for (tensorboard's):
    the scheduler resolves them and makes their artifacts inputs. A custom provider's ``runs`` is its own."""
    if isinstance(provider, ProviderSpec) and provider.builtin and isinstance(data.get("runs"), list):
        return [str(entry) for entry in data["runs"]]
    return []


def _check_env_names(project: Project, workflow: Workflow, variables: dict[str, Any]) -> None:
    """Refuse two variables of ``workflow`` with different values that reach its jobs as one environment
    variable (``batch-size`` and ``batch_size`` are both ``BATCH_SIZE``)."""
    seen: dict[str, str] = {}
    for name, value in variables.items():
        other = seen.setdefault(env_name(name), name)
        if other != name and variables[other] != value:
            sections = [s for s in ("global", workflow.name) if name in project.variables.get(s, {})]
            section = sections[-1] if sections else "global"
            raise ConfigError(f"variables '{other}' and '{name}' of workflow '{workflow.name}' both reach the jobs "
                              f"as ${env_name(name)}, with different values ({variables[other]!r}, {value!r}); "
                              "rename or remove one of them", file=_VARIABLES_FILE,
                              line=project.variable_lines.get(section, {}).get(name),
                              field=f"variables.{section}.{name}")


def _check_builtin_parameters(workflow: Workflow, provider: str, data: dict[str, Any]) -> None:
    """Refuse parameters the built-in provider would refuse; warn (:class:`ConfigWarning`) of those it
    reads otherwise than written (``version: 3.10``, which YAML reads as 3.1). Parameters that passed with
    nothing to warn of before (:mod:`dstack.validated`) are not checked again."""
    schema_name = f"provider {provider}"
    if validated.is_known_valid(schema_name, data):
        return
    problem = builtin_providers.parameter_problem(provider, data)
    if problem is None:
        notes = builtin_providers.parameter_notes(provider, data)
        for key, note in notes:
            warnings.warn(ConfigWarning(note, file=_WORKFLOWS_FILE, line=workflow.lines.get(key, workflow.line),
                                        field=f"workflows.{workflow.name}.{key}"), stacklevel=2)
        if not notes:
            validated.remember_valid(schema_name, data)
    if problem is not None:
        key = (problem.field or "").split(".")[0].split("[")[0]
        if workflow.image_only:
            provider = f"{IMAGE_PROVIDER} (what a workflow with an image and no provider runs as)"
        raise ConfigError(f"workflow '{workflow.name}', provider {provider}: {problem.message}", file=_WORKFLOWS_FILE,
                          line=workflow.lines.get(key, workflow.line),
                          field=f"workflows.{workflow.name}" + (f".{problem.field}" if problem.field else ""))


def _typed(text: str) -> Any:
    """A command-line value as YAML would read it (``100`` is a number, ``true`` a boolean)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _substitute(value: Any, variables: dict[str, Any], workflow: Workflow, path: tuple[Any, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, workflow, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, workflow, path + (i,)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${{" not in value:
        return value
    for name in _PLACEHOLDER.findall(value):
        if name not in variables:
            field = ".".join(str(p) for p in (f"workflows.{workflow.name}",) + path)
            raise ConfigError(f"${{{{ {name} }}}} names no variable of workflow '{workflow.name}'; define it in "
                              f".dstack/variables.yaml (under global or {workflow.name})", file=_WORKFLOWS_FILE,
                              line=workflow.line, field=field)
    whole = _PLACEHOLDER.fullmatch(value.strip())
    if whole:  # a value that is one placeholder takes the variable's type
        return variables[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)
