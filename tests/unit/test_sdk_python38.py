"""The SDK runs inside arbitrary images: its syntax must be Python 3.8's, its imports the standard library's."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import dstack.sdk

SDK_FILES = sorted(Path(dstack.sdk.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", SDK_FILES, ids=lambda p: p.name)
def test_sdk_parses_as_python_38(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


@pytest.mark.parametrize("path", SDK_FILES, ids=lambda p: p.name)
def test_sdk_imports_only_the_standard_library(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"yaml"}  # yaml: optional, shipped into containers
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
