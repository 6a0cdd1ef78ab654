"""Built-in providers run as a process of the worker, not in a container of their own.

A built-in provider is dstack's own code (``dstack/providers/``) and runs none of the user's: it reads the
workflow and its schema and writes ``jobs.json``. A container of its own cost every run a container start,
an interpreter start in it and a removal on its critical path (~0.25 s on a 2-core machine, more than the
provider's own work). It now runs as a child process with:

* a clean environment: none of the worker's variables (no broker or storage credentials, no Docker host),
  only what its container would have had plus ``PATH``, ``LANG`` and the SDK bundle on ``PYTHONPATH``;
* the worker's copy of the SDK and of the built-in providers (the bundle mounted into provider
  containers), run by the worker's own Python, chosen by the provider's name only: the commands and image
  of the task's :class:`~dstack.messages.ProviderSpec` are ignored, so a submission cannot make the worker
  run anything else this way;
* the task's project folder as its working folder, and a session of its own, so a stop reaches it.

A provider of the project or of another repository (custom code) still runs in a container.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from dstack import providers
from dstack.workers.runtime import Container, ExitInfo

#: How much of the process's output one read takes.
_READ_SIZE = 64 * 1024
#: What a built-in provider's process sees of the world besides its task.
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1"}


def runs_as_process(name: str, builtin: bool, from_repository: bool) -> bool:
    """Whether the provider ``name`` of a task is one of the worker's built-in ones (then it runs as a process)."""
    return builtin and not from_repository and name in providers.NAMES


class ProviderProcess(Container):
    """A built-in provider's process, behind the same interface as a container."""

    def __init__(self, process: subprocess.Popen[bytes], name: str, labels: dict[str, str]) -> None:
        self._process = process
        self.name, self.labels = name, labels

    def published_ports(self, ports: list[int]) -> list[int]:
        return list(ports)

    def logs(self) -> Iterator[bytes]:
        stream = self._process.stdout
        assert stream is not None
        while True:
            data = os.read(stream.fileno(), _READ_SIZE)
            if not data:
                return
            yield data

    def wait(self) -> ExitInfo:
        code = self._process.wait()
        # a process killed by a signal reads as -N; a container's shell reports 128 + N
        return ExitInfo(exit_code=128 - code if code < 0 else code, oom_killed=False)

    def stop(self, grace_seconds: int) -> None:
        self._signal(signal.SIGTERM)
        timer = threading.Timer(grace_seconds, self._signal, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def remove(self) -> None:
        self._signal(signal.SIGKILL)
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _signal(self, number: int) -> None:
        if self._process.poll() is None:
            try:
                os.killpg(self._process.pid, number)
            except ProcessLookupError:
                pass


def start_provider_process(name: str, *, bundle: Path, workdir: Path, env: dict[str, str], container_name: str,
                           labels: dict[str, str], pycache: Path) -> ProviderProcess:
    """Start built-in provider ``name`` in ``workdir`` with ``env`` (and nothing of the worker's environment).

    Args:
        bundle: the worker's SDK bundle (:func:`~dstack.workers.sdk_bundle.build_sdk_bundle`).
        pycache: where the process keeps the bytecode of the bundle between runs.
    """
    site = bundle / "site"
    main = site / "dstack" / "providers" / name / "main.py"
    process_env = {**_BASE_ENV, **env, "PYTHONPATH": str(site), "PYTHONPYCACHEPREFIX": str(pycache),
                   "HOME": str(workdir)}
    process_env.pop("PYTHONDONTWRITEBYTECODE", None)
    # -S: no site-packages (what the worker has installed stays out of reach), as in a container
    process = subprocess.Popen([sys.executable, "-S", "-s", str(main)], cwd=workdir, env=process_env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, close_fds=True)
    return ProviderProcess(process, container_name, labels)
