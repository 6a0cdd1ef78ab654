"""Providers from other git repositories: fetched with git, cached by commit."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from dstack.errors import ConfigError, DstackError
from dstack.located_yaml import check_against_schema, load_yaml
from dstack.messages import ProviderRepo, ProviderSpec

#: Seconds a git command may take.
GIT_TIMEOUT = 120


class ProviderRepoError(DstackError):
    """A provider repository cannot be fetched, or has no such provider."""


class ProviderRepos:
    """Checkouts of provider repositories under ``cache``, one folder per commit.

    A checkout is reused for as long as the repository's HEAD stays at that commit.
    """

    def __init__(self, cache: Path) -> None:
        self._cache = cache
        self._lock = threading.Lock()

    def resolve(self, repo: ProviderRepo) -> tuple[Path, str, ProviderSpec]:
        """The checkout, its commit, and the provider named ``repo.name`` in it.

        Raises:
            ProviderRepoError: git failed, or the repository has no such provider.
        """
        with self._lock:
            commit = self._git("ls-remote", repo.url, "HEAD", what=f"fetch {repo.url}").split()
            if not commit:
                raise ProviderRepoError(f"cannot fetch provider repository {repo.url}: it has no HEAD commit")
            checkout = self._cache / commit[0]
            if not checkout.exists():
                self._checkout(repo.url, commit[0], checkout)
        return checkout, commit[0], self._provider(repo, commit[0], checkout)

    def _checkout(self, url: str, commit: str, target: Path) -> None:
        self._cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=self._cache, prefix=".clone-"))
        try:
            self._git("clone", "--quiet", "--no-checkout", url, str(scratch), what=f"fetch {url}")
            self._git("-C", str(scratch), "checkout", "--quiet", commit, what=f"check out {commit} of {url}")
            shutil.rmtree(scratch / ".git")
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _provider(self, repo: ProviderRepo, commit: str, checkout: Path) -> ProviderSpec:
        where = f"{repo.url} (commit {commit[:12]})"
        path = checkout / ".dstack" / "providers.yaml"
        if not path.is_file():
            raise ProviderRepoError(f"provider repository {where} has no .dstack/providers.yaml")
        try:
            document = load_yaml(path, f"{repo.url}: .dstack/providers.yaml")
            check_against_schema(document, "providers", f"{repo.url}: .dstack/providers.yaml")
        except ConfigError as e:
            raise ProviderRepoError(str(e)) from None
        names: list[str] = [p["name"] for p in document["providers"]]
        for raw in document["providers"]:
            if raw["name"] == repo.name:
                return ProviderSpec(name=raw["name"], image=raw["image"], commands=list(raw["commands"]))
        raise ProviderRepoError(f"provider repository {where} has no provider '{repo.name}' "
                                f"(it has: {', '.join(names) or 'none'})")

    def _git(self, *args: str, what: str) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ProviderRepoError(f"cannot {what}: {e}") from None
        if done.returncode != 0:
            raise ProviderRepoError(f"cannot {what}: {done.stderr.strip() or f'git exited {done.returncode}'}")
        return done.stdout
