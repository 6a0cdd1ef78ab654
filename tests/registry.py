"""A real container registry for the tests: Debian's ``docker-registry`` (the CNCF distribution registry) on a
free loopback port, open or with htpasswd authentication, and images built here and pushed to it.

The Docker engine treats registries on 127.0.0.0/8 as plain-HTTP ones, so no TLS is needed. No pytest here.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import docker

from tests.s3server import free_port
from tests.services import port_open

#: The base of the images the tests build and push (scripts/build-images.sh makes it).
BASE_IMAGE = "dstack/base:bookworm"


class Registry:
    """A registry serving from ``folder``; with ``user`` (``(name, password)``) every request needs it."""

    def __init__(self, folder: Path, user: Optional[tuple[str, str]] = None) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed; run scripts/setup.sh")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.user = user
        self.log_path = folder / "registry.log"
        auth = ""
        if user is not None:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", *user], check=True, capture_output=True, text=True)
            (folder / "htpasswd").write_text(htpasswd.stdout)
            auth = f"auth:\n  htpasswd:\n    realm: dstack-tests\n    path: {folder / 'htpasswd'}\n"
        config = folder / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                          f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
                          f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n  secret: dstack-tests\n{auth}")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def manifest_requests(self, repository: str, reference: str) -> int:
        """How many times a client asked for the manifest of ``repository:reference`` (a pull asks once or
        twice, HEAD and GET; a pull already in flight on the same engine is not asked again)."""
        needle = f"/v2/{repository}/manifests/{reference} "
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines()
                   if needle in line and '" 200 ' in line)

    def push(self, client: docker.DockerClient, image: str) -> None:
        """Push ``image`` (named ``HOST/REPO:TAG``) here, with this registry's user if it has one."""
        repository, _, tag = image.rpartition(":")
        auth = {"username": self.user[0], "password": self.user[1]} if self.user else None
        for line in client.images.push(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in line:
                raise RuntimeError(f"pushing {image} failed: {line['error']}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def build_image(client: docker.DockerClient, name: str, version: str, payload_mb: int = 0) -> str:
    """Build ``name`` from :data:`BASE_IMAGE` with ``/version`` holding ``version`` and a layer of ``payload_mb``
    random MB (so that a pull has something to download); returns the image's id."""
    dockerfile = (f"FROM {BASE_IMAGE}\n"
                  f"RUN echo {version} > /version"
                  + (f" && head -c {payload_mb * 1_000_000} /dev/urandom > /payload" if payload_mb else "") + "\n")
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True, network_mode="host")
    return str(image.id)


def remove_image(client: docker.DockerClient, name: str) -> None:
    """Remove the name ``name`` from the engine (the image goes with its last name)."""
    try:
        client.images.remove(name, force=True)
    except docker.errors.ImageNotFound:
        pass
