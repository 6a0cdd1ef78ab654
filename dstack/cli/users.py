"""``dstack users``: the people and workers of a fleet, each with a RabbitMQ account of their own.

``add`` makes the broker account (:mod:`dstack.accounts`: through RabbitMQ's management API, or ``rabbitmqctl``
on the broker's machine) and then registers it with the scheduler, which refuses a caller who is no admin: the
account is then deleted again, so nothing is left half-made. With the scheduler's ``DSTACK_VISIBILITY=own``, a
user's account then gets the topic permissions that let it follow only its own runs. ``remove`` does the two the
other way round. ``sync`` gives every user's account the permissions of its role again, for the scheduler's
visibility as it is now.
"""
from __future__ import annotations

import ipaddress
import json
import sys
import urllib.parse
from typing import Callable, Optional

import click
from rich.markup import escape
from rich.table import Table

from dstack.accounts import (
    Accounts,
    ManagementApi,
    Rabbitmqctl,
    broker_vhost,
    check_user_name,
    generate_password,
    management_url,
    topic_permissions_for,
    user_broker_url,
)
from dstack.broker import account
from dstack.cli.context import Context, confirm, err, on_terminal, out, pass_context
from dstack.cli.render import ago
from dstack.errors import DstackError
from dstack.messages import AddUser, GetUsers, RemoveUser, plain
from dstack.views import UsersAnswer, UserView

_RABBITMQCTL_HELP = ("Make the change with rabbitmqctl on this machine (the broker's; as root or the rabbitmq user) "
                     "instead of through RabbitMQ's management API.")


@click.group()
def users() -> None:
    """Users: the people (and workers) of a fleet, each with a RabbitMQ account of their own that lets them touch
    only what their role may. Adding and removing them is for admins; a single machine needs none."""


def _accounts(context: Context, rabbitmqctl: bool) -> Accounts:
    """Where broker accounts are made: ``rabbitmqctl`` here, or the management API of ``DSTACK_BROKER_ADMIN_URL``
    (default: the broker's host with this CLI's credentials); the virtual host is the CLI's."""
    settings = context.settings
    vhost = broker_vhost(settings.broker_url)
    if rabbitmqctl:
        return Rabbitmqctl(vhost)
    return ManagementApi(management_url(settings.broker_admin_url, settings.broker_url), vhost)


def _refuse_own_account(context: Context, name: str, doing: str) -> None:
    if name == account(context.settings.broker_url):
        raise click.UsageError(f"this CLI connects to the broker as {name} (DSTACK_BROKER_URL): it cannot {doing} "
                               "its own account")


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin: may also act on everyone's runs, and add and remove users.")
@click.option("--worker", is_flag=True, help="A worker's account: takes tasks, sends events; run the worker with "
              "DSTACK_WORKER_ID=NAME.")
@click.option("--rabbitmqctl", is_flag=True, help=_RABBITMQCTL_HELP)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input instead of making "
              "a random one.")
