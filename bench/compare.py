"""Another commit of dstack, importable next to the working tree's, for ``bench_noop --compare REF``.

``git worktree add --detach`` checks REF out into a temp folder (it changes no file of the main
tree; git only records the worktree under ``.git/worktrees`` until :meth:`Checkout.remove`). The
package maps folders to subpackages (``[tool.setuptools.package-dir]``: ``sdk/`` is ``dstack.sdk``),
which a plain ``PYTHONPATH`` cannot follow, so :func:`build_layout` lays the checkout out as it would
install, as symbolic links (as ``scripts/typecheck.sh`` does): ``LAYOUT/dstack/*`` -> the checkout's
``dstack/*``, ``LAYOUT/dstack/sdk`` -> its ``sdk/``, and so on. Processes started with
:meth:`Checkout.env` import that ``dstack``: ``PYTHONPATH`` comes before the venv's editable install
(whose finder is appended to ``sys.meta_path``), and ``PYTHONSAFEPATH=1`` keeps the current folder
(e.g. the main tree) off ``sys.path``. Nothing is installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def package_dirs(pyproject: str) -> dict[str, str]:
    """``[tool.setuptools.package-dir]`` of a pyproject.toml's text: package -> folder (may be empty)."""
    section = re.search(r"^\[tool\.setuptools\.package-dir\]\s*$(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    if not section:
        return {}
    return dict(re.findall(r'^"([A-Za-z_][\w.]*)"\s*=\s*"([^"]*)"', section.group(1), re.M))


def build_layout(source: Path, target: Path) -> Path:
    """Lay the ``dstack`` package of the source tree ``source`` out under ``target`` as links; returns
    ``target`` (the folder to put on ``PYTHONPATH``)."""
    package = target / "dstack"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for entry in sorted((source / "dstack").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    pyproject = source / "pyproject.toml"
    mapping = package_dirs(pyproject.read_text()) if pyproject.exists() else {}
    for name, folder in mapping.items():
        if not name.startswith("dstack.") or not folder:
            continue
        link = target.joinpath(*name.split("."))
        if link.is_symlink() or link.exists():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source / folder)
    return target


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


class Checkout:
    """REF of the repository at ``repo``, checked out in a temp worktree and laid out to import."""

    def __init__(self, repo: Path, ref: str) -> None:
        self.repo, self.ref = repo, ref
        self.commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
        self.subject = _git(repo, "log", "-1", "--format=%s", self.commit)
        self.folder = Path(tempfile.mkdtemp(prefix="dstack-compare-"))
        self.worktree = self.folder / "tree"
        self._added = False
        try:
            _git(repo, "worktree", "add", "--detach", str(self.worktree), self.commit)
            self._added = True
            self.layout = build_layout(self.worktree, self.folder / "layout")
        except BaseException:
            self.remove()
            raise

    @property
    def label(self) -> str:
        """A short name for tables: the ref as given and its commit."""
        short = self.commit[:7]
        return self.ref if self.ref.startswith(short) else f"{self.ref} ({short})"

    def env(self) -> dict[str, str]:
        """The environment under which ``python -m dstack...`` runs this checkout's code."""
        return {"PYTHONPATH": str(self.layout), "PYTHONSAFEPATH": "1"}

    def remove(self) -> None:
        """Remove the worktree (and git's record of it) and the temp folder."""
        if self._added:
            subprocess.run(["git", "-C", str(self.repo), "worktree", "remove", "--force", str(self.worktree)],
                           capture_output=True)
            self._added = False
        shutil.rmtree(self.folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(self.repo), "worktree", "prune"], capture_output=True)

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def imported_from(env: dict[str, str], python: str, cwd: Optional[Path] = None) -> dict[str, str]:
    """Where ``python`` under ``env`` imports dstack, dstack.sdk, dstack.scheduler and dstack.workers
    from (module -> file), to check that a checkout is what runs."""
    code = ("import json, importlib\n"
            "names = ['dstack', 'dstack.sdk', 'dstack.scheduler', 'dstack.workers']\n"
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"importing dstack failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)
