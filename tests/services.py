"""Real services for integration tests: a private RabbitMQ vhost, the Docker engine, an S3
server, and a dstack cluster (scheduler and workers as real processes). No pytest here."""
from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Optional

import pika

from tests.s3server import free_port

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
#: Image the tests run jobs in; scripts/build-images.sh makes it.
TEST_IMAGE = "python:3.9"
REPO_ROOT = Path(__file__).resolve().parent.parent


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


class Vhost:
    """A private RabbitMQ virtual host, so test queues never mix with anyone else's."""

    def __init__(self) -> None:
        if not port_open(RABBITMQ_HOST, RABBITMQ_PORT):
            raise RuntimeError(f"RabbitMQ is not running at {RABBITMQ_HOST}:{RABBITMQ_PORT}; "
                               "run scripts/setup.sh (or `rabbitmq-server -detached`)")
        self.name = f"dstack-test-{secrets.token_hex(4)}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.name], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        self.url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{self.name}"

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """``(messages ready, consumers)`` of ``queue`` (``(0, 0)`` if it does not exist)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        try:
            method = channel.queue_declare(queue, passive=True).method
            return method.message_count, method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0, 0
    finally:
        connection.close()


def queue_consumers(url: str, queue: str) -> int:
    """How many consumers ``queue`` has (0 if it does not exist)."""
    return queue_counts(url, queue)[1]


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """A scheduler and workers as real processes, with their own home, broker vhost and storage."""

    def __init__(self, root: Path, broker_url: str, storage_env: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.env = {**os.environ, **storage_env, "DSTACK_BROKER_URL": broker_url,
                    "DSTACK_HOME": str(root / "client-home"), "DSTACK_WORKER_HOST": "127.0.0.1",
                    "DSTACK_DRAIN_PERIOD": "5", "PYTHONUNBUFFERED": "1"}
        self.processes: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "dstack.cli.main", *args], stdout=log,
                                   stderr=subprocess.STDOUT, env={**self.env, **extra_env},
                                   start_new_session=True)
        self.processes[name] = process
        return process

    def start_scheduler(self, **extra_env: str) -> None:
        self._spawn("scheduler", ["scheduler"], {"DSTACK_HOME": str(self.root / "scheduler-home"), **extra_env})
        wait_for(lambda: queue_consumers(self.broker_url, "dstack.rpc") > 0, 30, "the scheduler")

    def start_worker(self, worker_id: str = "worker-1", slots: int = 4, **extra_env: str) -> None:
        self._spawn(worker_id, ["worker", "--slots", str(slots)],
                    {"DSTACK_HOME": str(self.root / f"{worker_id}-home"), "DSTACK_WORKER_ID": worker_id, **extra_env})
        wait_for(lambda: queue_consumers(self.broker_url, f"dstack.worker.{worker_id}") > 0, 30, worker_id)

    def signal(self, name: str, sig: int) -> None:
        self.processes[name].send_signal(sig)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.root.glob("*.log"))

    def dstack(self, *args: str, cwd: Optional[Path] = None, timeout: float = 180,
               env: Optional[dict[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run the CLI as a user would, ``input`` on its standard input; returns the completed process (text
        output)."""
        return subprocess.run([sys.executable, "-m", "dstack.cli.main", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **(env or {})}, input=input)

    def start_reporting_worker(self, worker_id: str, resources: str = "", slots: int = 4, **extra_env: str) -> None:
        """Start a worker offering ``resources`` (YAML, empty: what the machine has) and wait for
        the scheduler to list it."""
        self.start_worker(worker_id, slots=slots, DSTACK_WORKER_RESOURCES=resources, **extra_env)
        wait_for(lambda: worker_id in {w["worker_id"] for w in self.workers()}, 30, f"{worker_id} to report")

    def workers(self) -> list[dict[str, Any]]:
        result = self.dstack("workers", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def submit(self, project: Path, workflow: str = "w") -> str:
        """``dstack run WORKFLOW -d``; returns the run's name."""
        result = self.dstack("run", workflow, "-d", cwd=project)
        assert result.returncode == 0, result.stderr
        return run_name_of(result)

    def job_logs(self, run_name: str) -> dict[str, list[str]]:
        """The run's log lines, by job."""
        result = self.dstack("logs", run_name)
        assert result.returncode == 0, result.stderr
        lines: dict[str, list[str]] = {}
        for line in result.stdout.splitlines():
            job, _, text = line.partition(" | ")
            lines.setdefault(job, []).append(text)
        return lines

    def job_lines(self, run_name: str, job: str) -> list[str]:
        """The log lines of one job of the run (none if it logged nothing)."""
        return self.job_logs(run_name).get(job, [])

    def status(self, run_name: str) -> dict[str, Any]:
        result = self.dstack("status", run_name, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)[0]

    def wait_status(self, run_name: str, statuses: tuple, timeout: float = 120) -> dict[str, Any]:
        return wait_for(lambda: (lambda run: run if run["status"] in statuses else None)(self.status(run_name)),
                        timeout, f"{run_name} to be {'/'.join(statuses)}", interval=0.5)


class HandlerServer:
    """A local HTTP/1.1 server (keep-alive, many clients at once) that hands every request, whatever its method, to
    ``handle(request)``: the base of the tests' fake servers. ``endpoint`` is its ``http://127.0.0.1:PORT``."""

    def __init__(self, handle: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are written apart: no delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                handle(self)

            do_PUT = do_HEAD = do_DELETE = do_POST = do_GET  # noqa: N815

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 64  # the default 5 would drop the connections of threads that come together

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_reply(request: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
               headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer ``request`` with ``status``, ``headers`` and ``body`` (a ``HEAD`` gets the headers only)."""
    request.send_response(status)
    for name, value in headers:
        request.send_header(name, value)
    if request.command != "HEAD":
        request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


def s3_error(code: str, message: str) -> bytes:
    """The body of an S3 error answer."""
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


class FileServer:
    """A local HTTP server for the tests' jobs (host networking: they reach 127.0.0.1).

    Serves files from ``folder`` and counts the requests of each path.
    """

    def __init__(self, folder: Path) -> None:
        hits: dict[str, int] = {}
        self.hits = hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                hits[self.path] = hits.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()


def http_get(url: str) -> str:
    """The body at ``url``, or "" while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode(errors="replace")
    except OSError:
        return ""


def run_name_of(result: subprocess.CompletedProcess) -> str:
    """The run name `dstack run` prints on its first line ("" when it printed nothing)."""
    words = result.stdout.split()
    return words[0] if words else ""


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Create a project folder holding ``files`` (path -> text)."""
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (own port, config, data), for tests of broker settings.

    Its files live in a fresh folder the ``rabbitmq`` user can reach (pytest's are private).

    Args:
        config: extra lines of ``rabbitmq.conf`` (e.g. ``consumer_timeout = 5000``).
    """

    def __init__(self, config: str = "") -> None:
        import shutil
        import tempfile

        folder = self.folder = Path(tempfile.mkdtemp(prefix="dstack-rabbitmq-"))
        folder.chmod(0o755)
        self.port = free_port()
        self.node = f"dstack{self.port}@localhost"
        (folder / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n{config}\n")
        (folder / "enabled_plugins").write_text("[].\n")
        shutil.chown(folder, "rabbitmq", "rabbitmq")
        for path in folder.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(free_port()), "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
                    "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"), "RABBITMQ_LOG_BASE": str(folder / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(folder / "pid")}
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True)
        wait_for(lambda: port_open("127.0.0.1", self.port), 60, f"RabbitMQ node {self.node}", interval=0.5)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def restart(self, down_for: float = 3.0) -> None:
        """Stop the broker (every connection drops), wait, and start it again; durable queues and
        persistent messages survive, as in a real restart."""
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop_app"], env=self.env, check=True)
        time.sleep(down_for)
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "start_app"], env=self.env, check=True)

    def stop(self) -> None:
        import shutil

        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], env=self.env, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class FlakyProxy:
    """A TCP proxy in front of a real server that can be broken: while ``broken``, it drops every
    connection, new and open, as a network or a storage having a bad minute does."""

    def __init__(self, target_port: int) -> None:
        self.broken = False
        self._target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def break_(self) -> None:
        self.broken = True
        for sock in list(self._open):
            sock.close()

    def heal(self) -> None:
        self.broken = False

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if self.broken:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.broken:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass
