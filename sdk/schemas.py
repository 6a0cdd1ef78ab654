"""Reading a provider's schema file: YAML (or JSON), with ``$ref`` to other files inlined.

A schema may take definitions from a file beside it, e.g. ``{$ref: "../common.yaml#/definitions/resources"}``;
the reference is replaced by what it points to (and so are the references inside that, local ones
included), so that the result is one self-contained schema. Keys beside such a ``$ref`` (a
``description``, say) are kept, and win over the target's. The local references of the schema
itself, ``#/...``, are left to the validator.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple
from urllib.parse import unquote

__all__ = ["load_document", "load_schema", "resolve_pointer"]


def load_document(path: str) -> Any:
    """Load a YAML (or JSON) file; PyYAML is preferred and shipped into provider containers (a ``.json`` file
    is read as JSON).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not YAML (or JSON).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):  # JSON is YAML too, but a YAML parser in pure Python takes far longer
        return json.loads(text)  # a JSONDecodeError is a ValueError
    try:
        import yaml
    except ImportError:
        return json.loads(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def load_schema(path: str) -> Any:
    """The schema in ``path`` with every reference to another file replaced by its target.

    Raises:
        OSError: a file cannot be read.
        ValueError: a file is not YAML, or a reference cannot be followed (the message names it).
    """
    root = os.path.abspath(path)
    cache: Dict[str, Any] = {}
    return _inline(_load_cached(root, cache), root, root, cache, ())


def _load_cached(path: str, cache: Dict[str, Any]) -> Any:
    if path not in cache:
        cache[path] = load_document(path)
    return cache[path]


def _inline(node: Any, path: str, root: str, cache: Dict[str, Any], following: Tuple[str, ...]) -> Any:
    """``node`` of the file ``path`` with references inlined (not the local ones of ``root``)."""
    if isinstance(node, list):
        return [_inline(item, path, root, cache, following) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and not (ref.startswith("#") and path == root):
        target_file, _, pointer = ref.partition("#")
        target_path = os.path.normpath(os.path.join(os.path.dirname(path), target_file)) if target_file else path
        key = f"{target_path}#{pointer}"
        if key in following:
            raise ValueError(f"$ref {ref!r} in {path} refers back to itself")
        try:
            target = resolve_pointer(_load_cached(target_path, cache), pointer)
        except LookupError as e:
            raise ValueError(f"cannot resolve $ref {ref!r} in {path}: {e}") from None
        inlined = _inline(target, target_path, root, cache, following + (key,))
        siblings = {k: _inline(v, path, root, cache, following) for k, v in node.items() if k != "$ref"}
        return {**inlined, **siblings} if isinstance(inlined, dict) else inlined
    return {k: _inline(v, path, root, cache, following) for k, v in node.items()}


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The node of ``document`` at JSON pointer ``pointer`` (RFC 6901, percent-encoded as in a URI fragment):
    ``""`` is the whole document, ``"/definitions/a~1b"`` the key ``a/b`` of ``definitions``, ``"/list/0"``
    the first item of ``list``.

    Raises:
        LookupError: there is no such node, or ``pointer`` does not start with ``/``; the message says which.
    """
    if not pointer:
        return document
    if not pointer.startswith("/"):
        raise LookupError(f"{pointer!r} is not a JSON pointer: write '/' and the keys, e.g. '/definitions/x'")
    node = document
    for token in unquote(pointer)[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")  # in this order
        try:
            node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, ValueError, TypeError):
            raise LookupError(f"no {token!r} there") from None
    return node