@pass_context
def users_add(context: Context, name: str, admin: bool, worker: bool, rabbitmqctl: bool, password_stdin: bool
              ) -> None:
    """Add user NAME, with a RabbitMQ account of their own.

    The account gets the permissions of the role (a user, unless --admin or --worker), and the scheduler is told of
    it; with the scheduler's DSTACK_VISIBILITY=own, a user's account may then follow only their own runs. Prints the
    broker URL NAME connects with, password included: shown this once, hand it over privately."""
    if admin and worker:
        raise click.UsageError("--admin or --worker, not both")
    role = "admin" if admin else "worker" if worker else "user"
    check_user_name(name)
    _refuse_own_account(context, name, "add")
    password = _read_password(name) if password_stdin else generate_password()
    accounts = _accounts(context, rabbitmqctl)
    with context.rpc() as rpc:
        rpc.check_scheduler()  # before anything is made: a request that cannot be sent leaves nothing behind
        accounts.add(name, password, role)
        try:
            added: UserView = rpc.call(AddUser(name=name, role=role))
        except BaseException as e:  # refused (no admin), no answer, Ctrl-C: the account goes again
            _undo(accounts, name, e)
            raise
        try:  # the topic permissions of DSTACK_VISIBILITY=own, the scheduler's setting
            users_answer: UsersAnswer = rpc.call(GetUsers())
            visibility = users_answer.visibility
            if topic_permissions_for(name, role, visibility):
                accounts.set_permissions(name, role, visibility)
        except BaseException as e:  # the user and the account go again
            _undo(accounts, name, e, forget=lambda: rpc.call(RemoveUser(name=name)))
            raise
    settings = context.settings
    own = " (DSTACK_VISIBILITY=own: they follow the live logs and status of their own runs only)" \
        if role == "user" and visibility == "own" else ""
    err.print(f"Made the RabbitMQ account [bold]{name}[/] in virtual host {escape(accounts.vhost)} through "
              f"{escape(accounts.describe())}, and added {name} to the scheduler's users as {added.role}{own}.")
    url = user_broker_url(settings.broker_url, name, password)
    how = (f"Run the worker with DSTACK_WORKER_ID={name} and DSTACK_BROKER_URL set to this URL"
           if role == "worker" else f"{name} sets DSTACK_BROKER_URL to this URL")
    secret = "" if password_stdin else " It holds the password, shown this once: hand it over privately."
    err.print(f"{how}.{secret}")
    host = urllib.parse.urlsplit(settings.broker_url).hostname or "localhost"
    if _is_loopback(host):
        err.print(f"[yellow]note:[/] {escape(host)} is this machine; from another one, use the broker's address.")
    click.echo(url)


