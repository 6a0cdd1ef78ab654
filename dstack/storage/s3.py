"""Storage in an S3 bucket (AWS, MinIO, moto...): the object at key ``k`` is ``PREFIX/k``.

Configuration is boto3's own: credentials from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``...), region from ``AWS_DEFAULT_REGION``,
and a non-AWS server from ``AWS_ENDPOINT_URL_S3`` (boto3 reads it itself).

Large files go through boto3's transfer manager: above :data:`TRANSFER`'s threshold
they move as parallel multipart chunks, so memory stays bounded whatever the size.
An S3 PUT is atomic, so an object appears whole or not at all.

botocore errors are converted in :meth:`S3Storage._errors`, where they enter: a
missing object becomes :class:`ObjectNotFound`, everything else a
:class:`StorageError` naming the storage, the endpoint and what to check.

:meth:`S3Storage.presign` signs one operation for someone without credentials
(SigV4 query signing, which AWS and MinIO check: the URL is good for its method,
its key and the headers it names, until it expires); the scheduler hands such URLs
to the CLI (:mod:`dstack.scheduler.grants`, :mod:`dstack.storage.presigned`).
"""
from __future__ import annotations

import base64
import io
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional

import boto3
from boto3.exceptions import Boto3Error, RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from dstack.errors import ObjectNotFound, StorageError
from dstack.storage import check_prefix
from dstack.storage.base import NEW_FILE_MODE, ObjectInfo, Progress, Storage, check_key, limited

if TYPE_CHECKING:
    from dstack.messages import StorageOp

_MB = 1024 * 1024
#: Multipart above 8 MB, in 8 MB parts, at most 4 at a time (~32 MB in flight).
TRANSFER = TransferConfig(multipart_threshold=8 * _MB, multipart_chunksize=8 * _MB,
                          max_concurrency=4, preferred_transfer_client="classic")
#: Normal operations: patient, with boto3's standard retry mode.
_OPS_CONFIG = Config(connect_timeout=10, read_timeout=60,
                     retries={"mode": "standard", "max_attempts": 3})
#: check(): answer fast when the endpoint is wrong or down.
_CHECK_CONFIG = Config(connect_timeout=5, read_timeout=5,
                       retries={"mode": "standard", "max_attempts": 2})

