"""Storage in a local folder: the object at key ``a/b.txt`` is the file ``ROOT/a/b.txt``.

Atomic writes: an object is first written to a temporary file in the same folder
(``.<name>.<random>.dstack-tmp``), then renamed over its final name with
:func:`os.replace`. A rename within one file system is atomic, so a reader sees the
old object or the new one, never half of one. Temporary files a crash leaves behind
are never listed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Optional, Union

from dstack.errors import ObjectNotFound, StorageError
from dstack.storage import check_prefix
from dstack.storage.base import NEW_FILE_MODE, ObjectInfo, Progress, Storage, check_key, limited

#: Temporary files end with this; keys ending with it are stored but never listed.
TMP_SUFFIX = ".dstack-tmp"
_CHUNK = 1024 * 1024


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the ``with`` block succeeds.

    The parent folders are created. On any error the temporary file is removed and
    whatever was at ``path`` before stays untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class LocalStorage(Storage):
    """Objects as files under ``root`` (created on the first write or by :meth:`check`)."""

    def __init__(self, root: Union[str, os.PathLike[str]]) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _writing(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            with atomic_writer(path) as f:
                yield f
        except OSError as e:
            raise StorageError(f"cannot write {key!r} to {self.url}: {e}") from None

    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        with open(path, "rb") as src, self._writing(key) as dst:
            _copy(src, dst, progress)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as dst:
            dst.write(data)

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} from {self.url}: {e}") from None

    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        with self._open(key) as src:
            try:
                with atomic_writer(Path(path)) as dst:
                    _copy(src, dst, progress)
            except OSError as e:
                raise StorageError(f"cannot copy {key!r} from {self.url} to {path}: {e}") from None

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[BinaryIO]:
        with self._open(key) as f:
            f.seek(offset)
            yield limited(f, length)

    def copy(self, source: str, target: str) -> None:
        with self._open(source) as src, self._writing(target) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"cannot delete {key!r} from {self.url}: {e}") from None
            _remove_empty_parents(path.parent, self.root)

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Walk only the folder the prefix names (``runs/R1`` walks ``runs``), then filter.

        Keys are collected and sorted, so the order is plain string order of keys
        (``a-b`` before ``a/b``), the same order S3 lists in.
        """
        folder, _, _ = check_prefix(prefix).rpartition("/")
        top = self.root / folder if folder else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(top, onerror=self._walk_error):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            base = "" if rel == "." else rel + "/"
            # Prune sub-folders that cannot hold a matching key (only matters at the top).
            dirnames[:] = [d for d in dirnames if _may_match(base + d + "/", prefix)]
            for name in filenames:
                key = base + name
                if name.endswith(TMP_SUFFIX) or not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while we walked (or a dangling link)
                    continue
                found.append(ObjectInfo(key, st.st_size))
        found.sort(key=lambda o: o.key)
        return iter(found)

    def _walk_error(self, e: OSError) -> None:
        if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
            raise StorageError(f"cannot list {self.url}: {e}") from None

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".check.", suffix=TMP_SUFFIX):
                pass
        except OSError as e:
            raise StorageError(f"storage folder {self.root} is not writable: {e}") from None


def _copy(src: BinaryIO, dst: BinaryIO, progress: Optional[Progress]) -> None:
    """Copy in chunks, telling ``progress`` of each."""
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return
        dst.write(chunk)
        if progress is not None:
            progress(len(chunk))


def _remove_empty_parents(folder: Path, root: Path) -> None:
    """Remove ``folder`` and the folders above it up to ``root`` while they are empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): stop
            return
        folder = folder.parent


def _may_match(folder: str, prefix: str) -> bool:
    """Whether keys under ``folder`` (ending with ``/``) can start with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)
