"""Storage backends, chosen by one URL (``DSTACK_STORAGE_URL``).

``open_storage("file:///var/lib/dstack")`` or ``open_storage("/var/lib/dstack")`` gives a
:class:`~dstack.storage.local.LocalStorage`; ``open_storage("s3://bucket/some/prefix")``
gives an :class:`~dstack.storage.s3.S3Storage`. The backends are imported only when
asked for, so a local-only setup never pays for importing boto3.
"""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

from dstack.errors import ConfigError
from dstack.storage.base import ObjectInfo, Storage, check_key

__all__ = ["ObjectInfo", "Storage", "check_key", "check_prefix", "open_storage"]

_FORMS = "file:///absolute/path, /absolute/path or s3://bucket/optional/prefix"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe listing prefix, else raise :class:`UnsafePath`.

    A prefix is ``""`` (everything), or a safe key, optionally ending with one ``/``
    (``runs/R1/`` lists inside the folder, ``runs/R1`` also matches ``runs/R10``).
    """
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def open_storage(url: str) -> Storage:
    """Open the storage that ``url`` names.

    Raises:
        ConfigError: ``url`` is none of the accepted forms.
    """
    def bad(why: str) -> ConfigError:
        return ConfigError(f"DSTACK_STORAGE_URL {url!r} {why}; use {_FORMS}")

    if url.startswith("/"):
        from dstack.storage.local import LocalStorage
        return LocalStorage(url)
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise bad("must not have a query or fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise bad("is not an absolute file:// URL")
        from dstack.storage.local import LocalStorage
        return LocalStorage(unquote(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise bad("names no bucket")
        from dstack.storage.s3 import S3Storage
        return S3Storage(parts.netloc, parts.path.strip("/"))
    raise bad("is not a storage URL")
