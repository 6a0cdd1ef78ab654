"""Built-in providers run as processes of the worker, not in containers of their own.

A built-in provider is dstack's own code (``dstack/providers/``) and runs none of the user's: it reads the
workflow and its schema and writes ``jobs.json``. A container of its own cost every run a container start,
an interpreter start in it and a removal on its critical path (~0.25 s on a 2-core machine, more than the
provider's own work); a fresh interpreter for it still cost ~50 ms. So each worker keeps one **provider host**
(``provider_host_main.py``): a process started with

* a clean environment: none of the worker's variables (no broker or storage credentials, no Docker host),
  only ``PATH``, ``LANG`` and the worker's SDK bundle on ``PYTHONPATH``, and no site-packages (``-S``): the
  standard library and the bundle (the SDK and the built-in providers, as mounted into provider containers)
  are all it can import;
* the SDK and every built-in provider loaded once.

For each provider task the host forks a child that becomes what ``python main.py`` in the provider's
container would be: its own process group (so a stop reaches it and its children), the task's project
folder as working folder, only the environment its container would have had, its output into a FIFO the
worker reads as the task's log. The provider is chosen by its name only: the commands and image of the task's
:class:`~dstack.messages.ProviderSpec` are ignored, so a submission cannot make the worker run anything
else this way. A provider of the project or of another repository (custom code) still runs in a container.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from dstack import providers
from dstack.errors import RuntimeErrorInContainer
from dstack.workers.runtime import Container, ExitInfo

log = logging.getLogger(__name__)

#: How much of a provider's output one read takes.
_READ_SIZE = 64 * 1024
#: What the provider host (and so every built-in provider) sees of the worker's environment.
_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1"}
#: Seconds to wait for the host to start (it loads the SDK) or to fork a provider.
_HOST_TIMEOUT = 30.0
#: The host's program.
HOST_MAIN = Path(__file__).resolve().parent / "provider_host_main.py"


def runs_as_process(name: str, builtin: bool, from_repository: bool) -> bool:
    """Whether the provider ``name`` of a task is one of the worker's built-in ones (then it runs as a process)."""
    return builtin and not from_repository and name in providers.NAMES


