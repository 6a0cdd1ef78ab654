"""The broker enforces what each dstack account may touch (issue 16): accounts made through RabbitMQ's real management
API (and with rabbitmqctl) in a private vhost, then real pika connections as each. A user publishes requests in
their own name and reads their replies and their own notification queues, and nothing else: no task queue, no event,
no task, no other user's queue, the default exchange refused. A worker does what workers do (Dramatiq's task and
control queues, events, live logs) and nothing of the users'. `dstack users add` and `remove` through the real
CLI, with a stand-in scheduler that answers their requests.

Needs RabbitMQ on 127.0.0.1:5672 with its management plugin on port 15672 (scripts/setup.sh enables it)."""
from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pika
import pytest

from dstack import broker, names
from dstack.accounts import ManagementApi, Rabbitmqctl, generate_password, user_broker_url
from dstack.errors import DstackError, NotAllowed
from dstack.live import Publisher, Subscription, declare_exchanges
from dstack.messages import AddUser, GetUsers, RemoveUser, Resources, TaskFinished
from dstack.names import delay_queue
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
    subscription = Subscription(fleet.alice_url, "witty-otter-1234")  # dstack.user.ALICE.*, bound by alice
    publisher = Publisher(fleet.worker_url)  # declares the live exchanges, publishes to dstack.logs
    try:
        publisher.publish(names.LOGS_EXCHANGE, "witty-otter-1234", b"a log chunk")
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
    finally:
        assert ctl.remove(name) is True
    assert not ctl.exists(name)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url))


@pytest.fixture
def scheduler_stand_in() -> Iterator[tuple[Vhost, list[Any]]]:
    """A vhost of its own with a request server that adds and removes users (refusing ``refuse``), recording each
    request with its sender."""
    vhost = Vhost()
    requests: list[Any] = []

    def handle(request: Any, sender: str) -> UserView:
        requests.append((request, sender))
        if request.name.startswith("refused-"):
            raise NotAllowed(f"{sender} is no admin")
        assert isinstance(request, (AddUser, RemoveUser))
        return UserView(request.name, getattr(request, "role", "user"), 1.0)

    server = RpcServer(vhost.url, handle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    yield vhost, requests
    server.stop()
    thread.join(10)
    vhost.delete()


def dstack(vhost: Vhost, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "DSTACK_BROKER_URL": vhost.url, "DSTACK_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "dstack.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO_ROOT)


def test_dstack_users_add_and_remove_through_the_management_api(scheduler_stand_in: tuple[Vhost, list[Any]],
                                                                 tmp_path: Path) -> None:
    vhost, requests = scheduler_stand_in
    api = ManagementApi(MANAGEMENT, vhost.name)
    name = f"dave-{secrets.token_hex(3)}"
    try:
        added = dstack(vhost, tmp_path, "users", "add", name)
        assert added.returncode == 0, added.stderr
        assert requests == [(AddUser(name=name, role="user"), "guest")]
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


def test_dstack_users_add_refused_by_the_scheduler_leaves_no_account(scheduler_stand_in: tuple[Vhost, list[Any]],
                                                                      tmp_path: Path) -> None:
    vhost, requests = scheduler_stand_in
    name = f"refused-{secrets.token_hex(3)}"
    result = dstack(vhost, tmp_path, "users", "add", name, "--rabbitmqctl")
    assert result.returncode == 1 and result.stdout == ""
    assert "guest is no admin" in result.stderr and "its RabbitMQ account was deleted again" in result.stderr
    assert requests == [(AddUser(name=name, role="user"), "guest")]
    assert not ManagementApi(MANAGEMENT, vhost.name).exists(name)
