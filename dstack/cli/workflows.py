"""The project's workflows as a user looks them up: `dstack workflows` lists them, `dstack run NAME --help`
describes one. Both read only the project's files; nothing is submitted and no service is reached."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import click
import yaml
from rich.markup import escape
from rich.table import Table

from dstack import builtin_providers
from dstack.cli.context import out
from dstack.errors import ConfigError
from dstack.messages import ProviderRepo, ProviderSpec
from dstack.names import env_name
from dstack.planning import workflow_order
from dstack.project import Project, Workflow, find_root, load_project

#: What asks for a workflow's description on `dstack run NAME ...`.
HELP_OPTIONS = ("-h", "--help")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of workflows.")
def workflows(as_json: bool) -> None:
    """List the workflows of the project in the current folder: name, provider and what each is for
    (its `help:`). `dstack run NAME --help` says more about one.

    The --json output is a list of workflows, each with name, provider, provider_repo (the git
    repository of a provider from another repository, else null), help and depends_on.
    """
    root = find_root(Path.cwd())
    assert root is not None  # required: raises without one
    project = load_project(root)
    listing = [summary(w) for w in project.workflows.values()]
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    if not listing:
        out.print("No workflows yet. Add one to [bold].dstack/workflows.yaml[/] (see the README).")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "PROVIDER", "HELP"):
        table.add_column(column, overflow="fold")
    for item in listing:
        provider = item["provider"] + (f" ({item['provider_repo']})" if item["provider_repo"] else "")
        table.add_row(escape(item["name"]), escape(provider), escape(first_line(item["help"])))
    out.print(table)


def summary(workflow: Workflow) -> dict[str, Any]:
    """A workflow as `dstack workflows --json` lists it."""
    repo = workflow.provider if isinstance(workflow.provider, dict) else None
    return {"name": workflow.name, "provider": repo["name"] if repo else str(workflow.provider),
            "provider_repo": repo["repo"] if repo else None, "help": workflow.help or "",
            "depends_on": list(workflow.depends_on)}


def asks_help(args: list[str]) -> bool:
    """Whether the arguments of `dstack run WORKFLOW ARGS` ask for its description: ``-h`` or ``--help``
    where an option may stand (not as the value of ``--name value``, nor after ``--``: the provider's)."""
    items = iter(args)
    for item in items:
        if item == "--":
            return False
        if item in HELP_OPTIONS:
            return True
        if item.startswith("--") and "=" not in item and item not in ("--detach", "--cache", "--no-cache"):
            next(items, None)  # its value
    return False


def describe(project: Project, name: str) -> str:
    """What `dstack run NAME --help` prints: the workflow, its provider, help, dependencies, parameters,
    the variables of its run with the command-line options that override them, and the options of its
    provider (a built-in one's, which override its parameters) or that it takes arguments (another one)."""
    workflow = project.workflow(name)
    item = summary(workflow)
    provider = item["provider"] + (f" from {item['provider_repo']}" if item["provider_repo"] else "")
    if workflow.image_only:
        provider += " (the workflow names an image and no provider)"
    try:
        spec: Union[ProviderSpec, ProviderRepo, None] = project.provider_for(workflow)
    except ConfigError:
        spec = None  # an unknown provider: `dstack run` says so
    builtin = isinstance(spec, ProviderSpec) and spec.builtin
    rest = "[OPTIONS ...] [-d]" if builtin else "[ARGS ...] [-d] [-- ARGS ...]"
    lines = [f"Usage: dstack run {name} [--VARIABLE VALUE ...] {rest}", "",
             f"Workflow {name}, provider {provider}."]
    if workflow.help:
        lines += ["", *(f"  {line}" for line in workflow.help.strip().splitlines())]
    if workflow.depends_on:
        lines += ["", f"Depends on: {', '.join(workflow.depends_on)} (their artifacts are its inputs)"]
    if workflow.cache:
        lines += ["", "Job caching: on (cache: true): a job identical to an earlier done one reuses its result; "
                      "--no-cache runs every job"]
    if workflow.data:
        parameters = yaml.safe_dump(workflow.data, sort_keys=False, default_flow_style=False).rstrip()
        lines += ["", "Parameters (.dstack/workflows.yaml):", *(f"  {line}" for line in parameters.splitlines())]
    variables = run_variables(project, name)
    if variables:
        rows = [(f"--{v} {value}", f"${env_name(v)}", f"({section})") for v, (value, section) in variables.items()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines += ["", "Variables (.dstack/variables.yaml; override with --NAME VALUE; the jobs read them as $NAME):"]
        lines += [f"  {option:<{widths[0]}}  {env:<{widths[1]}}  {section}" for option, env, section in rows]
    return "\n".join(lines + provider_arguments(name, spec))


def provider_arguments(name: str, spec: Union[ProviderSpec, ProviderRepo, None]) -> list[str]:
    """The lines of `dstack run NAME --help` about what NAME's provider takes after its name: a built-in
    provider's options (as argparse lists them), each overriding a parameter for this run; that another
    provider gets what is no variable as its arguments (``self.provider_args``)."""
    if spec is None:
        return []
    if isinstance(spec, ProviderSpec) and spec.builtin:
        options = builtin_providers.options_help(spec.name, f"dstack run {name}")
        return ["", f"Options of provider {spec.name}, after the workflow's name: each overrides its parameter",
                "for this run (-e is merged into environment, the resource options into resources):",
                *(f"  {line}" if line else "" for line in options.splitlines())]
    where = (f".dstack/providers.yaml: image {spec.image}, commands: {' && '.join(spec.commands)}"
             if isinstance(spec, ProviderSpec) else f"provider {spec.name} of {spec.url}")
    return ["", f"Arguments of provider {spec.name} ({where}):",
            "  the ARGS that are no variable go to it as they are, and everything after `--` as written",
            "  (self.provider_args in the SDK), to read them as it likes (with argparse, for example)."]


def run_variables(project: Project, name: str) -> dict[str, tuple[Any, str]]:
    """The variables a run of workflow ``name`` knows (the ones `--NAME VALUE` may override), each with the
    value ``name`` itself sees (or the first workflow that has it) and the section it comes from."""
    found: dict[str, tuple[Any, str]] = {}
    sections = project.variables
    for section in [name, "global", *(w.name for w in reversed(workflow_order(project, name)))]:
        for variable, value in sections.get(section, {}).items():
            found.setdefault(variable, (value, f"variables.{section}"))
    return dict(sorted(found.items()))


def first_line(text: Optional[str]) -> str:
    return (text or "").strip().split("\n")[0]
