"""Broker accounts of dstack users: what RabbitMQ lets each role touch, and making and removing the accounts.

Every person, and every worker, connects to RabbitMQ with an account of their own, and the broker enforces
what the account may do (the scheduler checks the rest, :mod:`dstack.scheduler.access`). The permissions are
three regular expressions per account and virtual host, which RabbitMQ matches against the names of queues
and exchanges (``configure``: declare and delete; ``write``: publish, and bind a queue; ``read``: consume,
and bind to an exchange):

- a **user** (and an **admin**: what only admins may do, the scheduler checks) may publish requests to the
  scheduler (the ``dstack.requests`` exchange, with its own name as ``user_id``), read their replies (direct
  reply-to, which needs no permission), and declare, bind and consume its own live-notification queues
  (``dstack.user.NAME.*``) bound to ``dstack.logs`` and ``dstack.updates``; nothing else: no task queue, no
  event, no other user's queue, not the default exchange (through which it could reach any queue);
- a **worker** may declare and consume the task queues, declare and consume its own control queue
  (``dstack.worker.NAME``: its ``DSTACK_WORKER_ID`` is its account name), enqueue events through Dramatiq,
  publish live logs, and send requests like a user; nothing of the users'.

Live notifications are published with the routing key ``OWNER.RUN`` (:func:`dstack.names.live_routing_key`).
With ``DSTACK_VISIBILITY=own`` a **user**'s account also gets topic permissions on ``dstack.logs`` and
``dstack.updates`` (:func:`topic_permissions_for`): it may bind its queues with keys that begin with ``NAME.``
only, so it follows its own runs and no one else's (RabbitMQ checks a binding key, wildcards included, against
the ``read`` pattern at queue.bind). Admins and workers get none, and neither does anyone with ``all``: an
account without topic permissions on an exchange may use every key.

The accounts are made through RabbitMQ's HTTP management API (:class:`ManagementApi`) or, on the broker's
machine, with ``rabbitmqctl`` (:class:`Rabbitmqctl`); both with the same permissions.
"""
from __future__ import annotations

import abc
import base64
import json
import re
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from dstack import names
from dstack.errors import DstackError
from dstack.messages import ROLES
from dstack.settings import VISIBILITIES

#: Letters, digits, ``-`` and ``_``, 1 to 63 of them, the first a letter or digit (the scheduler's rule for names,
#: :func:`dstack.names.is_valid_name`): a name that is the same in a URL, a queue name and a permission's pattern.
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

#: The port of RabbitMQ's management API (HTTP; 15671 with TLS) when ``DSTACK_BROKER_ADMIN_URL`` is not set.
MANAGEMENT_PORT, MANAGEMENT_TLS_PORT = 15672, 15671

#: Seconds a request to the management API or a ``rabbitmqctl`` command may take.
TIMEOUT = 30.0


@dataclass(frozen=True)
class Permissions:
    """The permissions of a RabbitMQ account in one virtual host: three regular expressions that the names of
    queues and exchanges must match (RabbitMQ searches them: each is anchored with ``^...$``)."""

    #: declare (not passively) and delete queues and exchanges
    configure: str
    #: publish to an exchange; bind a queue (to an exchange it may read)
    write: str
    #: consume from a queue; bind to an exchange
    read: str


@dataclass(frozen=True)
class TopicPermissions:
    """The topic permissions of a RabbitMQ account on one topic exchange of a virtual host: two regular
    expressions that routing keys must match (searched, like :class:`Permissions`'). RabbitMQ checks ``write``
    against the routing key of a publish, and ``read`` against the binding key of a queue.bind and queue.unbind
    (``#`` and ``*`` as they are). On an exchange for which an account has none, every key is allowed."""

    exchange: str
    write: str
    read: str


def check_user_name(name: str) -> str:
    """``name`` if it may name a dstack user (letters, digits, ``-``, ``_``; 1 to 63 of them, the first a letter
    or digit).

    Raises:
        DstackError: it may not; the message says what may.
    """
    if not _USER_NAME.fullmatch(name):
        raise DstackError(f"{name!r} cannot name a user: use 1 to 63 letters, digits, '-' and '_', the first a "
                          "letter or digit (such as alice or gpu-worker-1)")
    return name


def _any_of(*patterns: str) -> str:
    """A pattern that matches a whole name matched by one of ``patterns``."""
    return f"^({'|'.join(patterns)})$"


