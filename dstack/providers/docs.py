"""The reference pages of the built-in providers, generated from their schemas.

``docs/providers/NAME.md`` documents provider ``NAME``: its description, a table of its parameters
and the examples of its ``schema.yaml``, and the help of ``dstack run NAME``; ``docs/providers/README.md``
lists the providers and their common parameters. The schemas are the single source of truth, so the
pages are never edited by hand::

    python -m dstack.providers.docs           # (re)write the pages
    python -m dstack.providers.docs --check   # exit 1, naming them, if some page is not what it would be
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from dstack import builtin_providers, providers
from dstack.providers.common import ALIAS_OF, BuiltinProvider
from dstack.sdk.schemas import load_document, resolve_pointer

#: Where the pages go: ``docs/providers`` of the repository that holds the ``providers`` package.
DOCS_DIR = providers.FOLDER.parent.parent / "docs" / "providers"
#: The terminal width the ``dstack run NAME -h`` text is formatted for, whatever the terminal.
HELP_COLUMNS = 100

_GENERATED = "Generated from `{source}` by `python -m dstack.providers.docs`; do not edit it by hand."


# --------------------------------------------------------------------------- pages


def render(name: str) -> str:
    """The page of built-in provider ``name`` (Markdown)."""
    schema = builtin_providers.schema(name)
    lines = [f"# {name}", "", _text(schema.get("description", "")), "",
             "_" + _GENERATED.format(source=f"dstack/providers/{name}/schema.yaml") + "_", "",
             "## Parameters", ""]
    lines += _table(_rows(schema, schema))
    if "resources" in schema.get("properties", {}):
        lines += ["", _size_note()]
    lines += ["", "## Examples", "",
              "Each example is a workflow of `.dstack/workflows.yaml`; `dstack run WORKFLOW` runs it.", ""]
    examples = schema.get("examples") or []
    for number, example in enumerate(examples, 1):
        workflow = f"{name}-example" + (f"-{number}" if len(examples) > 1 else "")
        lines += ["```yaml", _workflows_yaml(workflow, name, example).rstrip("\n"), "```", ""]
    lines += ["## Command line", "",
              f"`dstack run {name} ARGS` runs the provider without a workflow file (see the [index](README.md)); "
              f"`dstack run {name} -h` shows:", "",
              "```text", command_help(builtin_providers.provider_class(name)).rstrip("\n"), "```"]
    return _page(lines)


def render_index() -> str:
    """``docs/providers/README.md``: the providers, their common parameters, ``dstack run PROVIDER ARGS``."""
    names = builtin_providers.names()
    lines = ["# Built-in providers", "",
             "dstack comes with these providers. A workflow uses one with `provider: NAME` in "
             "`.dstack/workflows.yaml`, with the provider's parameters beside it; `dstack run NAME ARGS` runs one "
             "without a workflow file.", "",
             "_" + _GENERATED.format(source="dstack/providers/*/schema.yaml") + "_", ""]
    lines += [f"- [{name}]({name}.md): {_text(builtin_providers.schema(name).get('description', ''))}"
              for name in names]

    common = _common_parameters(names)
    first = builtin_providers.schema(names[0])
    lines += ["", "## Common parameters", "",
              "Every built-in provider takes these parameters (from `dstack/providers/common.yaml`), besides its "
              "own:", ""]
    lines += _table(_rows({"properties": {key: first["properties"][key] for key in common}}, first), required=False)
    lines += ["", _size_note(), ""]

    options = _common_options()
    lines += ["## Running a provider without a workflow file", "",
              "`dstack run PROVIDER ARGS` runs a built-in provider with the parameters its command line stands for, "
              "checked against its schema before anything is submitted:", "",
              "```bash",
              "dstack run python -r requirements.txt --gpu 1 train.py --epochs 3",
              "dstack run bash -c 'make data' -a data",
              "dstack run curl -o data/input.txt -a data https://example.com/input.txt",
              "```", "",
              "- Options go before the script (or the first positional argument): whatever follows the script is "
              "passed on to it, options included. `dstack run PROVIDER -h` lists the options; each provider's page "
              "shows them.",
              "- Besides its own options, every provider takes the common ones: " + ", ".join(options) + ".",
              "- It runs in the project of the current folder (the nearest folder with `.dstack/` at or above it, or "
              "the current folder itself), snapshotted as for any run; the current folder, relative to the project "
              "root, is the working directory unless `-w` says otherwise.",
              "", "## Options after a workflow's name", "",
              "For a workflow of a built-in provider, `dstack run WORKFLOW ARGS` also takes the provider's options "
              "(those of `dstack run PROVIDER ARGS`, without its positional arguments), each overriding the "
              "workflow's parameter for this run, after its variables are substituted; the result is checked "
              "against the schema as the workflow is:", "",
              "```bash",
              "dstack run train --gpu 2 --memory 32GB --epochs 100   # --epochs: a variable of the run",
              "```", "",
              "`-e` is merged into `environment` and the resource options into `resources`, key by key (`--gpu 2` "
              "keeps the workflow's GPU model); the other options replace their parameter. Anything that is neither "
              "an option nor a variable of the run is refused, naming both; `dstack run WORKFLOW --help` lists them. "
              "See [the CLI](../cli.md#dstack-run).",
              "", "## Names", "",
              "A provider defined in the project's `.dstack/providers.yaml` with the same name as a built-in one hides "
              "the built-in one: `provider: NAME` in `.dstack/workflows.yaml` then means the project's provider. "
              "Likewise `dstack run NAME` runs the project's workflow `NAME` if there is one, else the project's "
              "provider `NAME` (with ARGS as its arguments), and the built-in provider only otherwise."]
    return _page(lines)


def command_help(cls: type[BuiltinProvider]) -> str:
    """The help of ``dstack run NAME``, formatted for :data:`HELP_COLUMNS` columns and the same on every
    Python version (3.13 writes ``-o, --output FILE`` where earlier versions write ``-o FILE, --output FILE``,
    3.9 titles the options "optional arguments", 3.14 may colour it)."""
    parser = cls.parser()
    parser.formatter_class = _StableHelpFormatter
    parser.color = False  # type: ignore[attr-defined]  # Python 3.14+; ignored before
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        text = parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return text.replace("\noptional arguments:\n", "\noptions:\n")


class _StableHelpFormatter(argparse.HelpFormatter):
    """Options as Python 3.9-3.12 write them: ``-o FILE, --output FILE``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        args = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{option} {args}" for option in action.option_strings)


