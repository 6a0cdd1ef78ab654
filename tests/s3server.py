"""A real S3-compatible server for tests: moto's server mode, in a subprocess.

Tests then talk HTTP to it exactly as they would to AWS or MinIO, through the
standard settings (``AWS_ENDPOINT_URL_S3``, credentials, region), so the code under
test takes its production path. Usage::

    server = start_moto_server()
    try:
        server.create_bucket("artifacts")
        os.environ.update(server.env())
        ...
    finally:
        server.stop()

Everything stays on 127.0.0.1. No pytest here: fixtures live in conftest/test files.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import pytest

#: Credentials moto accepts (it accepts any); never real ones.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (and is closed now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A running ``python -m moto.server``; see :func:`start_moto_server`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.endpoint_url = f"http://127.0.0.1:{port}"

    def env(self) -> dict[str, str]:
        """The environment that points boto3 at this server (and keeps proxies out)."""
        local = "127.0.0.1,localhost"
        return {"AWS_ENDPOINT_URL_S3": self.endpoint_url, **TEST_CREDENTIALS,
                "NO_PROXY": local, "no_proxy": local}

    def create_bucket(self, name: str) -> None:
        import boto3  # here, so that importing this module stays cheap

        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)

    def log(self) -> str:
        """What the server printed so far (for error messages)."""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop within 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        opener.open(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer, even an error status, means it is up
    except OSError:
        return False
    return True


def start_moto_server(timeout: float = 20.0) -> MotoServer:
    """Start moto on a free local port and wait (at most ``timeout`` s) until it answers HTTP.

    Raises:
        RuntimeError: the server exited or did not answer in time; the message holds its log.
    """
    port = free_port()
    fd, log_path = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
    env = {**os.environ, **TEST_CREDENTIALS}
    with os.fdopen(fd, "wb") as log:  # a file, not a pipe: a full pipe would block moto
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = MotoServer(process, port, log_path)
    deadline = time.monotonic() + timeout
    problem: Optional[str] = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"exited with status {process.returncode}"
            break
        if _answers(server.endpoint_url + "/"):
            atexit.register(server.stop)  # no orphan server if the caller forgets or crashes
            return server
        time.sleep(0.1)
    else:
        problem = f"did not answer on {server.endpoint_url} within {timeout:.0f} s"
    log_text = server.log()
    server.stop()
    raise RuntimeError(f"moto server {problem} (is moto[server] installed?); its output:\n"
                       f"{log_text[-4000:]}")


#: AWS settings of the environment that would send boto3 elsewhere than the test server.
_OTHER_AWS_SETTINGS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
                       "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                       "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@contextmanager
def moto_in_environment(bucket: str) -> Iterator[MotoServer]:
    """A server with ``bucket``, its settings in this process's environment (as in production, where
    boto3 reads them) and other AWS settings out of it; all undone and the server stopped on exit."""
    server = start_moto_server()
    try:
        server.create_bucket(bucket)
        with pytest.MonkeyPatch.context() as mp:
            for name in _OTHER_AWS_SETTINGS:
                mp.delenv(name, raising=False)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
            for name, value in server.env().items():
                mp.setenv(name, value)
            yield server
    finally:
        server.stop()
