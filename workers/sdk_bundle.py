"""The provider SDK as provider containers see it.

A folder mounted read-only into provider containers and named by ``PYTHONUSERBASE``:
Python adds ``$PYTHONUSERBASE/lib/pythonX.Y/site-packages`` to ``sys.path`` whatever
``PYTHONPATH`` the provider's commands set. It holds a ``dstack`` package with the SDK
(``dstack.sdk``), re-exported by its ``__init__``, pure-Python PyYAML for reading schemas, and the built-in providers
(``dstack.providers``), which run from there, each with its schema also as ``schema.json`` (references
inlined: a provider reads it without parsing YAML). A ``src/dstack/``
folder without ``__init__.py`` in the project does not hide it: a regular package wins over
a namespace folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

import dstack.sdk
from dstack import providers
from dstack.providers.common import COMPILED_SCHEMA
from dstack.sdk.schemas import load_schema

#: Python versions whose user site folder points at the bundle.
PYTHON_VERSIONS = [f"3.{minor}" for minor in range(8, 16)]

_DSTACK_INIT = '''"""dstack's provider SDK (see ``dstack.sdk``)."""
from dstack.sdk import *  # noqa: F401,F403
from dstack.sdk import __all__  # noqa: F401
'''


def build_sdk_bundle(target: Path) -> Path:
    """(Re)build the bundle in ``target`` and return it."""
    site = target / "site"
    if target.exists():
        shutil.rmtree(target)
    site.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    shutil.copytree(Path(yaml.__file__).parent, site / "yaml", ignore=ignore)
    (site / "dstack").mkdir()
    (site / "dstack" / "__init__.py").write_text(_DSTACK_INIT)
    shutil.copytree(Path(dstack.sdk.__file__).parent, site / "dstack" / "sdk", ignore=ignore)
    shutil.copytree(providers.FOLDER, site / "dstack" / "providers", ignore=ignore)
    for name in providers.NAMES:  # read by the provider without YAML (dstack/providers/common.py)
        folder = site / "dstack" / "providers" / name
        (folder / COMPILED_SCHEMA).write_text(json.dumps(load_schema(str(folder / "schema.yaml"))))
    for version in PYTHON_VERSIONS:
        folder = target / "lib" / f"python{version}"
        folder.mkdir(parents=True)
        (folder / "site-packages").symlink_to("../../site")
    return target
