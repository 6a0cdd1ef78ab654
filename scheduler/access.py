"""Who asks, and what they may do: the scheduler's half of authorization (the broker's half is the
permissions of each account, :mod:`dstack.accounts`).

Every request carries the RabbitMQ user that sent it, checked by the broker (the ``user_id`` property,
which RabbitMQ refuses when it is not the connection's own user). The scheduler's own account, the one
every part uses on a single machine, is the fleet's administrator and may also act as a worker; any
other account must have been added as a dstack user (``dstack users add``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional

from dstack.errors import NotAllowed
from dstack.messages import AddUser, ClaimTask, RemoveUser, WorkerLeaving, WorkerReport


class Role(str, enum.Enum):
    """What a dstack user is: a person (``user``, ``admin``) or a machine that runs tasks (``worker``)."""

    USER = "user"
    ADMIN = "admin"
    WORKER = "worker"


#: Requests only workers send.
WORKER_REQUESTS = (ClaimTask, WorkerReport, WorkerLeaving)
#: Requests only admins send.
ADMIN_REQUESTS = (AddUser, RemoveUser)


@dataclass(frozen=True)
class Caller:
    """The sender of a request, as the broker vouched for it, and its role."""

    name: str
    role: Role
    #: the scheduler's own account: the administrator, which may also act as a worker
    service: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_send(self, request: Any) -> bool:
        """Whether this caller may send ``request`` at all (what it is about is checked by its handler)."""
        if isinstance(request, WORKER_REQUESTS):
            return self.role is Role.WORKER or self.service
        if self.role is Role.WORKER:
            return False
        return self.is_admin or not isinstance(request, ADMIN_REQUESTS)

    def may_see(self, owner: str, visibility: str) -> bool:
        """Whether this caller may see a run (or tag) of ``owner``: its status, logs and artifacts."""
        return visibility != "own" or self.is_admin or owner == self.name

    def may_change(self, owner: str) -> bool:
        """Whether this caller may stop, restart, tag, untag or delete a run of ``owner``."""
        return self.is_admin or owner == self.name

    def change_refusal(self, owner: str, what: str) -> Optional[str]:
        """Why this caller may not change ``what``, something of ``owner``; ``None`` when it may."""
        if self.may_change(owner):
            return None
        return f"{what} belongs to {owner}, not to {self.name}: only its owner or an admin may change it"

    def check_change(self, owner: str, what: str) -> None:
        """Raise :class:`NotAllowed` unless this caller may change ``what``, something of ``owner``."""
        refusal = self.change_refusal(owner, what)
        if refusal is not None:
            raise NotAllowed(refusal)


def service_caller(name: str) -> Caller:
    """The scheduler's own account."""
    return Caller(name, Role.ADMIN, service=True)
