"""What the CLI has validated before: documents known to fit their schema, remembered between commands.

``dstack run`` checks the project's ``.dstack/*.yaml`` and every built-in provider's parameters against their
JSON Schemas. Loading jsonschema and the schemas' YAML costs ~60 ms of every run's start, although a project
changes rarely between two runs. The CLI therefore remembers a fingerprint of each document that passed (its
JSON form, the schema's name and the bytes of every schema file dstack ships) in
``$DSTACK_HOME/validated``, and a document whose fingerprint is known is not checked again. A document that
fails is never remembered, so its error is always reported; a changed schema (another dstack version, an edited
schema file) changes every fingerprint.

Without :func:`remember_in` (the services, tests, library use) nothing is remembered and everything is checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any, Optional

#: The record's file name in the CLI's home.
FILE = "validated"
#: Fingerprints kept: the file is trimmed to the most recent ones when it grows past twice as many.
KEEP = 2000

_path: Optional[Path] = None
_known: Optional[set[str]] = None


def remember_in(path: Optional[Path]) -> None:
    """Remember validated documents in the file ``path`` (``None``: do not remember)."""
    global _path, _known
    _path, _known = path, None


def is_known_valid(schema_name: str, document: Any) -> bool:
    """Whether ``document`` passed the check against schema ``schema_name`` before."""
    if _path is None:
        return False
    return _fingerprint(schema_name, document) in _load()


def remember_valid(schema_name: str, document: Any) -> None:
    """Record that ``document`` passed the check against schema ``schema_name``."""
    if _path is None:
        return
    known = _load()
    fingerprint = _fingerprint(schema_name, document)
    if fingerprint in known:
        return
    known.add(fingerprint)
    try:
        _path.parent.mkdir(parents=True, exist_ok=True)
        if len(known) > 2 * KEEP:
            lines = _path.read_text().split()[-KEEP:] + [fingerprint]
            tmp = _path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, _path)
        else:
            with open(_path, "a") as f:
                f.write(fingerprint + "\n")
    except OSError:  # a cache: a home that cannot be written only costs the next command a check
        pass


def _load() -> set[str]:
    global _known
    if _known is None:
        assert _path is not None
        try:
            _known = set(_path.read_text().split())
        except OSError:
            _known = set()
    return _known


def _fingerprint(schema_name: str, document: Any) -> str:
    # the type of anything JSON has no form for is kept: a YAML date is not the string of its value
    text = json.dumps(document, sort_keys=True, default=lambda value: f"<{type(value).__name__}:{value}>")
    return hashlib.sha256(f"{_schemas_digest()}\0{schema_name}\0{text}".encode()).hexdigest()


@cache
def _schemas_digest() -> str:
    """A digest of every schema file dstack ships (the project files' and the built-in providers')."""
    from dstack import __version__, providers

    digest = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parent
    files = sorted([*(package / "schemas").glob("*.yaml"), *providers.FOLDER.glob("*.yaml"),
                    *providers.FOLDER.glob("*/schema.yaml")])
    for file in files:
        digest.update(str(file.relative_to(package)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
