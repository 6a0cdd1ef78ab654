"""Which storage operations a caller may have presigned URLs for, and signing them.

Users hold no storage credentials (workers do): the CLI asks the scheduler for a URL per operation
(``PresignStorage``), and gets all it asked for or none (:class:`~dstack.errors.NotAllowed`, naming the key and
why). What a user may touch:

===================================  ============================================================================
``blobs/...``, ``snapshots/...``     the content-addressed snapshot store, shared by all: ``head`` for everyone
                                     (never ``get`` or ``list``: a project's files are read by workers only);
                                     ``put`` only of the content the key names (its SHA-256
                                     is signed, and the server refuses other content: ``blobs/AB/DIGEST``,
                                     ``blobs/packs/DIGEST``; a record's marker ``blobs/records/NAME`` holds
                                     nothing), and of a manifest ``snapshots/ID.json`` only where none is stored
                                     (``If-None-Match: *``); never ``delete``
``runs/RUN/...``                     while run ``RUN`` exists: ``get``, ``head``, ``list`` for whoever may see it
                                     (``DSTACK_VISIBILITY``); while no run ``RUN`` exists: ``list`` and
                                     ``delete`` (the leftovers of a run the scheduler deleted, or an upload that
                                     was refused) and ``put`` of an upload's files and manifest
                                     (``artifacts/upload.0/...``, ``manifests/upload.0.json``), before
                                     ``RecordUpload`` records the run
anything else (``cache/``, ...)      nothing
===================================  ============================================================================

A ``list`` prefix must lie inside one of these (``runs/RUN/logs/`` does, ``runs/`` and ``runs/RUN`` do not). Every
``put`` carries the SHA-256 of its content. The scheduler's own account may do anything; worker accounts ask for
nothing (they use their own credentials).
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

from dstack.errors import NotAllowed, RequestRejected, UnsafePath
from dstack.messages import UPLOAD_WORKFLOW, StorageOp
from dstack.names import job_id
from dstack.scheduler.access import Caller, Role
from dstack.storage import Storage, check_key, check_prefix
from dstack.views import PresignedUrls, StorageInfo

#: How long a URL lives by default (seconds): long enough for a slow start, short enough not to matter once leaked.
EXPIRES_IN = 300.0
#: The most operations one request may ask URLs for.
MAX_OPS = 1000
ACTIONS = ("get", "head", "put", "list", "delete")
_READ = ("get", "head", "list")
_DIGEST = re.compile(r"[0-9a-f]{64}")
#: A snapshot's id: the first 32 hex digits of the digest of its files (``dstack.snapshot``).
_SNAPSHOT = re.compile(r"snapshots/[0-9a-f]{32}\.json")
#: What a record's marker (``blobs/records/NAME``, ``dstack.snapshot_state``) holds: nothing.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: The one job of an upload of local data: its files and manifest are stored before its run is recorded.
UPLOAD_JOB = job_id(UPLOAD_WORKFLOW, 0)

#: ``owner_of(run_name)``: the owner of that run, or ``None`` when there is no such run.
OwnerOf = Callable[[str], Optional[str]]


@runtime_checkable
class Presigning(Protocol):
    """A storage that can presign operations (:class:`~dstack.storage.s3.S3Storage`)."""

    def presign(self, op: StorageOp, expires_in: float, *, max_keys: Optional[int] = None,
                create_only: bool = False) -> str: ...


@dataclass(frozen=True)
class _Grant:
    """One operation allowed, and how to sign it."""

    op: StorageOp
    #: sign ``If-None-Match: *``: the key is written once
    create_only: bool = False


class StorageGrants:
    """The storage runs use (``storage``), handed out to users as presigned URLs, each for ``expires_in`` seconds;
    ``visibility`` is ``DSTACK_VISIBILITY`` (who sees which runs). ``page_size`` sets how many keys a ``list``
    URL answers (``None``: the server's default, 1000 on S3)."""

    def __init__(self, storage: Storage, visibility: str = "all", expires_in: float = EXPIRES_IN,
                 page_size: Optional[int] = None) -> None:
        self.storage = storage
        self.visibility = visibility
        self.expires_in = expires_in
        self.page_size = page_size

    @property
    def presigned(self) -> bool:
        """Whether users reach the storage through presigned URLs: an S3 bucket (a local folder they open
        themselves, on this machine)."""
        return isinstance(self.storage, Presigning)

    def info(self) -> StorageInfo:
        """Where runs store their files (``s3://bucket/prefix`` or ``file:///path``), and how users reach it."""
        return StorageInfo(url=self.storage.url, presigned=self.presigned)

    def presign(self, ops: Sequence[StorageOp], caller: Caller, owner_of: OwnerOf) -> PresignedUrls:
        """One URL per operation of ``ops``, in order, if ``caller`` may do every one of them.

        Raises:
            NotAllowed: an operation the caller may not do (the first, named with its key and why).
            RequestRejected: the storage is a local folder (no URLs), or too many operations at once.
        """
        if not self.presigned:
            raise RequestRejected(f"the storage {self.storage.url} is a folder on the scheduler's machine: it is "
                                  "opened directly, with no presigned URLs")
        if len(ops) > MAX_OPS:
            raise RequestRejected(f"{len(ops)} storage operations asked at once; at most {MAX_OPS} a request")
        owners: dict[str, Optional[str]] = {}

        def owner(run_name: str) -> Optional[str]:
            if run_name not in owners:
                owners[run_name] = owner_of(run_name)
            return owners[run_name]

        grants = [self.check(op, caller, owner) for op in ops]
        signer = self.storage
        assert isinstance(signer, Presigning)
        urls = [signer.presign(grant.op, self.expires_in, create_only=grant.create_only,
                               max_keys=self.page_size if grant.op.action == "list" else None)
                for grant in grants]
        return PresignedUrls(urls=urls, expires_in=self.expires_in)

    def check(self, op: StorageOp, caller: Caller, owner_of: OwnerOf) -> _Grant:
        """How to sign ``op`` if ``caller`` may do it.

        Raises:
            NotAllowed: it may not; the message names the key and why.
        """
        action, key = op.action, op.key
        if action not in ACTIONS:
            raise NotAllowed(f"storage action {action!r} is unknown (the actions: {', '.join(ACTIONS)})")
        try:
            if action == "list":
                check_prefix(key)
            else:
                check_key(key)
        except UnsafePath as e:
            raise NotAllowed(str(e)) from None
        if action == "put" and op.sha256 and not _DIGEST.fullmatch(op.sha256):
            raise NotAllowed(f"put {key!r}: {op.sha256!r} is no SHA-256 digest (64 lowercase hex digits)")
        if action != "list" and op.continuation:
            raise NotAllowed(f"{action} {key!r}: only a list has a continuation token")
        if caller.service:
            return _Grant(op)
        if caller.role is Role.WORKER:
            raise NotAllowed(f"{action} {key!r}: workers use storage credentials of their own, not presigned URLs")
        if action == "put" and not op.sha256:
            raise NotAllowed(f"put {key!r}: an upload must give the SHA-256 of its content")
        area, slash, rest = key.partition("/")
        if area == "blobs" and slash:
            return self._snapshot_content(op, rest)
        if area == "snapshots" and slash:
            if action == "head":
                return _Grant(op)
            if action == "put" and _SNAPSHOT.fullmatch(key):
                return _Grant(op, create_only=True)  # a manifest is never replaced
            raise NotAllowed(f"{action} {key!r}: a user checks whether a snapshot's manifest is stored and stores it "
                             f"once (snapshots/ID.json); only workers read snapshots, and nobody deletes them")
        if area == "runs":
            return self._run_object(op, rest, caller, owner_of)
        raise NotAllowed(f"{action} {key!r}: users reach only snapshots (blobs/, snapshots/) and the files of "
                         f"runs (runs/RUN/)")

    @staticmethod
    def _snapshot_content(op: StorageOp, rest: str) -> _Grant:
        """``blobs/REST``: checked (``head``) by all, stored only as the content its key names; read by workers
        only (they hold credentials): the files of a project are nobody else's to list or read."""
        if op.action == "head":
            return _Grant(op)
        if op.action == "put":
            folder, _, name = rest.partition("/")
            if folder == "records" and name and "/" not in name:
                if op.sha256 != EMPTY_SHA256:
                    raise NotAllowed(f"put {op.key!r}: a record's marker holds nothing")
                return _Grant(op)
            if "/" not in name and _DIGEST.fullmatch(name) and (folder == "packs" or folder == name[:2]):
                if op.sha256 != name:
                    raise NotAllowed(f"put {op.key!r}: the content's SHA-256 is {op.sha256}, not the digest its "
                                     f"key names")
                return _Grant(op)
            raise NotAllowed(f"put {op.key!r}: under blobs/ a key names its content's SHA-256 (blobs/AB/DIGEST, "
                             f"blobs/packs/DIGEST) or a record's marker (blobs/records/NAME)")
        raise NotAllowed(f"{op.action} {op.key!r}: a user checks (head) and stores snapshot contents; only workers "
                         f"read them, and nobody deletes them")

    def _run_object(self, op: StorageOp, rest: str, caller: Caller, owner_of: OwnerOf) -> _Grant:
        """``runs/REST``: a run's files, by whether the run exists and who may see it."""
        run_name, slash, inside = rest.partition("/")
        if not run_name or not slash or (op.action != "list" and not inside):
            raise NotAllowed(f"{op.action} {op.key!r}: a user reaches the files of one run at a time (runs/RUN/...)")
        owner = owner_of(run_name)
        if owner is not None:
            if op.action not in _READ:
                raise NotAllowed(f"{op.action} {op.key!r}: run {run_name} exists; its files are written by its "
                                 "workers and deleted after the run (`dstack delete`)")
            if not caller.may_see(owner, self.visibility):
                raise NotAllowed(f"{op.action} {op.key!r}: run {run_name} belongs to {owner}; only its owner and "
                                 "admins see it")
            return _Grant(op)
        if op.action in ("list", "delete"):  # leftovers of a deleted run, or of an upload that was refused
            return _Grant(op)
        if op.action == "put" and (inside.startswith(f"artifacts/{UPLOAD_JOB}/")
                                   or inside == f"manifests/{UPLOAD_JOB}.json"):
            return _Grant(op)  # an upload of local data, before RecordUpload records its run
        if op.action == "put":
            raise NotAllowed(f"put {op.key!r}: before its run is recorded, only an upload's files "
                             f"(runs/RUN/artifacts/{UPLOAD_JOB}/...) and manifest (runs/RUN/manifests/"
                             f"{UPLOAD_JOB}.json) are stored")
        raise NotAllowed(f"{op.action} {op.key!r}: there is no run {run_name}")