# --------------------------------------------------------------------------- parameters


def parameter_rows(name: str) -> list[tuple[str, bool, str, str]]:
    """The rows of the parameters table of provider ``name``: (dotted name, required, type, description)."""
    schema = builtin_providers.schema(name)
    return list(_rows(schema, schema))


def type_name(node: dict[str, Any], root: Optional[dict[str, Any]] = None) -> str:
    """What a schema accepts, in words: ``integer or string``, ``array of string``, ``object``."""
    node = _resolve(node, root or node)
    alternatives = node.get("oneOf") or node.get("anyOf")
    if alternatives:
        return _unique_or([type_name(a, root) for a in alternatives])
    types = node.get("type")
    if types is None:
        if "properties" in node:
            return "object"
        if "enum" in node:
            return _unique_or([_json_type(v) for v in node["enum"]])
        return "any"
    parts = []
    for kind in types if isinstance(types, list) else [types]:
        items = node.get("items")
        if kind == "array" and isinstance(items, dict) and items:
            item = type_name(items, root)
            parts.append(f"array of ({item})" if " " in item else f"array of {item}")
        else:
            parts.append(kind)
    return _unique_or(parts)


def _rows(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, bool, str, str]]:
    required = _required(node)
    for key, prop in (node.get("properties") or {}).items():
        prop = _resolve(prop, root)
        yield prefix + key, key in required, type_name(prop, root), _description(prop)
        for form in _object_forms(prop, root):
            yield from _rows(form, root, f"{prefix}{key}.")
    for pattern, prop in (node.get("patternProperties") or {}).items():  # named by their `x-name`
        prop = _resolve(prop, root)
        yield prefix + str(prop.get("x-name", pattern)), False, type_name(prop, root), _description(prop)


def _required(node: dict[str, Any]) -> set[str]:
    """The parameters ``node`` requires: those of ``required``, and those it requires unless one of their
    older names (``x-alias-of``) is given (``if: {not: ...older names...}, then: {required: [file]}``)."""
    required = set(node.get("required") or [])
    aliased = {prop.get(ALIAS_OF) for prop in (node.get("properties") or {}).values() if isinstance(prop, dict)}
    if isinstance(node.get("if"), dict) and "not" in node["if"]:
        required |= set((node.get("then") or {}).get("required") or []) & aliased
    return required