def _dramatiq_queue(queue: str) -> str:
    """A pattern for ``queue`` and the delay (``.DQ``) and dead-letter (``.XQ``) queues Dramatiq declares with it."""
    return "|".join(re.escape(q) for q in (queue, names.delay_queue(queue), names.dead_letter_queue(queue)))


def permissions_for(name: str, role: str) -> Permissions:
    """What the broker account ``name`` may touch as a dstack ``role`` (one of :data:`dstack.messages.ROLES`).

    Raises:
        DstackError: ``name`` may not name a user, or ``role`` is none of the roles.
    """
    check_user_name(name)
    if role not in ROLES:
        raise DstackError(f"{role!r} is no role: one of {', '.join(ROLES)}")
    own = re.escape(names.user_queue(name, "")) + ".*"  # dstack\.user\.NAME\..*: its live-notification queues
    requests = re.escape(names.REQUESTS_EXCHANGE)
    logs, updates = re.escape(names.LOGS_EXCHANGE), re.escape(names.UPDATES_EXCHANGE)
    if role != "worker":  # users and admins alike: an admin's further rights are the scheduler's to check
        return Permissions(configure=_any_of(own), write=_any_of(requests, own), read=_any_of(own, logs, updates))
    # the task queues, dstack.tasks.* (names.task_queue; their DQ and XQ match too), as workers/intake.py declares
    # and consumes them
    tasks = re.escape(names.TASK_QUEUE_PREFIX) + ".*"
    control = names.worker_queue(name)  # its Dramatiq worker declares it (with DQ and XQ) and consumes it and DQ
    return Permissions(
        # Dramatiq declares (not passively) the queue it enqueues to: the events queue, with its DQ and XQ
        configure=_any_of(tasks, _dramatiq_queue(control), _dramatiq_queue(names.EVENTS_QUEUE), logs, updates),
        # Dramatiq publishes through the default exchange (events, and a control message it retries later)
        write=_any_of(re.escape(names.DEFAULT_EXCHANGE), requests, logs),
        # Not the events queue: RabbitMQ wants read on a queue declared with a dead-letter exchange (Dramatiq's)
        # only when the declare creates it, and the scheduler declares it when it starts, before any event.
        read=_any_of(tasks, re.escape(control), re.escape(names.delay_queue(control))),
    )


def topic_permissions_for(name: str, role: str, visibility: str) -> tuple[TopicPermissions, ...]:
    """The topic permissions of the broker account ``name`` as a dstack ``role`` under the scheduler's
    ``visibility`` (``DSTACK_VISIBILITY``): for a ``user`` with ``own``, on ``dstack.logs`` and ``dstack.updates``,
    publish nothing (``^$``; its permissions refuse publishing there anyway) and bind only keys that begin with
    ``NAME.``, the routing keys of its own runs (:func:`dstack.names.live_routing_key`); none otherwise (admins see
    every run, workers publish every run's logs).

    Raises:
        DstackError: ``name`` may not name a user, ``role`` is none of the roles, or ``visibility`` none of
            :data:`VISIBILITIES`.
    """
    permissions_for(name, role)  # checks the name and the role
    if visibility not in VISIBILITIES:
        raise DstackError(f"{visibility!r} is no visibility: one of {', '.join(VISIBILITIES)} (DSTACK_VISIBILITY)")
    if role != "user" or visibility != "own":
        return ()
    own_runs = "^" + re.escape(names.live_routing_key(name, ""))  # ^NAME\.: NAME has no dot (check_user_name)
    return tuple(TopicPermissions(exchange, write="^$", read=own_runs)
                 for exchange in (names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE))


def tags_for(role: str) -> str:
    """The RabbitMQ user tags of a dstack ``role``: none. No account of a dstack user may use the management API;
    ``dstack users`` manages accounts with the credentials of ``DSTACK_BROKER_ADMIN_URL`` (or on the broker's
    machine with ``rabbitmqctl``), which a person who is a dstack admin may or may not hold."""
    return ""


