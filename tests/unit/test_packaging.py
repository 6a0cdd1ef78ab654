"""Installing dstack claims one import name: ``dstack``. The folders ``sdk/``, ``scheduler/`` and
``workers/`` install as ``dstack.sdk``, ``dstack.scheduler`` and ``dstack.workers``, so no generic
top-level name (``scheduler``, ``workers``, ``sdk``) collides with a user's own packages."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERIC_NAMES = ("sdk", "scheduler", "workers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source tree (the checkout itself is left untouched)."""
    source = tmp_path_factory.mktemp("source") / "dstack"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache", "tests", "bench", "docs", "examples", "deploy"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(out)], check=True)
    (built,) = out.glob("dstack-*.whl")
    return built


def test_the_wheel_holds_only_the_dstack_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"dstack"}


def test_the_services_import_under_dstack_and_not_alone(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                    "--target", str(site), str(wheel)], check=True)
    probe = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import dstack.scheduler.service, dstack.workers.service, dstack.sdk\n"
        f"assert dstack.__file__.startswith({str(site)!r}), dstack.__file__\n"
        "from dstack import Provider, Job\n"
        f"for name in {GENERIC_NAMES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable')\n"
    )
    # -I: no current folder or PYTHON* variables on the path, as in a user's environment
    result = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
