"""The spec's curl example. The project keeps its own copies, and nothing here reads outside the
repository: the spec's text in ``docs/custom-providers.md`` and the example as a project in
``examples/curl``, whose files must be the spec's code blocks verbatim (tests/unit/test_spec_copy.py)."""
from __future__ import annotations

import re

from tests.services import REPO_ROOT

#: The spec, "Custom providers", verbatim.
SPEC = REPO_ROOT / "docs" / "custom-providers.md"
#: The spec's curl example as a project: the four files the spec shows, and the requirements.txt it names.
EXAMPLE = REPO_ROOT / "examples" / "curl"

_BLOCK = re.compile(r'^(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```', re.S | re.M)
_LABEL = re.compile(r'^=== "(?P<path>[^"]+)"\s*$', re.M)


def code_blocks() -> list[tuple[str, str, str]]:
    """``(label, language, code)`` for every fenced block of the spec; label is the ``=== "path"`` above it,
    if any."""
    text = SPEC.read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        label = ""
        if before:
            found = _LABEL.match(before[-1].strip())
            label = found.group("path") if found else ""
        indent = len(match.group("indent"))
        body = "".join(line[indent:] if line[:indent].strip() == "" else line
                       for line in match.group("body").splitlines(keepends=True))
        blocks.append((label, match.group("lang"), body))
    return blocks


def spec_curl_example() -> dict[str, str]:
    """The files of the curl example as the spec shows them: providers.yaml, main.py, schema.yaml, workflows.yaml."""
    labelled = {label: code for label, _, code in code_blocks() if label}
    workflows = next(code for label, lang, code in code_blocks()
                     if not label and lang == "yaml" and "name: tinyshakespeare" in code and "provider: curl" in code)
    return {
        ".dstack/providers.yaml": labelled[".dstack/providers.yaml"],
        "src/dstack/providers/curl/main.py": labelled["src/dstack/providers/curl/main.py"],
        "src/dstack/providers/curl/schema.yaml": labelled["src/dstack/providers/curl/schema.yaml"],
        ".dstack/workflows.yaml": workflows,
    }


def curl_example() -> dict[str, str]:
    """Every file of ``examples/curl``, by its path in the project: what the tests run."""
    return {path.relative_to(EXAMPLE).as_posix(): path.read_text()
            for path in sorted(EXAMPLE.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}