def generate_password() -> str:
    """A new random password (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


# ----------------------------------------------------------------------------- URLs


def broker_vhost(broker_url: str) -> str:
    """The virtual host of the AMQP URL ``broker_url`` (``/`` when it names none), as pika reads it."""
    import pika

    return str(pika.URLParameters(broker_url).virtual_host)


def management_url(admin_url: str, broker_url: str) -> str:
    """The management API's URL with credentials: ``admin_url`` (``DSTACK_BROKER_ADMIN_URL``) when set, else
    ``http://USER:PASSWORD@HOST:15672`` with the host and credentials of the AMQP URL ``broker_url``
    (``https://...:15671`` for ``amqps``).

    Raises:
        DstackError: ``admin_url`` is no http(s) URL.
    """
    if admin_url:
        given = urllib.parse.urlsplit(admin_url)
        if given.scheme not in ("http", "https") or not given.hostname:
            raise DstackError(f"DSTACK_BROKER_ADMIN_URL must be the management API's http(s) URL, such as "
                              f"http://admin:PASSWORD@rabbit:{MANAGEMENT_PORT}, not {_without_password(admin_url)}")
        return admin_url
    parts = urllib.parse.urlsplit(broker_url)
    tls = parts.scheme == "amqps"
    user = parts.username if parts.username is not None else "guest"
    password = parts.password if parts.password is not None else "guest"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    credentials = f"{urllib.parse.quote(urllib.parse.unquote(user), safe='')}:" \
                  f"{urllib.parse.quote(urllib.parse.unquote(password), safe='')}"
    return f"{'https' if tls else 'http'}://{credentials}@{host}:{MANAGEMENT_TLS_PORT if tls else MANAGEMENT_PORT}"


def user_broker_url(broker_url: str, name: str, password: str) -> str:
    """The AMQP URL the user ``name`` connects with: ``broker_url``'s scheme, host, port and virtual host, with
    ``name`` and ``password`` (URL-quoted) as its credentials."""
    parts = urllib.parse.urlsplit(broker_url)
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    vhost = urllib.parse.quote(broker_vhost(broker_url), safe="")
    return (f"{parts.scheme or 'amqp'}://{urllib.parse.quote(name, safe='')}:{urllib.parse.quote(password, safe='')}"
            f"@{host}{port}/{vhost}")


def _without_password(url: str, *, user: bool = True) -> str:
    """``url`` without its password (and without its user name unless ``user``), query and fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = (f"{parts.username}@" if user and parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ----------------------------------------------------------------------------- backends


class Accounts(Protocol):
    """Where broker accounts are made: the management API or ``rabbitmqctl``. Each account gets the permissions
    of its role (:func:`permissions_for`) in one virtual host."""

    #: the virtual host the accounts get their permissions in
    vhost: str

    def describe(self) -> str:
        """How the accounts are reached, for messages (no password)."""
        ...

    def exists(self, name: str) -> bool:
        """Whether RabbitMQ has an account ``name`` (in any virtual host)."""
        ...

    def add(self, name: str, password: str, role: str) -> None:
        """Make the account ``name`` with ``password`` and the permissions of ``role``; one that exists already
        is refused (it would lose its password). Nothing is left half-made when it fails."""
        ...

    def set_permissions(self, name: str, role: str, visibility: str) -> None:
        """Give the existing account ``name`` the permissions of ``role`` (:func:`permissions_for`) and the topic
        permissions of ``role`` under ``visibility`` (:func:`topic_permissions_for`), in place of what it had:
        when there are none to give, the account's topic permissions in the virtual host are cleared."""
        ...

    def remove(self, name: str) -> bool:
        """Delete the account ``name``; whether there was one."""
        ...


class _Backend(abc.ABC):
    """What both ways of making accounts share: the checks, the order of the steps and the undoing; each way
    (:class:`ManagementApi`, :class:`Rabbitmqctl`) gives the steps."""

    vhost: str
    #: what ``dstack users remove NAME`` needs to reach accounts this way
    _remove_option = ""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        ...

    def add(self, name: str, password: str, role: str) -> None:
        permissions = permissions_for(name, role)
        if self.exists(name):
            raise DstackError(f"RabbitMQ has an account {name} already; remove it first (`dstack users remove "
                              f"{name}{self._remove_option}`) or pick another name")
        self._create(name, password, tags_for(role))
        try:
            self._put_permissions(name, permissions)
        except DstackError:
            self._delete_quietly(name)  # nothing half-made
            raise

    def set_permissions(self, name: str, role: str, visibility: str) -> None:
        topic = topic_permissions_for(name, role, visibility)
        self._put_permissions(name, permissions_for(name, role))
        if not topic:  # all of them; none is no error
            self._clear_topic_permissions(name)
        for each in topic:  # each replaces that exchange's only: never a moment without any
            self._put_topic_permissions(name, each)

    # the steps
    @abc.abstractmethod
    def _create(self, name: str, password: str, tags: str) -> None:
        """Make the account, with ``tags``; nothing is left of it when this fails."""

    @abc.abstractmethod
    def _put_permissions(self, name: str, permissions: Permissions) -> None:
        ...

    @abc.abstractmethod
    def _put_topic_permissions(self, name: str, permissions: TopicPermissions) -> None:
        ...

    @abc.abstractmethod
    def _clear_topic_permissions(self, name: str) -> None:
        ...

    @abc.abstractmethod
    def _delete_quietly(self, name: str) -> None:
        ...


class ManagementApi(_Backend):
    """Broker accounts through RabbitMQ's HTTP management API (its ``rabbitmq_management`` plugin).

    Args:
        url: the API's URL with the credentials of a RabbitMQ administrator (a user tagged ``administrator``),
            such as ``http://admin:PASSWORD@rabbit:15672`` (a path is kept: an API behind a reverse proxy).
        vhost: the virtual host the accounts get their permissions in.
        timeout: seconds each request may take.
    """

    def __init__(self, url: str, vhost: str, *, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        self.vhost = vhost
        self._timeout = timeout
        self._admin = urllib.parse.unquote(parts.username or "")
        credentials = f"{self._admin}:{urllib.parse.unquote(parts.password or '')}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._base = _without_password(url, user=False).rstrip("/")  # the credentials go in a header

    def describe(self) -> str:
        return f"RabbitMQ's management API at {self._base} (as {self._admin or 'nobody'})"

    def exists(self, name: str) -> bool:
        return self._request("GET", f"users/{_quote(name)}", missing_ok=True) is not None

    def _create(self, name: str, password: str, tags: str) -> None:
        self._request("PUT", f"users/{_quote(name)}", {"password": password, "tags": tags})

    def _put_permissions(self, name: str, permissions: Permissions) -> None:
        self._request("PUT", f"permissions/{_quote(self.vhost)}/{_quote(name)}",
                      {"configure": permissions.configure, "write": permissions.write, "read": permissions.read})

    def _put_topic_permissions(self, name: str, permissions: TopicPermissions) -> None:
        self._request("PUT", self._topic_path(name),
                      {"exchange": permissions.exchange, "write": permissions.write, "read": permissions.read})

    def _clear_topic_permissions(self, name: str) -> None:
        self._request("DELETE", self._topic_path(name), missing_ok=True)  # none is 404

    def _topic_path(self, name: str) -> str:
        return f"topic-permissions/{_quote(self.vhost)}/{_quote(name)}"

    def _delete_quietly(self, name: str) -> None:
        self._request("DELETE", f"users/{_quote(name)}", missing_ok=True)

    def remove(self, name: str) -> bool:
        return self._request("DELETE", f"users/{_quote(name)}", missing_ok=True) is not None

    def _request(self, method: str, path: str, body: Optional[dict[str, Any]] = None, *,
                 missing_ok: bool = False) -> Optional[Any]:
        """The JSON the API answers ``method`` on ``/api/PATH`` with (``{}`` for no content); ``None`` for 404
        when ``missing_ok``.

        Raises:
            DstackError: the API cannot be reached or refused; the message says what to do.
        """
        url = f"{self._base}/api/{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": self._authorization, "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and missing_ok:
                return None
            raise self._refusal(method, url, e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DstackError(
                f"cannot reach RabbitMQ's management API at {url} ({reason}): enable it on the broker's machine "
                "with `rabbitmq-plugins enable rabbitmq_management`, set DSTACK_BROKER_ADMIN_URL to where it "
                f"listens (default: port {MANAGEMENT_PORT} of the broker's host), or run `dstack users` on the "
                "broker's machine with --rabbitmqctl") from None
        return json.loads(text) if text.strip() else {}

    def _refusal(self, method: str, url: str, error: urllib.error.HTTPError) -> DstackError:
        try:
            detail = json.loads(error.read() or b"{}")
            reason = str(detail.get("reason") or detail.get("error") or "") if isinstance(detail, dict) else ""
        except (ValueError, OSError):
            reason = ""
        said = f"{error.code} {error.reason}" + (f": {reason}" if reason else "")
        if error.code == 401:
            return DstackError(
                f"RabbitMQ's management API at {url} refused {self._admin or 'the request'} ({said}): it needs a "
                "RabbitMQ administrator (a user tagged administrator; guest only from the broker's own machine); set "
                "DSTACK_BROKER_ADMIN_URL=http://ADMIN:PASSWORD@HOST:15672, or run `dstack users` on the broker's "
                "machine with --rabbitmqctl")
        if error.code == 404:
            return DstackError(f"RabbitMQ's management API has no {url} ({said}): is DSTACK_BROKER_ADMIN_URL the "
                               "API's address, and does the virtual host exist?")
        return DstackError(f"RabbitMQ's management API refused {method} {url} ({said})")


def _quote(part: str) -> str:
    """A path segment of the management API (the default virtual host ``/`` is ``%2F``)."""
    return urllib.parse.quote(part, safe="")


class Rabbitmqctl(_Backend):
    """Broker accounts with ``rabbitmqctl``, on the broker's machine, as a user that may run it (root, or the
    ``rabbitmq`` user: it reads the node's Erlang cookie). The password goes to ``rabbitmqctl add_user`` on its
    standard input, never on its command line (which ``ps`` shows).

    Args:
        vhost: the virtual host the accounts get their permissions in.
        command: how ``rabbitmqctl`` is run (``["rabbitmqctl", "-n", "rabbit@broker"]``, ``["sudo",
            "rabbitmqctl"]``).
        timeout: seconds each command may take.
    """

    def __init__(self, vhost: str, command: Optional[list[str]] = None, *, timeout: float = TIMEOUT) -> None:
        self.vhost = vhost
        self._command = list(command or ["rabbitmqctl"])
        self._timeout = timeout

    def describe(self) -> str:
        return f"`{' '.join(self._command)}` on this machine"

    def exists(self, name: str) -> bool:
        listing = json.loads(self._run("list_users", "--formatter", "json") or "[]")
        return any(isinstance(user, dict) and user.get("user") == name for user in listing)

    _remove_option = " --rabbitmqctl"

    def _create(self, name: str, password: str, tags: str) -> None:
        self._run("add_user", name, input=password + "\n")  # no password argument: it reads it from stdin
        try:
            self._run("set_user_tags", name, *filter(None, tags.split(",")))
        except DstackError:
            self._delete_quietly(name)
            raise

    def _put_permissions(self, name: str, permissions: Permissions) -> None:
        self._run("set_permissions", "-p", self.vhost, name, permissions.configure, permissions.write,
                  permissions.read)

    def _put_topic_permissions(self, name: str, permissions: TopicPermissions) -> None:
        self._run("set_topic_permissions", "-p", self.vhost, name, permissions.exchange, permissions.write,
                  permissions.read)

    def _clear_topic_permissions(self, name: str) -> None:
        self._run("clear_topic_permissions", "-p", self.vhost, name)

    def _delete_quietly(self, name: str) -> None:
        self._run("delete_user", name, check=False)

    def remove(self, name: str) -> bool:
        if not self.exists(name):
            return False
        self._run("delete_user", name)
        return True

    def _run(self, *args: str, input: Optional[str] = None, check: bool = True) -> str:
        """What ``rabbitmqctl -q ARGS`` printed.

        Raises:
            DstackError: it is not installed here, or failed (with what it said), when ``check``.
        """
        argv = [*self._command, "-q", *args]
        shown = f"`{' '.join([*self._command, args[0]])} ...`"  # never its other arguments
        try:
            done = subprocess.run(argv, input=input if input is not None else "", capture_output=True, text=True,
                                  timeout=self._timeout)
        except FileNotFoundError:
            raise DstackError(f"{self._command[0]} is not installed here: run `dstack users ... --rabbitmqctl` on "
                              "the broker's machine, or leave --rabbitmqctl out to use the management API") from None
        except subprocess.TimeoutExpired:
            raise DstackError(f"{shown} did not end within {self._timeout:.0f} s: is the "
                              "RabbitMQ node running on this machine?") from None
        if check and done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise DstackError(f"{shown} failed (exit {done.returncode}): "
                              f"{' '.join(said[-3:]) or 'no message'}; run it as root or as the rabbitmq user, "
                              "on the broker's machine")
        return done.stdout
