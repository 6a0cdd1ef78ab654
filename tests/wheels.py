"""Local package folders (wheelhouses) for jobs that install requirements in a closed network.

Containers here reach no package index; workers mount a wheelhouse into every container and point
pip at it (``DSTACK_CONTAINER_MOUNTS``, ``DSTACK_CONTAINER_ENV``), as a closed site would.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

#: Where package folders are kept between test sessions.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dstack" / "wheelhouses"


def make_wheel(folder: Path, name: str, version: str, modules: dict[str, str]) -> Path:
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


def pip_from(folder: Path) -> dict[str, str]:
    """A worker's settings that give every container ``folder`` as its only package index."""
    return {"DSTACK_CONTAINER_MOUNTS": f"{folder}:/wheels:ro",
            "DSTACK_CONTAINER_ENV": "{PIP_NO_INDEX: 1, PIP_FIND_LINKS: /wheels}"}


def wheelhouse(name: str, requirements: Sequence[str], files: Sequence[Path] = ()) -> Path:
    """A package folder with ``files`` (wheels on this machine, hard-linked or copied) and ``requirements``
    with what they need, downloaded by the host's pip (which reaches the package index the machine is
    set up with) for the Python 3.11 of the local images.

    Built once under :data:`CACHE` as ``NAME``: in a folder beside it, renamed into place when complete,
    so a session that stops half-way leaves no partial one.
    """
    key = " ".join([f.name for f in files] + list(requirements))
    target = CACHE / name
    if (target / ".done").exists() and (target / ".done").read_text() == key:
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{name}-"))
    try:
        for wheel in files:
            try:
                os.link(wheel, building / wheel.name)
            except OSError:  # another file system
                shutil.copyfile(wheel, building / wheel.name)
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
                        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(building), *requirements],
                       check=True, timeout=600)
        (building / ".done").write_text(key)
        shutil.rmtree(target, ignore_errors=True)  # an older one
        try:
            building.rename(target)
        except OSError:  # a session beside this one was quicker
            if not (target / ".done").exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target
