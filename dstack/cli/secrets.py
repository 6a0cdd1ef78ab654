"""``dstack secrets``: values jobs get as environment variables, kept by the scheduler: a user's own (for the jobs
of their runs) and the team's (for every job; set by admins)."""
from __future__ import annotations

import sys

import click

from dstack.cli.context import Context, err, pass_context
from dstack.messages import DeleteSecret, GetSecrets, SetSecret


@click.group()
def secrets() -> None:
    """Secrets: values jobs get as environment variables, never shown in logs or status. Yours reach the jobs of
    your runs; the team's (--team, set by admins) reach every job, below a secret of yours of the same name."""


TEAM = click.option("--team", is_flag=True, help="The team's secret, for every job (admins only), not yours.")


@secrets.command("set")
@click.argument("name")
@TEAM
@pass_context
def secrets_set(context: Context, name: str, team: bool) -> None:
    """Set secret NAME to the value read from standard input (asked for, hidden, on a terminal)."""
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {name}", hide_input=True)
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise click.UsageError("the value is empty; give it on standard input, e.g. `printf %s VALUE | "
                               f"dstack secrets set {name}`")
    with context.rpc() as rpc:
        rpc.call(SetSecret(name=name, value=value, team=team))
    whose = "every job" if team else "the jobs of your runs"
    err.print(f"secret {name} set; {whose} that start from now on get it")


@secrets.command("list")
@pass_context
def secrets_list(context: Context) -> None:
    """The names of your secrets and of the team's (an admin's: everyone's), never their values: a name alone
    is yours; the team's and others' say whose."""
    with context.rpc() as rpc:
        for item in rpc.call(GetSecrets()):
            whose = "" if item.owner == rpc.user else f"  ({item.owner or 'team'})"
            click.echo(item.name + whose)


@secrets.command("delete")
@click.argument("name")
@TEAM
@pass_context
def secrets_delete(context: Context, name: str, team: bool) -> None:
    """Delete secret NAME; jobs that start from now on no longer get it."""
    with context.rpc() as rpc:
        rpc.call(DeleteSecret(name=name, team=team))


@secrets.command("rotate-key")
@pass_context
def secrets_rotate_key(context: Context) -> None:
    """Seal every secret again under a new key. Run it on the scheduler's machine, with the scheduler stopped,
    as the user it runs as (same DSTACK_HOME and DSTACK_SECRETS_KEY); then start the scheduler again."""
    from dstack.errors import DstackError
    from dstack.scheduler.secrets import rotate_key
    from dstack.scheduler.store import SqliteStateStore

    try:
        context.client().check_scheduler()
        running = True
    except DstackError:  # no scheduler consumes requests, or no broker answers: none runs
        running = False
    if running:
        raise click.ClickException("a scheduler is running on the broker: stop it first (it holds the old key), "
                                   "rotate, then start it again")
    home = context.settings.home / "scheduler"
    if not (home / "state.db").exists():
        raise click.ClickException(f"no scheduler database at {home / 'state.db'}: run this on the scheduler's "
                                   "machine, with its DSTACK_HOME")
    store = SqliteStateStore(home / "state.db")
    try:
        key, count = rotate_key(store, home, context.settings.secrets_key)
    finally:
        store.close()
    if context.settings.secrets_key:
        err.print(f"{count} secrets sealed under a new key. Set DSTACK_SECRETS_KEY to it before the scheduler "
                  "starts again (the old key opens none of them now):")
        click.echo(key.decode())
    else:
        err.print(f"{count} secrets sealed under a new key, now in {home / 'secrets.key'}")
