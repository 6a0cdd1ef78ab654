"""Storage reached through presigned URLs: a CLI that holds no storage credentials.

The scheduler signs each operation for the caller (``PresignStorage``, checked by
:mod:`dstack.scheduler.grants`); this backend asks for the URLs through the ``presign`` callable it is given
and sends plain HTTP requests with the standard library. No boto3 here: the CLI neither needs it nor pays for
importing it.

- **URLs are cached** until shortly before they expire (their lifetime is read from the URL, ``X-Amz-Expires``,
  and counted from when they were asked for, on this machine's clock). Threads that want URLs at the same time
  share one ``presign`` call: one call is in flight at a time, and the next takes what every waiting thread
  wants (:data:`PRESIGN_BATCH` at most), so ``presign`` is never called concurrently; a shared call that is
  refused is made again for the asking thread's operations alone, so that nobody fails for another's.
  :meth:`PresignedStorage.prefetch` asks for many URLs at once.
- **Uploads** are one ``PUT`` each, streamed with its ``Content-Length``: at most 5 GiB (S3's limit for one
  ``PUT``; larger files would need multipart uploads, which presigned URLs do not cover here). Every ``put``
  carries the SHA-256 of its content, which the scheduler signs as ``x-amz-checksum-sha256``: the server then
  refuses other content. A URL signed with ``If-None-Match: *`` (write-once keys) may find the object stored
  already (412): it stays, and that is no error.
- **Errors** become :class:`~dstack.errors.ObjectNotFound` (404 of ``get``/``head``) and
  :class:`~dstack.errors.StorageError`; transient ones (the connection, a timeout, 408, 429, 5xx) are tried again
  after short waits, and a refused URL (403: expired, the clock) once with a fresh one. Refusals of the scheduler
  itself (:class:`~dstack.errors.NotAllowed`) come through as they are.
- **Memory** stays bounded: bodies move in 1 MB blocks, a listing is read a page at a time.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import io
import itertools
import logging
import os
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET  # noqa: N817  # the usual name
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional, TypeVar, Union
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from dstack.errors import ObjectNotFound, RequestRejected, StorageError
from dstack.messages import StorageOp
from dstack.storage import check_prefix
from dstack.storage.base import ObjectInfo, Progress, Storage, check_key, file_digest, limited
from dstack.storage.local import atomic_writer

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``presign(ops)``: one URL per operation, in order (the CLI: ``rpc.call(PresignStorage(ops)).urls``).
Presign = Callable[[list[StorageOp]], list[str]]

#: The largest object one ``PUT`` may store (S3's limit).
MAX_PUT_SIZE = 5 * 1024 ** 3
#: The most operations one ``presign`` call asks for (the scheduler signs one in about half a millisecond).
PRESIGN_BATCH = 200
#: The most URLs kept for reuse.
CACHE_SIZE = 4096
#: A URL is reused for this share of its lifetime; the rest is left for the request to reach the server.
REUSE_SHARE = 0.8
#: Waits before trying a transient failure again.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
#: Parallel requests of :meth:`PresignedStorage.delete`.
DELETE_THREADS = 8
_CHUNK = 1024 * 1024
#: The most bytes read of an error's body, or of a listing page.
_ERROR_BODY_LIMIT = 64 * 1024
_PAGE_LIMIT = 16 * 1024 * 1024
_METHODS = {"get": "GET", "head": "HEAD", "put": "PUT", "list": "GET", "delete": "DELETE"}
#: The signed headers this client knows how to send (``host`` goes with every request).
_KNOWN_SIGNED = {"host", "x-amz-checksum-sha256", "if-none-match"}
#: The key :meth:`PresignedStorage.check` asks about (it need not exist).
CHECK_KEY = "blobs/.check"


class _Transient(StorageError):
    """A failure worth trying again: the connection, a timeout, the server busy or failing."""


class _Refused(StorageError):
    """The server refused the URL (403): expired, or signed for something else."""


class _Kept(StorageError):
    """A write-once ``put`` found its object stored already (412)."""


class PresignedStorage(Storage):
    """The storage at ``url`` (``s3://bucket/prefix``, as the scheduler reported it), reached through the URLs
    that ``presign`` returns; see the module's docstring.

    ``proxies`` (scheme -> proxy URL, with ``no`` for the hosts to reach directly) default to the standard
    library's reading of ``HTTP(S)_PROXY`` and ``NO_PROXY``, as boto3 does. ``ssl_context`` verifies HTTPS
    servers (default: the system's certificates).
    """

    def __init__(self, url: str, presign: Presign, *, timeout: float = 60.0,
                 retry_delays: Sequence[float] = RETRY_DELAYS, proxies: Optional[Mapping[str, str]] = None,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise StorageError(f"presigned storage needs an s3://bucket/prefix URL, not {url!r}")
        prefix = parts.path.strip("/")
        self.url = url
        self._prefix = f"{prefix}/" if prefix else ""
        self._signer = _Signer(presign)
        self._http = _Connections(timeout, proxies, ssl_context)
        self._retry_delays = tuple(retry_delays)

    # ------------------------------------------------------------------------------------------ the operations

    def prefetch(self, ops: Iterable[StorageOp]) -> None:
        """Ask for the URLs of ``ops`` now, :data:`PRESIGN_BATCH` a call, so that the operations that follow find
        them (they live a few minutes). Refused ones raise as they would later."""
        pending = iter(ops)
        while batch := list(itertools.islice(pending, PRESIGN_BATCH)):
            self._signer.urls(batch)

    def will_read(self, keys: Iterable[str]) -> None:
        """Ask for the ``get`` URLs of (the first :data:`CACHE_SIZE` of) ``keys`` in as few calls as can be."""
        self.prefetch(StorageOp("get", key) for key in itertools.islice(keys, CACHE_SIZE))

    def put_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        check_key(key)
        try:
            size = os.stat(path).st_size
            if size > MAX_PUT_SIZE:
                raise StorageError(
                    f"{path} is {size / 1024 ** 3:.1f} GiB: through presigned URLs a file is stored with one PUT, "
                    f"which S3 limits to 5 GiB; store it in smaller parts, or from a machine with storage "
                    f"credentials")
            digest = file_digest(path)
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from None
        op = StorageOp("put", key, sha256=digest)

        def attempt() -> None:
            try:
                source = open(path, "rb")
            except OSError as e:
                raise StorageError(f"cannot read {path}: {e}") from None
            with source:
                length = os.fstat(source.fileno()).st_size
                self._put(op, _Counting(source, progress), length)

        self._attempts(op, attempt)

    def put_bytes(self, key: str, data: bytes) -> None:
        op = StorageOp("put", check_key(key), sha256=hashlib.sha256(data).hexdigest())
        self._attempts(op, lambda: self._put(op, data, len(data)))

    def get_file(self, key: str, path: Path, progress: Optional[Progress] = None) -> None:
        """Download beside ``path`` under a temporary name, then rename: never a half file."""
        op = StorageOp("get", check_key(key))

        def attempt() -> None:
            with self._exchange(op) as response:
                try:
                    with atomic_writer(Path(path)) as target:
                        while block := response.read(_CHUNK):
                            target.write(block)
                            if progress is not None:
                                progress(len(block))
                except OSError as e:  # the local file (the network's errors are storage errors by now)
                    raise StorageError(f"cannot write {path}: {e}") from None

        self._attempts(op, attempt)

    def get_bytes(self, key: str) -> bytes:
        op = StorageOp("get", check_key(key))

        def attempt() -> bytes:
            with self._exchange(op) as response:
                return response.read()

        return self._attempts(op, attempt)

    @contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[BinaryIO]:
        """One ranged ``GET``, its body streamed."""
        op = StorageOp("get", check_key(key))
        if length <= 0:
            yield limited(io.BytesIO(), 0)
            return
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        response = self._attempts(op, lambda: self._request(op, headers=headers))
        try:
            if response.status == 200:  # a server that ignores ranges sends the whole object: skip to the range
                skip = offset
                while skip > 0:
                    skipped = len(response.read(min(skip, _CHUNK)))
                    if not skipped:
                        raise StorageError(f"{key!r} in {self.url} is shorter than {offset + length} bytes")
                    skip -= skipped
            yield limited(response, length)  # type: ignore[arg-type]  # reads like a BinaryIO
        finally:
            response.close()

    def exists(self, key: str) -> bool:
        op = StorageOp("head", check_key(key))

        def attempt() -> bool:
            try:
                with self._exchange(op):
                    return True
            except ObjectNotFound:
                return False

        return self._attempts(op, attempt)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Page through ``ListObjectsV2`` (a URL per page); S3 returns keys in order."""
        return self._list(check_prefix(prefix))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        token = ""
        while True:
            op = StorageOp("list", prefix, continuation=token)
            page = self._attempts(op, functools.partial(self._list_page, op))
            yield from page.objects
            if not page.truncated:
                return
            if not page.token or page.token == token:
                raise StorageError(f"{self.url} answered a listing of {prefix!r} that goes on, but not where")
            token = page.token

    def _list_page(self, op: StorageOp) -> _Page:
        with self._exchange(op) as response:
            data = response.read(_PAGE_LIMIT + 1)
            encoded = response.url_encoded
        if len(data) > _PAGE_LIMIT:
            raise StorageError(f"{self.url} answered a listing of {op.key!r} over {_PAGE_LIMIT} bytes a page")
        try:
            return _parse_page(data, encoded, self._prefix)
        except (ET.ParseError, ValueError) as e:
            raise StorageError(f"{self.url} answered a listing of {op.key!r} that is no ListBucketResult: "
                               f"{e}") from None

    def copy(self, source: str, target: str) -> None:
        """Refused: only workers copy (the job cache), and they have credentials of their own."""
        raise StorageError(f"copying {source!r} to {target!r} is not possible through presigned URLs ({self.url}); "
                           "only workers copy objects, with storage credentials of their own")

    def delete(self, keys: Iterable[str]) -> None:
        """A ``DELETE`` per key (a batch delete names its keys in its body, which a presigned URL does not sign),
        their URLs asked for :data:`PRESIGN_BATCH` at a time, :data:`DELETE_THREADS` requests at a time."""
        pending = iter(keys)
        pool: Optional[ThreadPoolExecutor] = None
        try:
            while batch := [StorageOp("delete", check_key(key)) for key in itertools.islice(pending, PRESIGN_BATCH)]:
                self._signer.urls(batch)
                if len(batch) == 1:
                    self._delete(batch[0])
                    continue
                if pool is None:
                    pool = ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="dstack-delete")
                for _ in pool.map(self._delete, batch):
                    pass
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _delete(self, op: StorageOp) -> None:
        def attempt() -> None:
            try:
                with self._exchange(op):
                    pass
            except ObjectNotFound:
                pass

        self._attempts(op, attempt)

    def check(self) -> None:
        """One ``HEAD`` (of :data:`CHECK_KEY`, which need not exist): the scheduler signs and the server answers."""
        self.exists(CHECK_KEY)

    # --------------------------------------------------------------------------------------------- the requests

    def _put(self, op: StorageOp, body: Union[bytes, _Counting], length: int) -> None:
        url = self._signer.url(op)
        signed = _signed_headers(url)
        unknown = signed - _KNOWN_SIGNED
        if unknown:
            raise StorageError(f"the scheduler signed header(s) {', '.join(sorted(unknown))} for {op.key!r}, which "
                               "this dstack does not send; upgrade dstack")
        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
        if "x-amz-checksum-sha256" in signed:
            headers["x-amz-checksum-sha256"] = base64.b64encode(bytes.fromhex(op.sha256)).decode()
        if "if-none-match" in signed:
            headers["If-None-Match"] = "*"
        try:
            with self._exchange(op, url=url, headers=headers, body=body):
                pass
        except _Kept:
            pass  # a write-once key: what is stored stays (for a content-addressed key, the same content)

    @contextmanager
    def _exchange(self, op: StorageOp, *, url: Optional[str] = None, headers: Optional[dict[str, str]] = None,
                  body: Union[bytes, _Counting, None] = None) -> Iterator[_Response]:
        """A request whose answer is a success (else it raises); the connection goes back to the pool once the
        body was read."""
        response = self._request(op, url=url, headers=headers, body=body)
        try:
            yield response
        finally:
            response.close()

    def _request(self, op: StorageOp, *, url: Optional[str] = None, headers: Optional[dict[str, str]] = None,
                 body: Union[bytes, _Counting, None] = None) -> _Response:
        """Send ``op`` and return the successful answer (2xx), its body unread.

        Raises:
            ObjectNotFound: 404 of a ``get`` or ``head``.
            _Transient, _Refused, _Kept, StorageError: as their names say.
        """
        url = url or self._signer.url(op)
        what = f"{op.action} {op.key!r} in {self.url}"
        response = self._http.send(_METHODS[op.action], url, headers or {}, body, what)
        if 200 <= response.status < 300:
            return response
        code, message = _error_of(response)
        status = response.status
        response.close()
        said = f"{status} {code}{': ' + message if message else ''}".strip()
        if status == 404 and op.action in ("get", "head", "delete") and code != "NoSuchBucket":
            raise ObjectNotFound(op.key)
        if status == 412 and op.action == "put":
            raise _Kept(said)
        if status == 403:
            raise _Refused(f"{what}: the server refused the presigned URL ({said}); is the scheduler's clock right, "
                           f"and may its storage credentials do this?")
        if status in (408, 429) or status >= 500:
            raise _Transient(f"{what}: {said}")
        if code in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"):
            raise StorageError(f"{what}: the content changed while it was uploaded (the server refused it: {said}); "
                               "run again")
        if status == 404:
            raise StorageError(f"{what}: {said}; is the bucket there?")
        raise StorageError(f"{what}: {said}")

    def _attempts(self, op: StorageOp, action: Callable[[], T]) -> T:
        """Run ``action`` (one try of ``op``); try transient failures again after each of the retry delays, and
        a refused URL once more with a fresh one."""
        started = time.monotonic()
        delays = iter(self._retry_delays)
        refreshed = False
        for attempt in itertools.count(1):
            try:
                return action()
            except _Refused:
                self._signer.forget(op)
                if refreshed:
                    raise
                refreshed = True
            except _Transient as e:
                delay = next(delays, None)
                if delay is None:
                    raise StorageError(f"{e}; failed {attempt} times over {time.monotonic() - started:.0f} s") from None
                log.warning("%s; trying again in %g s", e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------------ URLs


_OpKey = tuple[str, str, str, str]


def _op_key(op: StorageOp) -> _OpKey:
    return (op.action, op.key, op.continuation, op.sha256)


class _Signer:
    """URLs for operations: cached until shortly before they expire; those missing asked for in batches, one
    call at a time, each taking what every waiting thread wants."""

    def __init__(self, presign: Presign, batch: int = PRESIGN_BATCH, capacity: int = CACHE_SIZE) -> None:
        self._presign, self._batch, self._capacity = presign, batch, capacity
        self._cond = threading.Condition()
        self._cache: OrderedDict[_OpKey, tuple[str, float]] = OrderedDict()  # -> (url, reuse until)
        self._wanted: dict[_OpKey, StorageOp] = {}  # what waiting threads want, in order
        self._busy = False

    def url(self, op: StorageOp) -> str:
        return self.urls([op])[0]

    def forget(self, op: StorageOp) -> None:
        with self._cond:
            self._cache.pop(_op_key(op), None)

    def urls(self, ops: Sequence[StorageOp]) -> list[str]:
        """One URL per op, in order: cached ones, the others asked for."""
        keys = [_op_key(op) for op in ops]
        found: dict[_OpKey, str] = {}
        alone = False  # ask for these only, after a refusal that may have been of another thread's operation
        with self._cond:
            while True:
                now = time.monotonic()
                missing: dict[_OpKey, StorageOp] = {}
                for key, op in zip(keys, ops):
                    if key in found:
                        continue
                    cached = self._cache.get(key)
                    if cached is not None and cached[1] > now:
                        found[key] = cached[0]
                    else:
                        missing[key] = op
                if not missing:
                    return [found[key] for key in keys]
                if self._busy:  # another thread asks: it or the next one will ask for these too
                    for key, op in missing.items():
                        self._wanted.setdefault(key, op)
                    self._cond.wait()
                    continue
                batch = dict(itertools.islice(missing.items(), self._batch))
                for key, op in self._wanted.items():
                    if alone or len(batch) >= self._batch:
                        break
                    batch.setdefault(key, op)
                for key in batch:
                    self._wanted.pop(key, None)
                self._busy = True
                asked_at = time.monotonic()
                self._cond.release()
                try:
                    urls = self._presign(list(batch.values()))
                except RequestRejected:
                    if alone or all(key in missing for key in batch):
                        raise
                    alone = True  # the others ask again for theirs
                    continue
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
                if len(urls) != len(batch):
                    raise StorageError(f"asked for {len(batch)} presigned URLs, the scheduler answered {len(urls)}")
                for key, url in zip(batch, urls):
                    if key in missing:
                        found[key] = url
                    lifetime = _lifetime(url)
                    if lifetime:
                        self._cache[key] = (url, asked_at + lifetime * REUSE_SHARE)
                        self._cache.move_to_end(key)
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)


def _lifetime(url: str) -> float:
    """The seconds a presigned URL lives (``X-Amz-Expires``); 0 when it does not say (then used once)."""
    try:
        return float(parse_qs(urlsplit(url).query).get("X-Amz-Expires", ["0"])[0])
    except ValueError:
        return 0.0


def _signed_headers(url: str) -> set[str]:
    """The headers a presigned URL's signature covers, lowercase (``X-Amz-SignedHeaders``)."""
    names = parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", [""])[0]
    return {name.strip().lower() for name in names.split(";") if name.strip()}


# -------------------------------------------------------------------------------------------------------- HTTP


class _Counting:
    """A file read by http.client to send it, telling ``progress`` of every block."""

    def __init__(self, source: BinaryIO, progress: Optional[Progress]) -> None:
        self._source, self._progress = source, progress

    def read(self, size: int = -1) -> bytes:
        block = self._source.read(size)
        if block and self._progress is not None:
            self._progress(len(block))
        return block


class _Response:
    """An answer being read: network errors become transient storage errors; once the body was read whole,
    its connection goes back to the pool."""

    def __init__(self, connections: _Connections, origin: _Origin, connection: http.client.HTTPConnection,
                 response: http.client.HTTPResponse, url: str, what: str) -> None:
        self._connections, self._origin, self._connection = connections, origin, connection
        self._response = response
        self.status = response.status
        self.url_encoded = parse_qs(urlsplit(url).query).get("encoding-type", [""])[0] == "url"
        self._what = what
        self._closed = False

    def read(self, size: int = -1) -> bytes:
        try:
            return self._response.read(size if size >= 0 else None)
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(f"{self._what}: the connection broke while reading: {e!r}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        whole = self._response.isclosed() or self._response.length == 0
        if whole and not self._response.will_close:
            self._response.close()
            self._connections.release(self._origin, self._connection)
        else:  # unread body, or the server closes: the connection cannot serve another request
            self._response.close()
            self._connection.close()

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_Origin = tuple[str, str, int]


class _Connections:
    """Keep-alive HTTP(S) connections, by server, shared by threads (each connection serves one request at a
    time); through a proxy where the environment (or ``proxies``) says so."""

    #: Idle connections kept per server.
    IDLE = 16

    def __init__(self, timeout: float, proxies: Optional[Mapping[str, str]],
                 ssl_context: Optional[ssl.SSLContext]) -> None:
        self._timeout = timeout
        self._proxies = dict(urllib.request.getproxies() if proxies is None else proxies)
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def send(self, method: str, url: str, headers: dict[str, str], body: Union[bytes, _Counting, None],
             what: str) -> _Response:
        """Send one request and return its answer, body unread.

        Raises:
            _Transient: no answer (the connection failed or timed out).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StorageError(f"{what}: the scheduler sent no HTTP URL ({parts.scheme}://{parts.hostname or ''})")
        origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        # A kept connection that the server closed meanwhile fails at once: then a new one. A body is always sent on
        # a new connection, so that it is never sent twice.
        connection = self._take(origin) if body is None else None
        while True:
            reused = connection is not None
            if connection is None:
                connection = self._open(origin)
            if isinstance(connection, _ProxiedHTTP):
                target, headers = url, {**connection.proxy_headers, **headers}
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as e:
                if reused and isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    connection.close()
                    connection = None
                    continue
                answer = _answer_despite(connection, e) if body is not None else None
                if answer is None:
                    connection.close()
                    raise _failure(e, what, parts.hostname) from None
                response = answer
            return _Response(self, origin, connection, response, url, what)

    def _take(self, origin: _Origin) -> Optional[http.client.HTTPConnection]:
        with self._lock:
            idle = self._idle.get(origin)
            return idle.pop() if idle else None

    def release(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.IDLE:
                idle.append(connection)
                return
        connection.close()

    def _open(self, origin: _Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        proxy = self._proxies.get(scheme)
        if proxy and urllib.request.proxy_bypass_environment(host, self._proxies):  # type: ignore[attr-defined]  # not in the stubs
            proxy = None
        if not proxy:
            if scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._context(),
                                                   blocksize=_CHUNK)
            return http.client.HTTPConnection(host, port, timeout=self._timeout, blocksize=_CHUNK)
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        headers = {}
        if via.username:
            credentials = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        if scheme == "https":
            connection = http.client.HTTPSConnection(via.hostname or "", via.port or 80, timeout=self._timeout,
                                                     context=self._context(), blocksize=_CHUNK)
            connection.set_tunnel(host, port, headers=headers)
            return connection
        return _ProxiedHTTP(via.hostname or "", via.port or 80, timeout=self._timeout, blocksize=_CHUNK,
                            proxy_headers=headers)

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import ssl  # here: most storage is reached over HTTPS, but tests and local MinIO over HTTP

            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


class _ProxiedHTTP(http.client.HTTPConnection):
    """Plain HTTP through a proxy: requests name the whole URL, with the proxy's credentials."""

    def __init__(self, host: str, port: int, *, timeout: float, blocksize: int, proxy_headers: dict[str, str]) -> None:
        super().__init__(host, port, timeout=timeout, blocksize=blocksize)
        self.proxy_headers = proxy_headers


def _answer_despite(connection: http.client.HTTPConnection, error: Exception) -> Optional[http.client.HTTPResponse]:
    """The answer a server sent before it closed the connection on a body it would not take (a refusal of a
    large upload), if there is one."""
    if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
        return None
    try:
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        return None


def _failure(error: Exception, what: str, host: Optional[str]) -> StorageError:
    """A request that got no answer: a certificate the client refuses is no passing failure; the rest are."""
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        return StorageError(f"{what}: the certificate of {host} is not trusted: {error.verify_message}")
    return _Transient(f"{what}: no answer from {host}: {error!r}")


# ------------------------------------------------------------------------------------------------------ parsing


@dataclass
class _Page:
    objects: list[ObjectInfo]
    truncated: bool
    token: str


def _local(tag: str) -> str:
    """A tag without its namespace."""
    return tag.rpartition("}")[2]


def _parse_page(data: bytes, encoded: bool, prefix: str) -> _Page:
    """One ``ListBucketResult`` page: its objects, keys made relative to ``prefix``."""
    root = ET.fromstring(data)
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"the root element is {_local(root.tag)}")
    objects, truncated, token = [], False, ""
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            fields = {_local(item.tag): item.text or "" for item in child}
            key = unquote_plus(fields["Key"]) if encoded else fields["Key"]
            if not key.startswith(prefix):
                raise ValueError(f"the key {key!r} is not under {prefix!r}")
            objects.append(ObjectInfo(key[len(prefix):], int(fields["Size"])))
        elif name == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif name == "NextContinuationToken":
            token = child.text or ""
    return _Page(objects, truncated, token)


def _error_of(response: _Response) -> tuple[str, str]:
    """The ``Code`` and ``Message`` of an S3 error answer (empty when it has no such body)."""
    try:
        data = response.read(_ERROR_BODY_LIMIT)
    except StorageError:
        return "", ""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return "", data[:200].decode(errors="replace").strip()
    fields = {_local(item.tag): (item.text or "").strip() for item in root}
    return fields.get("Code", ""), fields.get("Message", "")