def _object_forms(node: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """The object forms of a parameter (itself, or its alternatives) whose keys are listed."""
    forms = [node] + [_resolve(a, root) for a in node.get("oneOf") or node.get("anyOf") or []]
    return [f for f in forms if isinstance(f.get("properties"), dict) and f["properties"]]


def _description(prop: dict[str, Any]) -> str:
    text = _text(prop.get("description", ""))
    if "enum" in prop:
        text += (" " if text else "") + "One of " + ", ".join(_code(v) for v in prop["enum"]) + "."
    if "default" in prop:
        text += (" " if text else "") + f"Default: {_code(prop['default'])}."
    return text


def _size_note() -> str:
    """How sizes are written, from the ``size`` definition of ``common.yaml``."""
    description = _text(load_document(str(providers.FOLDER / "common.yaml"))["definitions"]["size"]["description"])
    return f"Sizes in `resources`: {description[:1].lower()}{description[1:]}"


def _common_parameters(names: Sequence[str]) -> list[str]:
    """The parameters every provider has, defined alike, in the first provider's order."""
    schemas = [builtin_providers.schema(name)["properties"] for name in names]
    return [key for key, value in schemas[0].items() if all(s.get(key) == value for s in schemas[1:])]


def _common_options() -> list[str]:
    """The common options of ``dstack run NAME``, e.g. ```-e/--env NAME=VALUE```."""
    found = []
    for action in BuiltinProvider.parser()._actions:  # the options every provider's parser has
        if isinstance(action, argparse._HelpAction):
            continue
        metavar = action.metavar or action.dest.upper()
        found.append(f"`{'/'.join(action.option_strings)} {metavar}`")
    return found


def _resolve(node: Any, root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` (``#/definitions/x``) followed; other keys beside it win.

    Raises:
        LookupError: the reference leads nowhere.
    """
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if not (isinstance(ref, str) and ref.startswith("#")):
        return node
    target = resolve_pointer(root, ref[1:])
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return {**_resolve(target, root), **siblings}


# --------------------------------------------------------------------------- Markdown


def _table(rows: Iterator[tuple[str, bool, str, str]], required: bool = True) -> list[str]:
    if required:
        lines = ["| Name | Required | Type | Description |", "|------|----------|------|-------------|"]
        return lines + [f"| `{_cell(n)}` | {'yes' if r else 'no'} | {_cell(t)} | {_cell(d)} |" for n, r, t, d in rows]
    lines = ["| Name | Type | Description |", "|------|------|-------------|"]
    return lines + [f"| `{_cell(n)}` | {_cell(t)} | {_cell(d)} |" for n, _, t, d in rows]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _text(text: Any) -> str:
    return " ".join(str(text).split())


def _code(value: Any) -> str:
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", type(None): "null", list: "array", dict: "object"}.get(type(value), "any")


def _unique_or(parts: list[str]) -> str:
    return " or ".join(dict.fromkeys(parts))


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key, as the README writes workflows."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _workflows_yaml(workflow: str, provider: str, parameters: dict[str, Any]) -> str:
    document = {"workflows": [{"name": workflow, "provider": provider, **parameters}]}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1000)


def _page(lines: list[str]) -> str:
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip("\n") + "\n"


# --------------------------------------------------------------------------- python -m dstack.providers.docs


def page_names() -> list[str]:
    """The file names of the pages: ``README.md`` and ``NAME.md`` for each provider."""
    return ["README.md"] + [f"{name}.md" for name in builtin_providers.names()]


def pages() -> dict[str, str]:
    """Every page, by file name (:func:`page_names`)."""
    return {"README.md": render_index(), **{f"{name}.md": render(name) for name in builtin_providers.names()}}


def stale_pages(folder: Path = DOCS_DIR) -> list[str]:
    """The pages of ``folder`` that differ from what would be generated, are missing, or are not generated at all."""
    return _differing(folder, pages()) + _not_generated(folder)


def write_pages(folder: Path = DOCS_DIR) -> list[str]:
    """Write the pages that differ into ``folder``; the names of those written."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = pages()
    written = _differing(folder, expected)
    for name in written:
        with open(folder / name, "w", encoding="utf-8", newline="\n") as f:
            f.write(expected[name])
    return written


def _differing(folder: Path, expected: dict[str, str]) -> list[str]:
    """The pages of ``expected`` that ``folder`` lacks, or holds with another text."""
    return [name for name, text in expected.items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def _not_generated(folder: Path) -> list[str]:
    """The Markdown files of ``folder`` that are no page of a provider."""
    names = set(page_names())
    return sorted(p.name for p in folder.glob("*.md") if p.name not in names) if folder.is_dir() else []


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dstack.providers.docs",
                                     description="Generate docs/providers/*.md from the built-in providers' schemas.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the pages that differ from what would be generated")
    args = parser.parse_args(argv)
    shown = _shown(DOCS_DIR)
    if args.check:
        differing, extra = _differing(DOCS_DIR, pages()), _not_generated(DOCS_DIR)
        for name in differing:
            why = "differs from what would be generated" if (DOCS_DIR / name).is_file() else "is missing"
            print(f"{shown}/{name} {why}", file=sys.stderr)
        for name in extra:
            print(f"{shown}/{name} is not generated: remove it", file=sys.stderr)
        if differing or extra:
            print("run `python -m dstack.providers.docs` to regenerate the pages", file=sys.stderr)
            return 1
        return 0
    for name in write_pages(DOCS_DIR):
        print(f"wrote {shown}/{name}")
    for name in _not_generated(DOCS_DIR):
        print(f"{shown}/{name} is not generated by dstack.providers.docs: remove it if it is stale", file=sys.stderr)
    return 0


def _shown(folder: Path) -> str:
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