class _Request:
    """One provider the host was asked to fork: its pid once forked, its exit once it ended.

    It holds the worker's write end of the provider's FIFO (``holder``) until the provider has ended, so that
    the reader sees the end of the output only then, not before the provider opened the FIFO.
    """

    def __init__(self, holder: int) -> None:
        self.forked = threading.Event()
        self.ended = threading.Event()
        self.pid = 0
        self.exit_code = 0
        self.error = ""
        #: the pid of the host that was asked (a host that died fails its own requests only)
        self.host = 0
        self._holder = holder
        self._holder_lock = threading.Lock()

    def end(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.release_output()
        self.ended.set()

    def fail(self, error: str) -> None:
        self.error = error
        self.forked.set()
        self.end(1)

    def release_output(self) -> None:
        """Close the worker's write end of the FIFO (once)."""
        with self._holder_lock:
            if self._holder >= 0:
                os.close(self._holder)
                self._holder = -1


class ProviderHost:
    """The worker's provider host (see the module's docstring), started when first needed and again after it
    died; :meth:`close` ends it."""

    def __init__(self, bundle: Path, pycache: Path) -> None:
        self.bundle, self.pycache = bundle, pycache
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count(1)

    def start_provider(self, name: str, *, workdir: Path, env: dict[str, str], output: Path, container_name: str,
                       labels: dict[str, str]) -> ProviderProcess:
        """Fork built-in provider ``name`` in ``workdir`` with ``env`` only, its output into the FIFO ``output``
        (made here).

        Raises:
            RuntimeErrorInContainer: the host could not be started or could not fork it.
        """
        output.unlink(missing_ok=True)  # left by an earlier start of the same task
        os.mkfifo(output)
        # the worker reads the FIFO and also holds a write end until the provider has ended (see _Request)
        reader = os.open(output, os.O_RDONLY | os.O_NONBLOCK)
        request = _Request(holder=os.open(output, os.O_WRONLY | os.O_NONBLOCK))
        fcntl.fcntl(reader, fcntl.F_SETFL, fcntl.fcntl(reader, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        try:
            environment = {**_BASE_ENV, "HOME": str(workdir), **env}
            self._send({"name": name, "cwd": str(workdir), "env": environment, "output": str(output)}, request)
            if not request.forked.wait(_HOST_TIMEOUT):
                raise RuntimeErrorInContainer(f"the provider host did not start provider {name} in time")
            if request.error:
                raise RuntimeErrorInContainer(request.error)
        except BaseException:
            os.close(reader)
            request.release_output()
            raise
        return ProviderProcess(request, reader, container_name, labels)

    def close(self) -> None:
        """End the host (its standard input closes); providers still running finish on their own."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()

    def _send(self, message: dict[str, Any], request: _Request) -> None:
        with self._lock:
            process = self._running()
            request_id = str(next(self._ids))
            request.host = process.pid
            self._requests[request_id] = request
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps({"id": request_id, **message}).encode() + b"\n")
                process.stdin.flush()
            except OSError as e:
                self._requests.pop(request_id, None)
                raise RuntimeErrorInContainer(f"the provider host is gone: {e}") from None

    def _running(self) -> subprocess.Popen[bytes]:
        """The host's process, started (and ready) if it was not running."""
        if self._process is not None and self._process.poll() is None:
            return self._process
        site = self.bundle / "site"
        env = {**_BASE_ENV, "PYTHONPATH": str(site), "PYTHONPYCACHEPREFIX": str(self.pycache),
               "DSTACK_BUNDLE_SITE": str(site)}
        process = subprocess.Popen([sys.executable, "-S", "-s", str(HOST_MAIN)], env=env, cwd=str(self.bundle),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
                                   start_new_session=True)
        assert process.stdout is not None
        ready = process.stdout.readline()  # the host loads the SDK and the providers first
        if not ready:
            process.wait()
            raise RuntimeErrorInContainer(f"the provider host exited at its start with {process.returncode}")
        self._process = process
        threading.Thread(target=self._read_answers, args=(process,), name="provider-host", daemon=True).start()
        log.info("provider host started (pid %d)", process.pid)
        return process

    def _read_answers(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            answer = json.loads(line)
            with self._lock:
                request = self._requests.get(answer.get("id", ""))
                if request is not None and ("exit" in answer or "error" in answer):
                    del self._requests[answer["id"]]
            if request is None:
                continue
            if "error" in answer:
                request.fail(answer["error"])
            elif "pid" in answer:
                request.pid = int(answer["pid"])
                request.forked.set()
            else:
                request.end(int(answer["exit"]))
        # the host is gone (a new one may have started already, with requests of its own)
        with self._lock:
            gone = [request_id for request_id, r in self._requests.items() if r.host == process.pid]
            orphans = [self._requests.pop(request_id) for request_id in gone]
        for request in orphans:  # what the host ran can no longer be followed: ended, and failed
            if request.pid:
                _kill_group(request.pid, signal.SIGKILL)
            request.fail("the provider host exited")
        log.warning("the provider host exited (%s); it starts again when next needed", process.wait())


class ProviderProcess(Container):
    """A built-in provider forked by the host, behind the same interface as a container."""

    def __init__(self, request: _Request, reader: int, name: str, labels: dict[str, str]) -> None:
        self._request, self._reader = request, reader
        self.name, self.labels = name, labels

    def published_ports(self, ports: list[int]) -> list[int]:
        return list(ports)

    def logs(self) -> Iterator[bytes]:
        while True:
            data = os.read(self._reader, _READ_SIZE)
            if not data:
                return
            yield data

    def wait(self) -> ExitInfo:
        self._request.ended.wait()
        code = self._request.exit_code
        # a process ended by a signal reads as -N; a container's shell reports 128 + N
        return ExitInfo(exit_code=128 - code if code < 0 else code, oom_killed=False)

    def stop(self, grace_seconds: int) -> None:
        self._signal(signal.SIGTERM)
        timer = threading.Timer(grace_seconds, self._signal, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    def remove(self) -> None:
        self._signal(signal.SIGKILL)
        self._request.ended.wait(_HOST_TIMEOUT)
        self._request.release_output()
        if self._reader >= 0:
            os.close(self._reader)
            self._reader = -1

    def _signal(self, number: int) -> None:
        if self._request.pid and not self._request.ended.is_set():
            _kill_group(self._request.pid, number)


def _kill_group(pid: int, number: int) -> None:
    """Send signal ``number`` to the process group a provider leads (its pid is the group's id)."""
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass
