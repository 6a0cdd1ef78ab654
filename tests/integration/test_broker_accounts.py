"""The broker enforces what each dstack account may touch (issue 16): accounts made through RabbitMQ's real management
API (and with rabbitmqctl) in a private vhost, then real pika connections as each. A user publishes requests in
their own name and reads their replies and their own notification queues, and nothing else: no task queue, no event,
no task, no other user's queue, the default exchange refused. With DSTACK_VISIBILITY=own, RabbitMQ's topic
permissions let a user bind their queues to the live exchanges with their own runs' routing keys (OWNER.RUN) only.
A worker does what workers do (Dramatiq's task and control queues, events, live logs) and nothing of the users'.
`dstack users add`, `sync` and `remove` through the real CLI, with a stand-in scheduler that answers their
requests.

Needs RabbitMQ on 127.0.0.1:5672 with its management plugin on port 15672 (scripts/setup.sh enables it)."""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pika
import pytest

from dstack import broker, names
from dstack.accounts import ManagementApi, Rabbitmqctl, generate_password, topic_permissions_for, user_broker_url
from dstack.errors import DstackError, NotAllowed
from dstack.live import Publisher, Subscription, declare_exchanges
from dstack.messages import AddUser, GetUsers, RemoveUser, Resources, TaskFinished
from dstack.names import delay_queue, live_routing_key
from dstack.rpc import RpcClient, RpcServer
from dstack.views import UsersAnswer, UserView
from tests.services import REPO_ROOT, Vhost, queue_counts

pytestmark = pytest.mark.integration

MANAGEMENT = "http://guest:guest@127.0.0.1:15672"


def management_api(vhost: Vhost) -> ManagementApi:
    """The real management API as guest, RabbitMQ's administrator on its own machine."""
    try:
        urllib.request.urlopen("http://127.0.0.1:15672/", timeout=5).close()
    except OSError as e:
        pytest.fail(f"RabbitMQ's management API does not answer on port 15672 ({e}); enable it with "
                    "`rabbitmq-plugins enable rabbitmq_management` (scripts/setup.sh does)")
    return ManagementApi(MANAGEMENT, vhost.name)


def declare_what_the_scheduler_declares(url: str) -> None:
    """What a scheduler declares when it starts (as the administrator): the request queue and exchange, the live
    exchanges, and the events queue (Dramatiq's, with its DQ and XQ)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(names.RPC_QUEUE, durable=True)
    channel.exchange_declare(names.REQUESTS_EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_bind(names.RPC_QUEUE, names.REQUESTS_EXCHANGE, routing_key=names.RPC_QUEUE)
    declare_exchanges(channel)
    connection.close()
    dramatiq_broker = broker.make_broker(url)
    broker.declare_queue(dramatiq_broker, names.EVENTS_QUEUE)
    broker.declare_queue(dramatiq_broker, names.DEFAULT_TASK_QUEUE)
    dramatiq_broker.close()


@dataclass
class Fleet:
    vhost: Vhost
    admin_url: str
    alice: str
    alice_url: str
    bob: str
    bob_url: str
    worker: str
    worker_url: str


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """A vhost as a scheduler leaves it, with the accounts alice and bob (users) and a worker; unique names per
    run, deleted afterwards."""
    vhost = Vhost()
    api = management_api(vhost)
    suffix = secrets.token_hex(3)
    made: list[str] = []
    try:
        declare_what_the_scheduler_declares(vhost.url)
        urls = {}
        for name, role in ((f"alice-{suffix}", "user"), (f"bob-{suffix}", "user"), (f"worker-{suffix}", "worker")):
            password = generate_password()
            api.add(name, password, role)
            made.append(name)
            urls[name] = user_broker_url(vhost.url, name, password)
        alice, bob, worker = made
        yield Fleet(vhost, vhost.url, alice, urls[alice], bob, urls[bob], worker, urls[worker])
    finally:
        for name in made:
            api.remove(name)
        vhost.delete()


def on_channel(url: str, action: Callable[[pika.adapters.blocking_connection.BlockingChannel], Any]) -> Any:
    """``action(channel)`` on a new connection to ``url``, which is closed afterwards."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return action(connection.channel())
    finally:
        broker.close_quietly(connection)


def refused(url: str, action: Callable[[Any], Any], code: int = 403) -> str:
    """The broker's reply text when it closes the channel on ``action`` with ``code`` (ACCESS_REFUSED by default).
    A publish is refused after the fact: the next call on the channel (``basic_qos`` here) says so."""
    def attempt(channel: Any) -> str:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            action(channel)
            channel.basic_qos(prefetch_count=1)
        assert caught.value.reply_code == code, caught.value
        return str(caught.value.reply_text)
    return str(on_channel(url, attempt))


def props(user_id: str, *, reply: bool = False) -> pika.BasicProperties:
    """A request's properties; with ``reply``, answered through direct reply-to (consumed first)."""
    return pika.BasicProperties(user_id=user_id, reply_to=names.REPLY_TO_QUEUE if reply else None,
                                correlation_id="c1", expiration="5000")


def api_get(path: str) -> Any:
    """What RabbitMQ's management API answers to a GET of ``/api/PATH`` as guest; ``None`` for 404."""
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/{path}",
                                     headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def topic_permissions(vhost: Vhost, name: str) -> list[dict[str, str]]:
    """The topic permissions of the account ``name`` in ``vhost``, as RabbitMQ lists them (by exchange)."""
    listed = api_get(f"topic-permissions/{urllib.parse.quote(vhost.name, safe='')}/{name}") or []
    return sorted(({k: p[k] for k in ("exchange", "write", "read")} for p in listed), key=lambda p: p["exchange"])


def bind(user: str, exchange: str, key: str) -> Callable[[Any], None]:
    """On a channel of ``user``'s: declare one of their queues (exclusive) and bind it to ``exchange`` with ``key``,
    as a follower does."""
    def action(channel: Any) -> None:
        queue = names.user_queue(user, f"follow-{secrets.token_hex(4)}")
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        channel.queue_bind(queue, exchange, routing_key=key)
    return action


# ----------------------------------------------------------------------------- a user


def test_a_user_sends_requests_in_their_name_and_reads_the_replies(fleet: Fleet) -> None:
    def ask(channel: Any) -> int:
        channel.basic_consume(names.REPLY_TO_QUEUE, lambda *args: None, auto_ack=True)
        queue = channel.queue_declare(names.RPC_QUEUE, passive=True)  # is a scheduler there?
        channel.basic_publish(names.REQUESTS_EXCHANGE, names.RPC_QUEUE, b"request", props(fleet.alice, reply=True))
        channel.basic_qos(prefetch_count=1)  # the publish was taken
        return int(queue.method.message_count)

    before = on_channel(fleet.alice_url, ask)
    assert queue_counts(fleet.admin_url, names.RPC_QUEUE)[0] == before + 1
    on_channel(fleet.admin_url, lambda channel: channel.queue_purge(names.RPC_QUEUE))


def test_a_user_follows_through_their_own_queue(fleet: Fleet) -> None:
    queue = names.user_queue(fleet.alice, "follow-1")
    got: list[tuple[str, bytes]] = []

    def follow(channel: Any) -> None:
        channel.exchange_declare(names.LOGS_EXCHANGE, passive=True)
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        for exchange in (names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE):
            channel.queue_bind(queue, exchange, routing_key="witty-otter-1234")
        on_channel(fleet.admin_url, lambda admin: [
            admin.basic_publish(exchange, "witty-otter-1234", exchange.encode())
            for exchange in (names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE)])
        for method, _, body in channel.consume(queue, auto_ack=True, inactivity_timeout=5):
            if method is None:
                break
            got.append((method.exchange, body))
            if len(got) == 2:
                break

    on_channel(fleet.alice_url, follow)
    assert sorted(got) == [(names.LOGS_EXCHANGE, b"dstack.logs"), (names.UPDATES_EXCHANGE, b"dstack.updates")]


def test_a_user_touches_no_task_event_or_queue_of_the_fleet(fleet: Fleet) -> None:
    url = fleet.alice_url
    fake_event = broker.MsgpackEncoder().encode({"queue_name": names.EVENTS_QUEUE, "actor_name": names.EVENT_ACTOR,
                                                 "args": [{"type": TaskFinished.__name__}], "kwargs": {},
                                                 "options": {}, "message_id": "m1", "message_timestamp": 1})
    assert "access to queue 'dstack.tasks.cpu'" in refused(
        url, lambda ch: ch.basic_consume(names.DEFAULT_TASK_QUEUE, lambda *a: None))
    assert "exchange 'amq.default'" in refused(url, lambda ch: ch.basic_publish("", names.EVENTS_QUEUE, fake_event))
    refused(url, lambda ch: ch.basic_publish("", names.DEFAULT_TASK_QUEUE, b"a fake task"))
    refused(url, lambda ch: ch.basic_publish("", names.RPC_QUEUE, b"a request", props(fleet.alice)))
    refused(url, lambda ch: ch.basic_publish(names.LOGS_EXCHANGE, "witty-otter-1234", b"a fake log line"))
    refused(url, lambda ch: ch.basic_consume(names.EVENTS_QUEUE, lambda *a: None))
    refused(url, lambda ch: ch.basic_consume(names.RPC_QUEUE, lambda *a: None))  # nobody else's requests
    refused(url, lambda ch: ch.queue_declare("", exclusive=True))  # a server-named queue: not its name
    refused(url, lambda ch: ch.exchange_declare(names.LOGS_EXCHANGE, exchange_type="topic", durable=True))
    refused(url, lambda ch: ch.queue_purge(names.DEFAULT_TASK_QUEUE))
    refused(url, lambda ch: ch.queue_delete(names.EVENTS_QUEUE))
    # no state changed: nothing reached the events and task queues
    assert queue_counts(fleet.admin_url, names.EVENTS_QUEUE)[0] == 0
    assert queue_counts(fleet.admin_url, names.DEFAULT_TASK_QUEUE)[0] == 0


def test_a_user_cannot_touch_another_users_queue_nor_speak_in_their_name(fleet: Fleet) -> None:
    bobs = names.user_queue(fleet.bob, "q")
    on_channel(fleet.bob_url, lambda channel: channel.queue_declare(bobs))  # not exclusive: only permissions protect it
    url = fleet.alice_url
    assert "access to queue '" + bobs in refused(url, lambda ch: ch.basic_consume(bobs, lambda *a: None))
    refused(url, lambda ch: ch.queue_declare(bobs))
    refused(url, lambda ch: ch.queue_declare(names.user_queue(fleet.bob, "mine-now"), exclusive=True))
    refused(url, lambda ch: ch.queue_bind(bobs, names.LOGS_EXCHANGE, routing_key="#"))
    refused(url, lambda ch: ch.queue_delete(bobs))
    text = refused(url, lambda ch: ch.basic_publish(names.REQUESTS_EXCHANGE, names.RPC_QUEUE, b"request",
                                                    props(fleet.bob)), code=406)
    assert f"user_id property set to '{fleet.bob}' but authenticated user was '{fleet.alice}'" in text
    on_channel(fleet.bob_url, lambda channel: channel.queue_delete(bobs))


def test_with_visibility_own_a_user_follows_their_own_runs_only(fleet: Fleet) -> None:
    api = management_api(fleet.vhost)
    api.set_permissions(fleet.alice, "user", "own")
    try:
        assert topic_permissions(fleet.vhost, fleet.alice) == [
            {"exchange": x, "write": "^$", "read": "^" + re.escape(f"{fleet.alice}.")}
            for x in (names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE)]
        assert topic_permissions(fleet.vhost, fleet.bob) == []  # bob's account is as it was
        # her own run: she binds (as `dstack logs -f` does) and gets what a worker and the scheduler publish
        subscription = Subscription(fleet.alice_url, fleet.alice, "some-run")
        publisher = Publisher(fleet.worker_url)
        try:
            publisher.publish(names.LOGS_EXCHANGE, live_routing_key(fleet.bob, "some-run"), b"bob's log")
            publisher.publish(names.LOGS_EXCHANGE, live_routing_key(fleet.alice, "some-run"), b"her log")
            on_channel(fleet.admin_url, lambda admin: admin.basic_publish(
                names.UPDATES_EXCHANGE, live_routing_key(fleet.alice, "some-run"), b"her update"))
            got = [subscription.get(timeout=10), subscription.get(timeout=10)]
            assert sorted(got) == [(names.LOGS_EXCHANGE, b"her log"), (names.UPDATES_EXCHANGE, b"her update")]
            assert subscription.get(timeout=1) is None  # bob's never came
        finally:
            publisher.close()
            subscription.close()
        on_channel(fleet.alice_url, bind(fleet.alice, names.LOGS_EXCHANGE, f"{fleet.alice}.#"))  # all of hers
        # anyone else's, or everyone's: ACCESS_REFUSED at queue.bind, on both exchanges
        for key in (live_routing_key(fleet.bob, "some-run"), "#", "*.some-run", f"{fleet.alice}x.some-run",
                    fleet.alice):
            for exchange in (names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE):
                text = refused(fleet.alice_url, bind(fleet.alice, exchange, key))
                assert f"access to topic '{key}' in exchange '{exchange}'" in text, text
        # nobody else's account changed: the administrator (no topic permissions) binds any key
        def admin_binds(admin: Any) -> None:
            queue = admin.queue_declare("", exclusive=True).method.queue
            for key in (live_routing_key(fleet.bob, "some-run"), "#"):
                admin.queue_bind(queue, names.LOGS_EXCHANGE, routing_key=key)
        on_channel(fleet.admin_url, admin_binds)
    finally:
        api.set_permissions(fleet.alice, "user", "all")
    assert topic_permissions(fleet.vhost, fleet.alice) == []


def test_with_visibility_all_a_user_follows_every_run(fleet: Fleet) -> None:
    management_api(fleet.vhost).set_permissions(fleet.alice, "user", "all")  # no topic permissions: any key
    assert topic_permissions(fleet.vhost, fleet.alice) == []
    for key in (live_routing_key(fleet.bob, "some-run"), "#", "*.some-run"):
        on_channel(fleet.alice_url, bind(fleet.alice, names.LOGS_EXCHANGE, key))
    subscription = Subscription(fleet.alice_url, fleet.bob, "some-run")
    try:
        on_channel(fleet.admin_url, lambda admin: admin.basic_publish(
            names.UPDATES_EXCHANGE, live_routing_key(fleet.bob, "some-run"), b"bob's update"))
        assert subscription.get(timeout=10) == (names.UPDATES_EXCHANGE, b"bob's update")
    finally:
        subscription.close()


def test_a_users_credentials_do_not_open_the_management_api(fleet: Fleet) -> None:
    password = pika.URLParameters(fleet.alice_url).credentials.password
    api = ManagementApi(f"http://{fleet.alice}:{password}@127.0.0.1:15672", fleet.vhost.name)
    with pytest.raises(DstackError, match=f"refused {fleet.alice} .*DSTACK_BROKER_ADMIN_URL") as caught:
        api.exists(fleet.bob)
    assert password not in str(caught.value)


def test_requests_through_the_rpc_client_name_their_sender(fleet: Fleet) -> None:
    senders: list[str] = []

    def handle(request: Any, sender: str) -> UsersAnswer:
        senders.append(sender)
        return UsersAnswer(users=[], caller=UserView(sender, "user"))

    server = RpcServer(fleet.admin_url, handle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(10)
        for url in (fleet.alice_url, fleet.worker_url):
            with RpcClient(url, timeout=10) as rpc:
                rpc.call(GetUsers())
    finally:
        server.stop()
        thread.join(10)
    assert senders == [fleet.alice, fleet.worker]


# ----------------------------------------------------------------------------- a worker


def test_a_worker_takes_tasks_sends_events_and_publishes_logs(fleet: Fleet) -> None:
    url, task_queue = fleet.worker_url, names.task_queue()
    scheduler = broker.make_broker(fleet.admin_url)
    broker.enqueue(scheduler, task_queue, names.TASK_ACTOR, {"task": 1})
    scheduler.close()
    worker = broker.make_broker(url)
    try:
        # workers/intake.py: declare each task queue (Dramatiq's, with DQ and XQ) and consume it
        broker.declare_queue(worker, task_queue)
        broker.declare_queue(worker, names.task_queue(Resources(cpu=2)))  # a queue nobody made yet

        def take(channel: Any) -> Any:
            channel.basic_qos(prefetch_count=1, global_qos=True)
            for method, _, body in channel.consume(task_queue, inactivity_timeout=5):
                assert method is not None, "no task came"
                channel.basic_ack(method.delivery_tag)
                return broker.task_payload(body)

        assert on_channel(url, take) == {"task": 1}
        # its control queue, as its Dramatiq worker declares and consumes it (and the delay queue)
        control = names.worker_queue(fleet.worker)
        broker.declare_queue(worker, control)
        consumers = [worker.consume(control), worker.consume(delay_queue(control))]
        for consumer in consumers:
            consumer.close()
        # events through Dramatiq (workers/events.py)
        before = queue_counts(fleet.admin_url, names.EVENTS_QUEUE)[0]
        broker.enqueue(worker, names.EVENTS_QUEUE, names.EVENT_ACTOR, {"type": "TaskStarted"})
        assert queue_counts(fleet.admin_url, names.EVENTS_QUEUE)[0] == before + 1
    finally:
        worker.close()
        on_channel(fleet.admin_url, lambda channel: channel.queue_purge(names.EVENTS_QUEUE))


def test_a_worker_publishes_live_logs_that_a_user_follows(fleet: Fleet) -> None:
    subscription = Subscription(fleet.alice_url, fleet.alice, "witty-otter-1234")  # dstack.user.ALICE.*
    publisher = Publisher(fleet.worker_url)  # declares the live exchanges, publishes to dstack.logs
    try:
        publisher.publish(names.LOGS_EXCHANGE, live_routing_key(fleet.alice, "witty-otter-1234"), b"a log chunk")
        assert subscription.get(timeout=10) == (names.LOGS_EXCHANGE, b"a log chunk")
    finally:
        publisher.close()
        subscription.close()


def test_a_worker_touches_nothing_of_the_users_nor_of_other_workers(fleet: Fleet) -> None:
    alices = names.user_queue(fleet.alice, "q")
    on_channel(fleet.alice_url, lambda channel: channel.queue_declare(alices))
    url = fleet.worker_url
    refused(url, lambda ch: ch.basic_consume(alices, lambda *a: None))
    refused(url, lambda ch: ch.queue_declare(names.user_queue(fleet.worker, "q")))  # no queue of a user's kind
    refused(url, lambda ch: ch.queue_bind(alices, names.LOGS_EXCHANGE, routing_key="#"))
    refused(url, lambda ch: ch.basic_consume(names.EVENTS_QUEUE, lambda *a: None))  # sends events, reads none
    refused(url, lambda ch: ch.basic_consume(names.RPC_QUEUE, lambda *a: None))
    refused(url, lambda ch: ch.queue_declare(names.worker_queue("someone-else"), durable=True))
    refused(url, lambda ch: ch.basic_publish(names.UPDATES_EXCHANGE, "witty-otter-1234", b"a fake update"))
    on_channel(fleet.alice_url, lambda channel: channel.queue_delete(alices))


# ----------------------------------------------------------------------------- rabbitmqctl and the CLI


def test_rabbitmqctl_makes_and_deletes_an_account_with_the_same_permissions(fleet: Fleet) -> None:
    ctl = Rabbitmqctl(fleet.vhost.name)
    name, password = f"carol-{secrets.token_hex(3)}", generate_password()
    ctl.add(name, password, "user")
    try:
        assert ctl.exists(name) and ManagementApi(MANAGEMENT, fleet.vhost.name).exists(name)
        url = user_broker_url(fleet.vhost.url, name, password)
        on_channel(url, lambda channel: channel.queue_declare(names.user_queue(name, "q"), exclusive=True))
        refused(url, lambda ch: ch.basic_consume(names.DEFAULT_TASK_QUEUE, lambda *a: None))
        # the topic permissions of DSTACK_VISIBILITY=own, as the management API gives them, and cleared for all
        ctl.set_permissions(name, "user", "own")
        assert topic_permissions(fleet.vhost, name) == [
            {"exchange": p.exchange, "write": p.write, "read": p.read}
            for p in topic_permissions_for(name, "user", "own")]
        on_channel(url, bind(name, names.UPDATES_EXCHANGE, live_routing_key(name, "some-run")))
        refused(url, bind(name, names.UPDATES_EXCHANGE, live_routing_key(fleet.bob, "some-run")))
        ctl.set_permissions(name, "user", "all")
        assert topic_permissions(fleet.vhost, name) == []
        on_channel(url, bind(name, names.UPDATES_EXCHANGE, live_routing_key(fleet.bob, "some-run")))
    finally:
        assert ctl.remove(name) is True
    assert not ctl.exists(name)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url))


@dataclass
class StandIn:
    """A scheduler as far as ``dstack users`` goes: its users, its DSTACK_VISIBILITY, every request with its
    sender."""

    vhost: Vhost
    requests: list[Any]
    users: dict[str, UserView]
    visibility: str = "all"


@pytest.fixture
def scheduler_stand_in() -> Iterator[StandIn]:
    """A vhost of its own with a request server that adds, removes and lists users (refusing to add or remove
    names that begin with ``refused-``), recording each request with its sender."""
    vhost = Vhost()
    stand_in = StandIn(vhost, [], {"guest": UserView("guest", "admin")})  # its own account, as GetUsers lists it

    def handle(request: Any, sender: str) -> Any:
        stand_in.requests.append((request, sender))
        if isinstance(request, GetUsers):
            return UsersAnswer(users=list(stand_in.users.values()), caller=stand_in.users[sender],
                               visibility=stand_in.visibility, scheduler="guest")
        if request.name.startswith("refused-"):
            raise NotAllowed(f"{sender} is no admin")
        if isinstance(request, RemoveUser):
            return stand_in.users.pop(request.name)
        assert isinstance(request, AddUser)
        stand_in.users[request.name] = UserView(request.name, request.role, 1.0)
        return stand_in.users[request.name]

    declare_what_the_scheduler_declares(vhost.url)  # the live exchanges, to bind to
    server = RpcServer(vhost.url, handle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    yield stand_in
    server.stop()
    thread.join(10)
    vhost.delete()


def dstack(vhost: Vhost, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "DSTACK_BROKER_URL": vhost.url, "DSTACK_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "dstack.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO_ROOT)


def test_dstack_users_add_and_remove_through_the_management_api(scheduler_stand_in: StandIn,
                                                                 tmp_path: Path) -> None:
    vhost, requests = scheduler_stand_in.vhost, scheduler_stand_in.requests
    api = ManagementApi(MANAGEMENT, vhost.name)
    name = f"dave-{secrets.token_hex(3)}"
    try:
        added = dstack(vhost, tmp_path, "users", "add", name)
        assert added.returncode == 0, added.stderr
        assert requests == [(AddUser(name=name, role="user"), "guest"), (GetUsers(), "guest")]
        assert topic_permissions(vhost, name) == []  # DSTACK_VISIBILITY=all
        url = added.stdout.strip()
        assert url.startswith(f"amqp://{name}:") and url.endswith(f"@127.0.0.1:5672/{vhost.name}")
        on_channel(url, lambda channel: (channel.basic_publish(names.REQUESTS_EXCHANGE, names.RPC_QUEUE, b"x",
                                                               props(name)), channel.basic_qos(prefetch_count=1)))
        refused(url, lambda ch: ch.basic_consume(names.DEFAULT_TASK_QUEUE, lambda *a: None))
        removed = dstack(vhost, tmp_path, "users", "remove", name, "--yes")
        assert removed.returncode == 0, removed.stderr
        assert requests[-1] == (RemoveUser(name=name), "guest")
        assert not api.exists(name)
    finally:
        api.remove(name)


def test_dstack_users_add_refused_by_the_scheduler_leaves_no_account(scheduler_stand_in: StandIn,
                                                                      tmp_path: Path) -> None:
    vhost, requests = scheduler_stand_in.vhost, scheduler_stand_in.requests
    name = f"refused-{secrets.token_hex(3)}"
    result = dstack(vhost, tmp_path, "users", "add", name, "--rabbitmqctl")
    assert result.returncode == 1 and result.stdout == ""
    assert "guest is no admin" in result.stderr and "its RabbitMQ account was deleted again" in result.stderr
    assert requests == [(AddUser(name=name, role="user"), "guest")]
    assert not ManagementApi(MANAGEMENT, vhost.name).exists(name)


def test_dstack_users_add_under_visibility_own_and_sync_after_a_change(scheduler_stand_in: StandIn,
                                                                        tmp_path: Path) -> None:
    """DSTACK_VISIBILITY=own when a user is added: their account follows their own runs only; the scheduler's
    changed to all and `dstack users sync`: every run; back to own and sync again (with rabbitmqctl): their own."""
    vhost = scheduler_stand_in.vhost
    scheduler_stand_in.visibility = "own"
    api = ManagementApi(MANAGEMENT, vhost.name)
    erin, frank = f"erin-{secrets.token_hex(3)}", f"frank-{secrets.token_hex(3)}"
    try:
        added = dstack(vhost, tmp_path, "users", "add", erin)
        assert added.returncode == 0, added.stderr
        assert "their own runs only" in added.stderr
        url = added.stdout.strip()
        assert dstack(vhost, tmp_path, "users", "add", frank, "--admin").returncode == 0
        assert topic_permissions(vhost, erin) == [{"exchange": p.exchange, "write": p.write, "read": p.read}
                                                  for p in topic_permissions_for(erin, "user", "own")]
        assert topic_permissions(vhost, frank) == []  # an admin follows every run
        others = live_routing_key(frank, "some-run")
        on_channel(url, bind(erin, names.LOGS_EXCHANGE, live_routing_key(erin, "some-run")))
        refused(url, bind(erin, names.LOGS_EXCHANGE, others))

        scheduler_stand_in.visibility = "all"
        synced = dstack(vhost, tmp_path, "users", "sync")
        assert synced.returncode == 0, synced.stderr
        assert f"{erin} (user): permissions set; follows the live logs and status of every run" in synced.stderr
        assert topic_permissions(vhost, erin) == []
        on_channel(url, bind(erin, names.LOGS_EXCHANGE, others))

        scheduler_stand_in.visibility = "own"
        synced = dstack(vhost, tmp_path, "users", "sync", "--rabbitmqctl")
        assert synced.returncode == 0, synced.stderr
        assert len(topic_permissions(vhost, erin)) == 2
        refused(url, bind(erin, names.LOGS_EXCHANGE, others))
        # the scheduler's own account (guest here, also this CLI's) was never touched
        guest = api_get(f"permissions/{urllib.parse.quote(vhost.name, safe='')}/guest")
        assert (guest["configure"], guest["write"], guest["read"]) == (".*", ".*", ".*")
        assert topic_permissions(vhost, "guest") == []
    finally:
        api.remove(erin)
        api.remove(frank)
