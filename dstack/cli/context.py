"""What every command shares: the consoles it prints to, and the settings with the clients built from them."""
from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Optional

import click
from rich.console import Console

from dstack.errors import RequestRejected
from dstack.messages import GetRuns, GetStorage, PresignStorage, StorageOp
from dstack.rpc import RpcClient
from dstack.settings import Settings, load_settings

if TYPE_CHECKING:  # a storage backend is imported when first opened: most commands only ask the scheduler
    from dstack.storage import Storage

#: Width used when the output is not a terminal (pipes, files), so tables are not folded.
PIPE_WIDTH = 200
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)


class Context:
    """Settings, and the clients built from them when first needed: one connection to the scheduler for the whole
    command (its requests and the storage's presigned URLs), closed when the command ends."""

    def __init__(self) -> None:
        self.settings: Settings = load_settings()
        self._storage: Optional[Storage] = None
        self._client: Optional[RpcClient] = None

    @property
    def storage(self) -> Storage:
        """Where runs store their files: the ``DSTACK_STORAGE_URL`` given, opened with this machine's credentials;
        without one, the scheduler's storage: S3 through the presigned URLs the scheduler hands out for what this
        user may touch, or the scheduler's folder on this machine."""
        if self._storage is None:
            from dstack.storage import open_storage

            url = self.settings.storage_url
            if not self.settings.storage_given:
                try:
                    info = self.client().call(GetStorage())
                except RequestRejected:  # a scheduler that hands out no storage: the default folder
                    info = None
                if info is not None and info.presigned:
                    from dstack.storage.presigned import PresignedStorage

                    def presign(ops: list[StorageOp]) -> list[str]:
                        return list(self.client().call(PresignStorage(ops=ops)).urls)
                    self._storage = PresignedStorage(info.url, presign)
                    return self._storage
                url = info.url if info is not None else url
            self._storage = open_storage(url)
        return self._storage

    def client(self) -> RpcClient:
        """The command's client of the scheduler, connected when first asked for."""
        if self._client is None:
            self._client = RpcClient(self.settings.broker_url)
            current = click.get_current_context(silent=True)
            if current is not None:
                current.call_on_close(self._client.close)
        return self._client

    def new_client(self) -> RpcClient:
        """A new connection to the scheduler in place of the command's (which a call interrupted midway, by
        Ctrl-C, may have left unusable)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        return self.client()

    def rpc(self) -> contextlib.AbstractContextManager[RpcClient]:
        """``with context.rpc() as rpc``: the command's client (:meth:`client`), left open for what follows."""
        return contextlib.nullcontext(self.client())


pass_context = click.make_pass_decorator(Context, ensure=True)


def on_terminal() -> bool:
    """Whether a person can answer: standard input is a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed
        return False


def confirm(question: str) -> bool:
    """Ask ``question [y/N]`` on the terminal; no (or Ctrl-C, or end of input) unless the answer is yes."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        err.print()
        return False


#: Seconds shell completion waits for the scheduler before completing nothing.
COMPLETION_TIMEOUT = 2.0


def complete_run_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a RUN argument: the names of recent runs that start with ``incomplete``; nothing,
    quietly, when the broker or the scheduler cannot be asked."""
    try:
        with RpcClient(load_settings().broker_url, timeout=COMPLETION_TIMEOUT) as rpc:
            runs = rpc.call(GetRuns(limit=200))
    except Exception:  # a completion never fails aloud
        return []
    return [run.run_name for run in runs if run.run_name.startswith(incomplete)]