def _read_password(name: str) -> str:
    """The password on standard input (its first line); asked for, hidden, on a terminal."""
    if on_terminal():
        password: str = click.prompt(f"Password of {name}", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("the password is empty; give it on standard input, e.g. `printf %s PASSWORD | "
                               f"dstack users add {name} --password-stdin`")
    return password


def _undo(accounts: Accounts, name: str, error: BaseException, forget: Optional[Callable[[], object]] = None
          ) -> None:
    """Delete the broker account ``name`` that was made for a user the scheduler did not add (``error``); or, with
    ``forget`` (which asks the scheduler to forget them), for a user whose account's permissions could not be
    set."""
    failed = f"the scheduler did not add {name}" if forget is None else \
        f"the permissions of {name}'s RabbitMQ account could not be set"
    said = f"{failed} ({escape(str(error) or type(error).__name__)})"
    if forget is not None:
        try:
            forget()
        except BaseException as e:  # said; the account is deleted all the same
            err.print(f"[red]error:[/] {said}, and the scheduler could not forget {name} "
                      f"({escape(str(e) or type(e).__name__)}): run `dstack users remove {name}`.")
        else:
            failed += f"; the scheduler forgot {name} again"
    try:
        accounts.remove(name)
    except DstackError as e:
        err.print(f"[red]error:[/] {said}, and its RabbitMQ account could not be deleted again: {escape(str(e))}. "
                  f"Delete it by hand (`rabbitmqctl delete_user {name}` on the broker's machine).")
        return
    err.print(f"{failed[0].upper()}{failed[1:]}: its RabbitMQ account was deleted again.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the users and the caller as JSON.")
@pass_context
def users_list(context: Context, as_json: bool) -> None:
    """List the users, with their roles.

    Shows when each was added, and marks you. Piped, each line is NAME, ROLE and ADDED (seconds since the epoch)
    separated by tabs."""
    with context.rpc() as rpc:
        answer: UsersAnswer = rpc.call(GetUsers())
    if as_json:
        click.echo(json.dumps(plain(answer), indent=2))
    elif answer.users and not out.is_terminal:
        for user in answer.users:
            click.echo(f"{user.name}\t{user.role}\t{user.added_at}")
    else:
        print_users(answer)


def print_users(answer: UsersAnswer) -> None:
    """The users as a table, the caller marked."""
    caller = answer.caller
    if not answer.users:
        out.print(f"No users yet: you are {escape(caller.name)} ({caller.role}). Add one with "
                  "[bold]dstack users add NAME[/] (a single machine needs none).")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("USER", "ROLE", "ADDED"):
        table.add_column(column, overflow="fold")
    for user in answer.users:
        you = " [dim](you)[/]" if user.name == caller.name else ""
        table.add_row(f"[bold]{escape(user.name)}[/]{you}", user.role, ago(user.added_at))
    out.print(table)
    if caller.name not in {user.name for user in answer.users}:
        out.print(f"You are {escape(caller.name)} ({caller.role}), the scheduler's own account.")


@users.command("sync")
@click.option("--rabbitmqctl", is_flag=True, help=_RABBITMQCTL_HELP)
@pass_context
def users_sync(context: Context, rabbitmqctl: bool) -> None:
    """Re-apply every user's RabbitMQ permissions, for their role.

    For the scheduler's DSTACK_VISIBILITY as it is now: run it after changing it. With own, users' accounts may
    follow the live logs and status of their own runs only; with all, of every run. The accounts of the scheduler
    and of this CLI are left as they are."""
    accounts = _accounts(context, rabbitmqctl)
    with context.rpc() as rpc:
        answer: UsersAnswer = rpc.call(GetUsers())
    visibility, mine = answer.visibility, account(context.settings.broker_url)
    failed: list[str] = []
    for user in answer.users:
        if user.name in (answer.scheduler, mine):  # the administrator's, and this CLI's
            continue
        try:
            if not accounts.exists(user.name):
                err.print(f"[yellow]{escape(user.name)}[/] ({user.role}): RabbitMQ has no such account; skipped "
                          f"(`dstack users remove {user.name}` forgets them).")
                continue
            accounts.set_permissions(user.name, user.role, visibility)
        except DstackError as e:
            err.print(f"[red]{escape(user.name)}[/] ({user.role}): {escape(str(e))}")
            failed.append(user.name)
            continue
        follows = "" if user.role == "worker" else "; follows the live logs and status of " + (
            "their own runs only" if topic_permissions_for(user.name, user.role, visibility) else "every run")
        err.print(f"[bold]{escape(user.name)}[/] ({user.role}): permissions set{follows}")
    if failed:
        raise DstackError(f"the permissions of {', '.join(failed)} could not be set (above); the others' are "
                          f"set for DSTACK_VISIBILITY={visibility}")
    err.print(f"Every user's RabbitMQ account has the permissions of their role, for DSTACK_VISIBILITY={visibility}, "
              f"through {escape(accounts.describe())}.")


@users.command("remove")
@click.argument("name")
@click.option("--rabbitmqctl", is_flag=True, help=_RABBITMQCTL_HELP)
@click.option("-y", "--yes", is_flag=True, help="Do not ask (on a terminal, remove asks first).")
@pass_context
def users_remove(context: Context, name: str, rabbitmqctl: bool, yes: bool) -> None:
    """Remove user NAME and their RabbitMQ account.

    The scheduler forgets them, then their account is deleted (its connections closed). It stops nothing: their
    runs go on, and their runs, tags and secrets stay."""
    check_user_name(name)
    _refuse_own_account(context, name, "remove")
    accounts = _accounts(context, rabbitmqctl)
    with context.rpc() as rpc:
        had_account = accounts.exists(name)  # the accounts are reachable before anything changes
        if not yes and on_terminal() and not confirm(f"Remove user {name}? Their runs go on."):
            err.print("Nothing removed.")
            sys.exit(1)
        removed: UserView = rpc.call(RemoveUser(name=name))
    err.print(f"The scheduler forgot {name} ({removed.role}). Nothing of theirs stops or goes: their runs go on, and "
              "their runs, tags and secrets stay.")
    if not had_account:
        err.print(f"RabbitMQ has no account {name} (deleted already).")
        return
    try:
        accounts.remove(name)
    except DstackError as e:
        raise DstackError(f"{name} is no user any more, but their RabbitMQ account could not be deleted: {e}. Delete "
                          f"it by hand (`rabbitmqctl delete_user {name}` on the broker's machine).") from None
    err.print(f"Deleted the RabbitMQ account {name} through {escape(accounts.describe())}; its connections are "
              "closed.")