#: The most keys one ``delete_objects`` request takes.
_DELETE_BATCH = 1000
#: The longest a SigV4 presigned URL may live (S3's limit: 7 days).
PRESIGN_MAX_EXPIRES = 7 * 24 * 3600
#: What each action of a :class:`~dstack.messages.StorageOp` is in S3.
_PRESIGN_METHODS = {"get": "get_object", "head": "head_object", "put": "put_object", "list": "list_objects_v2",
                    "delete": "delete_object"}
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken"}


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix`` (no leading or trailing ``/`` needed)."""

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._session = boto3.session.Session()  # one per storage: sessions are not thread-safe
        self._client = self._make_client(_OPS_CONFIG)  # clients are, so share this one
        self._check_client: Optional[Any] = None
        self._presign_client: Optional[Any] = None

    def _make_client(self, config: Config) -> Any:
        try:
            return self._session.client("s3", config=config)
        except (BotoCoreError, ValueError) as e:  # e.g. a malformed AWS_ENDPOINT_URL_S3
            raise StorageError(f"cannot set up S3 storage {self.url}: {e}; check "
                               f"AWS_ENDPOINT_URL_S3 and the AWS_* settings") from None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, key: Optional[str] = None) -> Iterator[None]:
        """Turn boto3/botocore errors raised in the block into dstack errors."""
        try:
            yield
        except (BotoCoreError, Boto3Error, ClientError) as e:
            raise self._convert(e, key) from None

    def _convert(self, e: Exception, key: Optional[str]) -> StorageError:
        where = f"S3 storage {self.url} (endpoint {self._client.meta.endpoint_url})"
        # The transfer manager wraps the real cause: unwrap it.
        if isinstance(e, S3UploadFailedError) and isinstance(e.__context__, ClientError):
            e = e.__context__
        elif isinstance(e, RetriesExceededError) and isinstance(getattr(e, "last_exception", None), Exception):
            e = e.last_exception  # type: ignore[attr-defined]  # set by its __init__, missing from the stubs
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND and key is not None:
                return ObjectNotFound(key)
            if code in _NOT_FOUND or code == "NoSuchBucket":
                return StorageError(f"{where}: bucket {self.bucket!r} does not exist; create it "
                                    f"or check DSTACK_STORAGE_URL and AWS_ENDPOINT_URL_S3")
            if code in _DENIED:
                return StorageError(f"{where} refused access ({code}): check the credentials "
                                    f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) "
                                    f"and their rights on the bucket")
            return StorageError(f"{where}: {e}")
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(f"{where}: no usable AWS credentials ({e}); set "
                                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(e, (ConnectionError, HTTPClientError)):
            return StorageError(f"cannot reach {where}: {e}; check AWS_ENDPOINT_URL_S3 and "
                                f"that the server is up and reachable")
        return StorageError(f"{where}: {e}")

    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        with self._errors(key):
            self._client.upload_file(os.fspath(path), self.bucket, self._key(check_key(key)),
                                     Config=TRANSFER, Callback=progress)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(check_key(key)), Body=data)

    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        """Download beside ``path`` under a temporary name, then rename: never a half file."""
        full, path = self._key(check_key(key)), Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".dstack-tmp", dir=path.parent)
        os.close(fd)
        try:
            with self._errors(key):
                self._client.download_file(self.bucket, full, tmp, Config=TRANSFER, Callback=progress)
            os.chmod(tmp, NEW_FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(check_key(key)))
            return resp["Body"].read()

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[BinaryIO]:
        """One ranged ``get_object``, its body streamed."""
        if length <= 0:
            yield limited(io.BytesIO(), 0)
            return
        with self._errors(key):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(check_key(key)),
                                           Range=f"bytes={offset}-{offset + length - 1}")
        body = resp["Body"]
        try:
            yield limited(_Body(body, self, key), length)  # type: ignore[arg-type]  # reads like a BinaryIO
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(check_key(key)))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Page through ``list_objects_v2`` (1000 keys a page); S3 returns keys in order."""
        return self._list(self._key(check_prefix(prefix)), len(self._key("")))

    def _list(self, full_prefix: str, strip: int) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][strip:], obj["Size"])

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (``copy_object``; multipart copy above the transfer threshold)."""
        with self._errors(source):
            self._client.copy({"Bucket": self.bucket, "Key": self._key(check_key(source))}, self.bucket,
                              self._key(check_key(target)), Config=TRANSFER)

    def delete(self, keys: Iterable[str]) -> None:
        """``delete_objects``, 1000 keys a request (S3's most)."""
        pending = iter(keys)
        while batch := [self._key(check_key(key)) for key in itertools.islice(pending, _DELETE_BATCH)]:
            self._delete(batch)

    def _delete(self, full_keys: Sequence[str]) -> None:
        with self._errors():
            answer = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True})
        failed = answer.get("Errors") or []
        if failed:
            first = failed[0]
            raise StorageError(f"S3 storage {self.url}: {len(failed)} object(s) not deleted; the first, "
                               f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def presign(self, op: StorageOp, expires_in: float, *, max_keys: Optional[int] = None,
                create_only: bool = False) -> str:
        """A URL that lets its holder do ``op`` and nothing else, for ``expires_in`` seconds (SigV4 query
        signing; no request is made).

        ``op.key`` is relative to this storage's prefix (for ``list``, the prefix to list; ``max_keys`` sets the
        page size, S3's default being 1000). A ``put`` with ``op.sha256`` (hex) signs the header
        ``x-amz-checksum-sha256`` (the base64 of the digest): the client must send it, and the server refuses
        content with another digest. ``create_only`` signs ``If-None-Match: *``: the client must send it, and the
        server keeps an object stored already (answering 412).

        Raises:
            ValueError: an unknown action, an unsafe key or a bad digest or lifetime.
            StorageError: the URL could not be signed (no credentials).
        """
        if op.action not in _PRESIGN_METHODS:
            raise ValueError(f"cannot presign {op.action!r}: the actions are {', '.join(_PRESIGN_METHODS)}")
        if not 1 <= expires_in <= PRESIGN_MAX_EXPIRES:
            raise ValueError(f"a presigned URL lives 1 to {PRESIGN_MAX_EXPIRES} s, not {expires_in:g}")
        params: dict[str, Any] = {"Bucket": self.bucket}
        if op.action == "list":
            params["Prefix"] = self._key(check_prefix(op.key))
            if op.continuation:
                params["ContinuationToken"] = op.continuation
            if max_keys is not None:
                params["MaxKeys"] = max_keys
        else:
            params["Key"] = self._key(check_key(op.key))
        if op.action == "put":
            if op.sha256:
                try:
                    digest = bytes.fromhex(op.sha256)
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ValueError(f"{op.sha256!r} is no SHA-256 digest (64 hex digits)")
                params["ChecksumSHA256"] = base64.b64encode(digest).decode()
            if create_only:
                params["IfNoneMatch"] = "*"
        if self._presign_client is None:
            # SigV4 explicitly: botocore would otherwise presign some requests with the legacy SigV2, which
            # signs no checksum header and which MinIO and newer AWS regions refuse
            self._presign_client = self._make_client(_OPS_CONFIG.merge(Config(signature_version="s3v4")))
        with self._errors(op.key):
            url: str = self._presign_client.generate_presigned_url(
                _PRESIGN_METHODS[op.action], Params=params, ExpiresIn=int(expires_in))
        return url

    def check(self) -> None:
        """``head_bucket`` with short timeouts and one retry, on a client kept for this."""
        if self._check_client is None:
            self._check_client = self._make_client(_CHECK_CONFIG)
        with self._errors():
            self._check_client.head_bucket(Bucket=self.bucket)


class _Body:
    """A streaming ``get_object`` body whose read errors become dstack errors."""

    def __init__(self, body: Any, storage: S3Storage, key: str) -> None:
        self._body, self._storage, self._key = body, storage, key

    def read(self, size: int = -1) -> bytes:
        with self._storage._errors(self._key):
            return bytes(self._body.read(size if size >= 0 else None))
