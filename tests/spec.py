"""The examples of the spec (``../shared/spec/custom-providers.md``), read verbatim from it."""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

from tests.services import REPO_ROOT

SPEC = REPO_ROOT.parent / "shared" / "spec" / "custom-providers.md"

_BLOCK = re.compile(r'^(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```', re.S | re.M)
_LABEL = re.compile(r'^=== "(?P<path>[^"]+)"\s*$', re.M)


def code_blocks() -> List[Tuple[str, str, str]]:
    """``(label, language, code)`` for every fenced block; label is the ``=== "path"`` above it, if any."""
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


def curl_example() -> Dict[str, str]:
    """The project of the spec's curl example: providers.yaml, main.py, schema.yaml, workflows.yaml."""
    labelled = {label: code for label, _, code in code_blocks() if label}
    workflows = next(code for label, lang, code in code_blocks()
                     if not label and lang == "yaml" and "name: tinyshakespeare" in code and "provider: curl" in code)
    return {
        ".dstack/providers.yaml": labelled[".dstack/providers.yaml"],
        "src/dstack/providers/curl/main.py": labelled["src/dstack/providers/curl/main.py"],
        "src/dstack/providers/curl/schema.yaml": labelled["src/dstack/providers/curl/schema.yaml"],
        ".dstack/workflows.yaml": workflows,
    }
