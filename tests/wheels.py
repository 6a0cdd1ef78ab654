"""Local package folders (wheelhouses) for jobs that install requirements in a closed network.

Containers here reach no package index; workers mount a wheelhouse into every container and point
pip at it (``DSTACK_CONTAINER_MOUNTS``, ``DSTACK_CONTAINER_ENV``), as a closed site would.
"""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

#: Where downloaded wheels are kept between test sessions.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dstack" / "wheelhouse"


def make_wheel(folder: Path, name: str, version: str, modules: Dict[str, str]) -> Path:
    """Write a pure-Python wheel of ``modules`` (file name -> source) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = dict(modules)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{dist_info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: dstack-tests\nRoot-Is-Purelib: true\n"
                                   "Tag: py3-none-any\n")
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def download_wheels(*requirements: str) -> Path:
    """The shared wheelhouse with ``requirements`` and what they need, downloaded once by the host's pip
    (which reaches the package index the machine is set up with)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stamp = CACHE / (hashlib.sha256(" ".join(requirements).encode()).hexdigest()[:16] + ".done")
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
                        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(CACHE), *requirements], check=True)
        stamp.touch()
    return CACHE
