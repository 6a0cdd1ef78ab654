"""Project snapshots of a big project (issue 14, item 7): the ``bigproject`` case.

Makes a project of 5,003 files (5,000 small sources in 50 folders, a 100 MB model, a ``.gitignore``
and a README: about 105 MB), then, for each storage (the local default in a temp folder, and S3 on
a moto server over HTTP, as in the tests), times:

* ``tar+upload``: ``tar -cf`` of the project plus one upload of that file to the same storage (the
  reference of the goal: the first snapshot within 2x of it);
* ``first``: the first snapshot (nothing remembered, nothing stored);
* ``same``: again with nothing changed;
* ``one changed``: again after changing one small file;
* ``worker cold``: a worker materialising the first snapshot with an empty cache;
* ``worker warm``: materialising it again into a new folder (manifest and contents cached: no
  storage request; the request count is printed);
* ``worker changed``: materialising the snapshot with one file changed, with the cache of the first.

``--before REF`` also times the same steps with ``dstack/snapshot.py`` of commit REF (loaded from
git, e.g. the per-file implementation before issue 14 item 7: ``650d1b1``), in the same run.

Run from the repository root::

    .venv/bin/python -m bench.bench_snapshot [--storage local,s3] [--before 650d1b1] [--json out.json]

Everything is in-process (the CLI's and the worker's functions, not ``dstack run``): it measures the
snapshot itself, not the CLI's start or the containers. The machine's load is printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

from dstack import snapshot
from dstack.storage import ObjectInfo, Storage, open_storage
from dstack.storage.local import LocalStorage

SMALL_FILES = 5000
FOLDERS = 50
MODEL_MB = 100


def make_project(root: Path) -> None:
    """5,000 small sources (0.2-2 KB), a 100 MB model (random: written in 1 MB blocks), .gitignore, README."""
    for i in range(SMALL_FILES):
        folder = root / "src" / f"pkg{i % FOLDERS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = "\n".join(f"value_{i}_{j} = {i * j}  # source line" for j in range(5 + i % 60))
        (folder / f"module{i:04d}.py").write_text(f'"""Module {i}."""\n{lines}\n')
    (root / "models").mkdir()
    with open(root / "models" / "model.bin", "wb") as f:
        for _ in range(MODEL_MB):
            f.write(os.urandom(1 << 20))
    (root / ".gitignore").write_text("__pycache__/\n*.log\n")
    (root / "README.md").write_text("# big project\n")


class Counting(Storage):
    """A storage that counts the requests made through it."""

    def __init__(self, inner: Storage) -> None:
        self.inner, self.url, self.calls = inner, inner.url, 0

    def _count(self) -> Storage:
        self.calls += 1
        return self.inner

    def put_file(self, key: str, path: Path, progress: Any = None) -> None:
        self._count().put_file(key, path, progress)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._count().put_bytes(key, data)

    def get_file(self, key: str, path: Path, progress: Any = None) -> None:
        self._count().get_file(key, path, progress)

    def get_bytes(self, key: str) -> bytes:
        return self._count().get_bytes(key)

    def open_range(self, key: str, offset: int, length: int) -> Any:
        return self._count().open_range(key, offset, length)

    def exists(self, key: str) -> bool:
        return self._count().exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._count().list(prefix)

    def copy(self, source: str, target: str) -> None:
        self._count().copy(source, target)

    def delete(self, keys: Iterable[str]) -> None:
        self._count().delete(keys)

    def check(self) -> None:
        self._count().check()


def old_module(ref: str) -> ModuleType:
    """``dstack/snapshot.py`` of commit ``ref``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{ref}:dstack/snapshot.py"], check=True, capture_output=True,
                            text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="bench-snapshot-old-"))
    (folder / "old_snapshot.py").write_text(source)
    spec = importlib.util.spec_from_file_location(f"old_snapshot_{ref}", folder / "old_snapshot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return module


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


@contextmanager
def storages(kinds: list[str], scratch: Path) -> Iterator[dict[str, Callable[[str], Storage]]]:
    """For each kind, a function: name -> a fresh, empty storage."""
    made: dict[str, Callable[[str], Storage]] = {}
    server = None
    try:
        if "local" in kinds:
            made["local"] = lambda name: LocalStorage(scratch / "stores" / name)
        if "s3" in kinds:
            from tests.s3server import start_moto_server
            server = start_moto_server()
            os.environ.update(server.env())
            moto = server

            def s3(name: str) -> Storage:
                moto.create_bucket(name)
                return open_storage(f"s3://{name}/dstack")
            made["s3"] = s3
        yield made
    finally:
        if server is not None:
            server.stop()


def bench_new(storage_for: Callable[[str], Storage], project: Path, scratch: Path, tag: str) -> dict[str, Any]:
    """The steps with this tree's snapshot module."""
    figures: dict[str, Any] = {}
    store = storage_for(f"new-{tag}")
    state = scratch / f"state-{tag}"
    figures["first"], (first, files, uploaded) = timed(lambda: snapshot.upload_snapshot(project, store, state))
    figures["first_uploaded"] = uploaded
    figures["same"], _ = timed(lambda: snapshot.upload_snapshot(project, store, state))
    changed_file = project / "src" / "pkg07" / "module0007.py"
    original = changed_file.read_bytes()
    changed_file.write_bytes(original + b"# changed\n")
    try:
        figures["one changed"], (second, _, uploaded) = timed(
            lambda: snapshot.upload_snapshot(project, store, state))
        figures["one_changed_uploaded"] = uploaded
    finally:
        changed_file.write_bytes(original)
    worker = scratch / f"worker-{tag}"
    counting = Counting(store)
    figures["worker cold"], _ = timed(lambda: snapshot.materialize_snapshot(
        counting, first, worker / "t1", worker / "blobs", worker / "snapshots"))
    figures["worker_cold_requests"] = counting.calls
    counting.calls = 0
    figures["worker warm"], _ = timed(lambda: snapshot.materialize_snapshot(
        counting, first, worker / "t2", worker / "blobs", worker / "snapshots"))
    figures["worker_warm_requests"] = counting.calls
    counting.calls = 0
    figures["worker changed"], _ = timed(lambda: snapshot.materialize_snapshot(
        counting, second, worker / "t3", worker / "blobs", worker / "snapshots"))
    figures["worker_changed_requests"] = counting.calls
    assert (worker / "t1" / "models" / "model.bin").stat().st_size == MODEL_MB << 20
    assert files == SMALL_FILES + 3
    return figures


def bench_old(old: ModuleType, storage_for: Callable[[str], Storage], project: Path, scratch: Path,
              tag: str) -> dict[str, Any]:
    """The same steps with the snapshot module of ``--before``."""
    figures: dict[str, Any] = {}
    store = storage_for(f"old-{tag}")
    figures["first"], (first, _, _) = timed(lambda: old.upload_snapshot(project, store))
    figures["same"], _ = timed(lambda: old.upload_snapshot(project, store))
    changed_file = project / "src" / "pkg07" / "module0007.py"
    original = changed_file.read_bytes()
    changed_file.write_bytes(original + b"# changed\n")
    try:
        figures["one changed"], (second, _, _) = timed(lambda: old.upload_snapshot(project, store))
    finally:
        changed_file.write_bytes(original)
    worker = scratch / f"old-worker-{tag}"
    figures["worker cold"], _ = timed(lambda: old.materialize_snapshot(store, first, worker / "t1", worker / "b"))
    figures["worker warm"], _ = timed(lambda: old.materialize_snapshot(store, first, worker / "t2", worker / "b"))
    figures["worker changed"], _ = timed(lambda: old.materialize_snapshot(store, second, worker / "t3",
                                                                          worker / "b"))
    return figures


def tar_upload(storage: Storage, project: Path, scratch: Path) -> float:
    """``tar -cf`` of the project plus one upload of the archive."""
    archive = scratch / "project.tar"
    started = time.perf_counter()
    subprocess.run(["tar", "-cf", str(archive), "-C", str(project), "."], check=True)
    storage.put_file("bench/project.tar", archive)
    elapsed = time.perf_counter() - started
    archive.unlink()
    return elapsed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="local,s3", help="local, s3 or both (default: local,s3)")
    parser.add_argument("--before", metavar="REF", help="also time dstack/snapshot.py of commit REF")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.storage.split(",") if k.strip()]
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"cpus: {os.cpu_count()}", flush=True)
    old = old_module(args.before) if args.before else None
    results: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    try:
        project = scratch / "project"
        made, _ = timed(lambda: make_project(project))
        time.sleep(2.1)  # as a project is: files older than the stat cache's racy window
        print(f"project: {SMALL_FILES + 3} files, made in {made:.1f} s", flush=True)
        with storages(kinds, scratch) as kinds_made:
            for kind, storage_for in kinds_made.items():
                figures: dict[str, Any] = {"tar+upload": tar_upload(storage_for(f"tar-{kind}"), project, scratch)}
                figures["new"] = bench_new(storage_for, project, scratch, kind)
                if old is not None:
                    figures["before"] = bench_old(old, storage_for, project, scratch, kind)
                results[kind] = figures
                report(kind, figures)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"load: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(kind: str, figures: dict[str, Any]) -> None:
    new = figures["new"]
    before = figures.get("before", {})
    print(f"\n{kind}: tar+upload {figures['tar+upload']:.2f} s")
    print(f"  {'step':16} {'now s':>8}" + (f" {'before s':>9}" if before else ""))
    for step in ("first", "same", "one changed", "worker cold", "worker warm", "worker changed"):
        line = f"  {step:16} {new[step]:8.2f}"
        if before:
            line += f" {before[step]:9.2f}"
        print(line)
    print(f"  first / (tar+upload): {new['first'] / figures['tar+upload']:.2f}x; uploaded "
          f"{new['first_uploaded']} contents, then {new['one_changed_uploaded']} for one change; worker requests: "
          f"cold {new['worker_cold_requests']}, warm {new['worker_warm_requests']}, "
          f"changed {new['worker_changed_requests']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
