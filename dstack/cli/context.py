"""What every command shares: the consoles it prints to, and the settings with the clients built from them."""
from __future__ import annotations

from typing import Optional

import click
from rich.console import Console

from dstack.rpc import RpcClient
from dstack.settings import Settings, load_settings
from dstack.storage import Storage, open_storage

#: Width used when the output is not a terminal (pipes, files), so tables are not folded.
PIPE_WIDTH = 200
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:
    out = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)


class Context:
    """Settings, and the clients built from them when first needed."""

    def __init__(self) -> None:
        self.settings: Settings = load_settings()
        self._storage: Optional[Storage] = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings.storage_url)
        return self._storage

    def rpc(self) -> RpcClient:
        return RpcClient(self.settings.broker_url)


pass_context = click.make_pass_decorator(Context, ensure=True)
