"""Broker accounts of dstack users (`dstack/accounts.py`, `dstack users`), without services: the permissions of each
role as RabbitMQ matches them, user names, URLs, the management API client against a small local HTTP server,
the rabbitmqctl backend against a recording stand-in, and the CLI's order of doing things with a fake scheduler.
The broker's own enforcement is tested in tests/integration/test_broker_accounts.py."""
from __future__ import annotations

import base64
import http.server
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import dramatiq.common
import pika
import pytest
from click.testing import CliRunner
from rich.console import Console

from dstack import accounts, names
from dstack.accounts import (
    VISIBILITIES,
    ManagementApi,
    Permissions,
    Rabbitmqctl,
    TopicPermissions,
    broker_vhost,
    check_user_name,
    generate_password,
    management_url,
    permissions_for,
    topic_permissions_for,
    user_broker_url,
)
from dstack.cli import context, users
from dstack.cli.main import cli
from dstack.errors import DstackError, NotAllowed
from dstack.messages import ROLES, AddUser, GetUsers, RemoveUser
from dstack.names import delay_queue, live_routing_key
from dstack.settings import load_settings
from dstack.views import UsersAnswer, UserView
from tests.s3server import free_port


def may(pattern: str, name: str) -> bool:
    """Whether RabbitMQ lets a permission ``pattern`` cover the resource ``name`` (it searches the pattern)."""
    return re.search(pattern, name) is not None


# ----------------------------------------------------------------------------- permissions


def test_a_users_permissions_are_its_requests_and_its_own_queues_written_out() -> None:
    assert permissions_for("alice", "user") == Permissions(
        configure=r"^(dstack\.user\.alice\..*)$",
        write=r"^(dstack\.requests|dstack\.user\.alice\..*)$",
        read=r"^(dstack\.user\.alice\..*|dstack\.logs|dstack\.updates)$")


def test_an_admins_broker_permissions_are_a_users() -> None:
    assert permissions_for("root-1", "admin") == permissions_for("root-1", "user")


def test_what_a_user_may_touch_and_what_not() -> None:
    p = permissions_for("alice", "user")
    for own in ("dstack.user.alice.q", "dstack.user.alice.witty-otter-1234.x1"):
        assert may(p.configure, own) and may(p.write, own) and may(p.read, own)
    for foreign in ("dstack.user.bob.q", "dstack.user.alice2.q", "dstack.user.alic.q", "dstack.user.alice",
                    "dstack.tasks.cpu", "dstack.tasks.gpu1xa100", "dstack.tasks.cpu.XQ", "dstack.events",
                    "dstack.worker.w1", "dstack.rpc", "amq.gen-abc", "x.dstack.user.alice.q"):
        assert not (may(p.configure, foreign) or may(p.write, foreign) or may(p.read, foreign)), foreign
    # exchanges: publish requests only (not through the default exchange); bind to the live exchanges, declare none
    assert may(p.write, "dstack.requests")
    assert not any(may(p.write, x) for x in ("amq.default", "dstack.logs", "dstack.updates", "amq.topic"))
    assert may(p.read, "dstack.logs") and may(p.read, "dstack.updates")
    assert not any(may(p.configure, x) for x in ("dstack.requests", "dstack.logs", "dstack.updates"))


def test_what_a_worker_may_touch_and_what_not() -> None:
    p = permissions_for("gpu-1", "worker")
    tasks = ["dstack.tasks.cpu", "dstack.tasks.gpu2xa100-vram40960mib-cpu0.5", "dstack.tasks.cpu.DQ",
             "dstack.tasks.cpu.XQ"]
    control = ["dstack.worker.gpu-1", "dstack.worker.gpu-1.DQ", "dstack.worker.gpu-1.XQ"]
    events = ["dstack.events", "dstack.events.DQ", "dstack.events.XQ"]
    assert all(may(p.configure, q) for q in tasks + control + events + ["dstack.logs", "dstack.updates"])
    assert all(may(p.read, q) for q in tasks + control[:2])
    assert not any(may(p.read, q) for q in events + ["dstack.worker.gpu-1.XQ"])  # it sends events, reads none
    assert [x for x in ("amq.default", "dstack.requests", "dstack.logs") if may(p.write, x)] == [
        "amq.default", "dstack.requests", "dstack.logs"]
    assert not may(p.write, "dstack.updates")
    for foreign in ("dstack.user.alice.q", "dstack.user.gpu-1.q", "dstack.worker.gpu-2", "dstack.worker.gpu-10",
                    "dstack.worker.gpu-1x", "dstack.rpc", "dstack.requests.x", "amq.gen-abc"):
        assert not (may(p.configure, foreign) or may(p.read, foreign)), foreign


def test_a_name_is_escaped_in_its_patterns() -> None:
    p = permissions_for("a-b_c", "worker")
    assert re.escape("dstack.worker.a-b_c") in p.configure
    assert may(p.read, "dstack.worker.a-b_c") and not may(p.read, "dstack.worker.aXb_c")


def test_dramatiqs_delay_queue_is_named_as_dramatiq_names_it() -> None:
    assert delay_queue("dstack.events") == dramatiq.common.dq_name("dstack.events")


def test_every_role_has_permissions_and_an_unknown_one_is_refused() -> None:
    assert all(isinstance(permissions_for("x", role), Permissions) for role in ROLES)
    with pytest.raises(DstackError, match="'owner' is no role: one of user, admin, worker"):
        permissions_for("x", "owner")
    assert all(accounts.tags_for(role) == "" for role in ROLES)  # no account may use the management API


def test_with_visibility_own_a_user_may_bind_its_own_runs_keys_only() -> None:
    assert topic_permissions_for("alice", "user", "own") == (
        TopicPermissions("dstack.logs", write="^$", read=r"^alice\."),
        TopicPermissions("dstack.updates", write="^$", read=r"^alice\."))
    read = topic_permissions_for("a-b_c", "user", "own")[0].read
    assert read == "^" + re.escape("a-b_c.")
    own = [live_routing_key("a-b_c", "witty-otter-1234"), "a-b_c.#", "a-b_c.*", "a-b_c.witty-otter-1234.x"]
    assert all(may(read, key) for key in own)
    # another owner's runs, every owner's (wildcards as they are), a name that only begins like it, no owner
    for key in ("bob.witty-otter-1234", "#", "*.witty-otter-1234", "*", "#.a-b_c.x", "a-b_c2.x", "a-b_.x",
                "aXb_c.x", "a-b_c", "x.a-b_c.y", "witty-otter-1234", ""):
        assert not may(read, key), key
    assert all(not may(p.write, key) for p in topic_permissions_for("alice", "user", "own")
               for key in ("alice.r", "#", "x"))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("visibility", VISIBILITIES)
def test_only_users_under_visibility_own_get_topic_permissions(role: str, visibility: str) -> None:
    topic = topic_permissions_for("alice", role, visibility)
    assert bool(topic) == (role == "user" and visibility == "own")
    assert [p.exchange for p in topic] == ([names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE] if topic else [])


def test_topic_permissions_refuse_an_unknown_visibility_role_or_name() -> None:
    with pytest.raises(DstackError, match="'mine' is no visibility: one of all, own"):
        topic_permissions_for("alice", "user", "mine")
    with pytest.raises(DstackError, match="is no role"):
        topic_permissions_for("alice", "owner", "own")
    with pytest.raises(DstackError, match="cannot name a user"):
        topic_permissions_for("a.b", "user", "own")


@pytest.mark.parametrize("name", ["alice", "Bob", "gpu-worker-1", "a_b", "x", "7", "a" * 63])
def test_user_names(name: str) -> None:
    assert check_user_name(name) == name
    assert names.is_valid_name(name)  # the scheduler's rule: it adds whom the CLI made an account for


@pytest.mark.parametrize("name", ["", "a" * 64, "-a", "_a", "a.b", "a b", "a*", "al/ice", "ålice", "alice\n", "a:b",
                                  "a@b", ".*"])
def test_not_user_names(name: str) -> None:
    with pytest.raises(DstackError, match="cannot name a user: use 1 to 63 letters, digits, '-' and '_', the first"):
        check_user_name(name)
    with pytest.raises(DstackError):
        permissions_for(name, "user")


def test_passwords_are_random_and_safe_in_a_url() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", p) for p in passwords)


# ----------------------------------------------------------------------------- URLs


def test_the_management_url_defaults_to_the_brokers_host_and_credentials() -> None:
    assert management_url("", "amqp://guest:guest@127.0.0.1:5672/%2F") == "http://guest:guest@127.0.0.1:15672"
    assert management_url("", "amqp://rabbit") == "http://guest:guest@rabbit:15672"
    assert management_url("", "amqps://ad%40min:p%2Fw@rabbit.example.com:5671/team") == \
        "https://ad%40min:p%2Fw@rabbit.example.com:15671"
    assert management_url("http://admin:pw@rabbit:15672", "amqp://alice:x@rabbit/") == "http://admin:pw@rabbit:15672"


def test_a_management_url_that_is_no_http_url_is_refused_without_its_password() -> None:
    with pytest.raises(DstackError, match="DSTACK_BROKER_ADMIN_URL must be .* not amqp://admin@rabbit") as caught:
        management_url("amqp://admin:s3cret@rabbit:5672", "amqp://rabbit")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("broker_url, vhost", [("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
                                                ("amqp://rabbit", "/"), ("amqp://rabbit/", "/"),
                                                ("amqp://rabbit:5672/team", "team"), ("amqp://rabbit/a%2Fb", "a/b")])
def test_the_vhost_is_the_broker_urls(broker_url: str, vhost: str) -> None:
    assert broker_vhost(broker_url) == vhost


def test_a_users_broker_url_has_their_credentials_and_the_brokers_place() -> None:
    assert user_broker_url("amqp://guest:guest@rabbit:5672/%2F", "alice", "pw") == "amqp://alice:pw@rabbit:5672/%2F"
    assert user_broker_url("amqps://admin:x@rabbit.example.com/team?heartbeat=10", "bob", "p/w:@%") == \
        "amqps://bob:p%2Fw%3A%40%25@rabbit.example.com/team"
    params = pika.URLParameters(user_broker_url("amqp://guest:guest@[::1]:5673/a%2Fb", "bob", "p/w:@% x"))
    assert (params.host, params.port, params.virtual_host) == ("::1", 5673, "a/b")
    assert (params.credentials.username, params.credentials.password) == ("bob", "p/w:@% x")


def test_the_admin_url_is_a_setting() -> None:
    assert load_settings({}).broker_admin_url == ""
    settings = load_settings({"DSTACK_BROKER_ADMIN_URL": "http://admin:pw@rabbit:15672"})
    assert settings.broker_admin_url == "http://admin:pw@rabbit:15672"


# ----------------------------------------------------------------------------- the management API client


class FakeManagementApi:
    """RabbitMQ's management API as far as accounts go: users and permissions in memory, every request recorded.
    ``refuse`` maps a path to the status it answers with."""

    def __init__(self, prefix: str = "") -> None:
        self.requests: list[tuple[str, str, Optional[dict], str]] = []
        self.users: dict[str, dict] = {}
        self.permissions: dict[tuple[str, str], dict] = {}
        self.topic_permissions: dict[tuple[str, str], dict[str, dict]] = {}  # (vhost, user) -> exchange -> body
        self.refuse: dict[str, tuple[int, dict]] = {}
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((self.command, self.path, body, self.headers.get("Authorization", "")))
                status, answer = api.answer(self.command, self.path.removeprefix(prefix), body)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://admin:s3cret@127.0.0.1:{self.server.server_port}{prefix}"

    def answer(self, method: str, path: str, body: Optional[dict]) -> tuple[int, Optional[dict]]:
        if path in self.refuse:
            return self.refuse[path]
        parts = path.split("/")  # "", "api", kind, ...
        if parts[2] == "users":
            name = parts[3]
            if method == "GET":
                return (200, {"name": name, "tags": self.users[name]["tags"]}) if name in self.users else \
                    (404, {"error": "Object Not Found", "reason": "Not Found"})
            if method == "PUT":
                assert body is not None
                self.users[name] = body
                return 201, None
            if self.users.pop(name, None) is None:
                return 404, {"error": "Object Not Found", "reason": "Not Found"}
            return 204, None
        if parts[2] == "topic-permissions":  # PUT: one exchange's; DELETE: all of them (404 when none)
            key = (parts[3], parts[4])
            if method == "DELETE":
                return (204, None) if self.topic_permissions.pop(key, None) else \
                    (404, {"error": "Object Not Found", "reason": "Not Found"})
            assert method == "PUT" and body is not None and set(body) == {"exchange", "write", "read"}
            self.topic_permissions.setdefault(key, {})[body["exchange"]] = body
            return 201, None
        assert parts[2] == "permissions" and method == "PUT" and body is not None
        self.permissions[(parts[3], parts[4])] = body
        return 201, None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeManagementApi]:
    server = FakeManagementApi()
    yield server
    server.stop()


def test_adding_makes_the_user_then_its_permissions_in_the_quoted_vhost(api: FakeManagementApi) -> None:
    ManagementApi(api.url, "/").add("alice", "pw-1", "user")
    assert [(method, path) for method, path, _, _ in api.requests] == [
        ("GET", "/api/users/alice"), ("PUT", "/api/users/alice"), ("PUT", "/api/permissions/%2F/alice")]
    assert api.users["alice"] == {"password": "pw-1", "tags": ""}
    expected = permissions_for("alice", "user")
    assert api.permissions[("%2F", "alice")] == {"configure": expected.configure, "write": expected.write,
                                                 "read": expected.read}
    assert {auth for _, _, _, auth in api.requests} == {"Basic " + base64.b64encode(b"admin:s3cret").decode()}


def test_a_named_vhost_and_a_path_prefix_are_kept() -> None:
    server = FakeManagementApi(prefix="/rabbitmq")
    try:
        client = ManagementApi(server.url + "/", "team/a")
        client.add("w1", "pw", "worker")
        assert server.requests[-1][1] == "/rabbitmq/api/permissions/team%2Fa/w1"
        assert client.exists("w1") and not client.exists("w2")
    finally:
        server.stop()


def test_an_existing_account_is_never_overwritten(api: FakeManagementApi) -> None:
    api.users["guest"] = {"password": "guest", "tags": "administrator"}
    with pytest.raises(DstackError, match="RabbitMQ has an account guest already; remove it first"):
        ManagementApi(api.url, "/").add("guest", "new", "user")
    assert api.users["guest"]["password"] == "guest"
    assert [method for method, *_ in api.requests] == ["GET"]


def test_a_refused_permission_removes_the_user_again(api: FakeManagementApi) -> None:
    api.refuse["/api/permissions/nope/alice"] = (400, {"error": "bad_request", "reason": "vhost_not_found"})
    with pytest.raises(DstackError, match=r"refused PUT http://127.0.0.1:\d+/api/permissions/nope/alice "
                                          r"\(400 Bad Request: vhost_not_found\)") as caught:
        ManagementApi(api.url, "nope").add("alice", "pw", "user")
    assert "alice" not in api.users
    assert api.requests[-1][:2] == ("DELETE", "/api/users/alice")
    assert "s3cret" not in str(caught.value)


def test_setting_permissions_for_visibility_own_puts_each_live_exchanges_topic_permissions(
        api: FakeManagementApi) -> None:
    client = ManagementApi(api.url, "team/a")
    client.add("alice", "pw", "user")
    del api.requests[:]
    client.set_permissions("alice", "user", "own")
    assert [(method, path) for method, path, _, _ in api.requests] == [
        ("PUT", "/api/permissions/team%2Fa/alice"), ("PUT", "/api/topic-permissions/team%2Fa/alice"),
        ("PUT", "/api/topic-permissions/team%2Fa/alice")]
    assert api.topic_permissions[("team%2Fa", "alice")] == {
        "dstack.logs": {"exchange": "dstack.logs", "write": "^$", "read": r"^alice\."},
        "dstack.updates": {"exchange": "dstack.updates", "write": "^$", "read": r"^alice\."}}
    p = permissions_for("alice", "user")
    assert api.permissions[("team%2Fa", "alice")] == {"configure": p.configure, "write": p.write, "read": p.read}


def test_setting_permissions_for_visibility_all_or_an_admin_clears_the_topic_permissions(
        api: FakeManagementApi) -> None:
    client = ManagementApi(api.url, "/")
    client.add("alice", "pw", "user")
    client.set_permissions("alice", "user", "own")
    del api.requests[:]
    client.set_permissions("alice", "user", "all")
    assert [(method, path) for method, path, _, _ in api.requests] == [
        ("PUT", "/api/permissions/%2F/alice"), ("DELETE", "/api/topic-permissions/%2F/alice")]
    assert ("%2F", "alice") not in api.topic_permissions
    client.set_permissions("alice", "admin", "own")  # none to clear: the API's 404 is no error
    assert api.requests[-1][:2] == ("DELETE", "/api/topic-permissions/%2F/alice")
    assert ("%2F", "alice") not in api.topic_permissions


def test_setting_permissions_says_what_the_api_refused(api: FakeManagementApi) -> None:
    api.refuse["/api/topic-permissions/%2F/ghost"] = (400, {"error": "bad_request",
                                                           "reason": "vhost_or_user_not_found"})
    with pytest.raises(DstackError, match=r"refused PUT .*/api/topic-permissions/%2F/ghost \(400 Bad Request: "
                                          r"vhost_or_user_not_found\)"):
        ManagementApi(api.url, "/").set_permissions("ghost", "user", "own")


def test_removing_says_whether_there_was_an_account(api: FakeManagementApi) -> None:
    client = ManagementApi(api.url, "/")
    client.add("bob", "pw", "admin")
    assert client.remove("bob") is True
    assert client.remove("bob") is False
    assert not client.exists("bob")


def test_credentials_that_are_no_administrators_are_told_what_to_do(api: FakeManagementApi) -> None:
    api.refuse["/api/users/alice"] = (401, {"error": "not_authorised", "reason": "Not administrator user"})
    with pytest.raises(DstackError) as caught:
        ManagementApi(api.url, "/").add("alice", "pw", "user")
    message = str(caught.value)
    assert "refused admin (401 Unauthorized: Not administrator user)" in message
    assert "DSTACK_BROKER_ADMIN_URL" in message and "--rabbitmqctl" in message and "s3cret" not in message


def test_a_management_api_that_does_not_answer_is_told_how_to_enable() -> None:
    with pytest.raises(DstackError, match=r"cannot reach RabbitMQ's management API at "
                                          rf"http://127.0.0.1:{(port := free_port())}/api/users/alice .*"
                                          "`rabbitmq-plugins enable rabbitmq_management`") as caught:
        ManagementApi(f"http://admin:s3cret@127.0.0.1:{port}", "/", timeout=5).exists("alice")
    assert "s3cret" not in str(caught.value)


# ----------------------------------------------------------------------------- rabbitmqctl

#: A stand-in for rabbitmqctl: appends its arguments and standard input to the file named by $FAKE_CTL_LOG, prints
#: the users of $FAKE_CTL_USERS for list_users, and fails set_permissions on the vhost "nope".
FAKE_RABBITMQCTL = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CTL_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "stdin": sys.stdin.read()}) + "\\n")
if "list_users" in args:
    print(json.dumps([{"user": u, "tags": []} for u in os.environ.get("FAKE_CTL_USERS", "").split(",") if u]))
if "set_permissions" in args and "nope" in args:
    print("Error: vhost 'nope' does not exist", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture
def fake_ctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    script = tmp_path / "rabbitmqctl.py"
    script.write_text(FAKE_RABBITMQCTL)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CTL_LOG", str(log))
    return [sys.executable, str(script)], log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_rabbitmqctl_gets_the_password_on_stdin_never_as_an_argument(fake_ctl: tuple[list[str], Path]) -> None:
    command, log = fake_ctl
    Rabbitmqctl("/", command).add("w1", "pw-secret", "worker")
    made = calls(log)
    assert [c["args"][1] for c in made] == ["list_users", "add_user", "set_user_tags", "set_permissions"]
    assert made[1] == {"args": ["-q", "add_user", "w1"], "stdin": "pw-secret\n"}
    assert all("pw-secret" not in " ".join(c["args"]) for c in made)
    p = permissions_for("w1", "worker")
    assert made[3]["args"] == ["-q", "set_permissions", "-p", "/", "w1", p.configure, p.write, p.read]


def test_rabbitmqctl_leaves_nothing_half_made_and_says_what_failed(fake_ctl: tuple[list[str], Path]) -> None:
    command, log = fake_ctl
    with pytest.raises(DstackError, match=r"set_permissions \.\.\.` failed \(exit 2\): Error: vhost 'nope' does not "
                                          "exist; run it as root or as the rabbitmq user"):
        Rabbitmqctl("nope", command).add("alice", "pw", "user")
    assert calls(log)[-1]["args"] == ["-q", "delete_user", "alice"]


def test_rabbitmqctl_refuses_an_existing_account_and_removes_only_one_there_is(
        fake_ctl: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    command, log = fake_ctl
    monkeypatch.setenv("FAKE_CTL_USERS", "guest,alice")
    ctl = Rabbitmqctl("/", command)
    with pytest.raises(DstackError, match="has an account guest already"):
        ctl.add("guest", "pw", "user")
    assert ctl.remove("alice") is True and ctl.remove("bob") is False
    assert [c["args"][1] for c in calls(log)] == ["list_users", "list_users", "delete_user", "list_users"]


def test_rabbitmqctl_sets_topic_permissions_for_own_and_clears_them_for_all(fake_ctl: tuple[list[str], Path]) -> None:
    command, log = fake_ctl
    ctl = Rabbitmqctl("team", command)
    ctl.set_permissions("alice", "user", "own")
    ctl.set_permissions("alice", "user", "all")
    ctl.set_permissions("w1", "worker", "own")
    p, w = permissions_for("alice", "user"), permissions_for("w1", "worker")
    assert [c["args"] for c in calls(log)] == [
        ["-q", "set_permissions", "-p", "team", "alice", p.configure, p.write, p.read],
        ["-q", "set_topic_permissions", "-p", "team", "alice", "dstack.logs", "^$", r"^alice\."],
        ["-q", "set_topic_permissions", "-p", "team", "alice", "dstack.updates", "^$", r"^alice\."],
        ["-q", "set_permissions", "-p", "team", "alice", p.configure, p.write, p.read],
        ["-q", "clear_topic_permissions", "-p", "team", "alice"],
        ["-q", "set_permissions", "-p", "team", "w1", w.configure, w.write, w.read],
        ["-q", "clear_topic_permissions", "-p", "team", "w1"]]


def test_rabbitmqctl_not_installed_says_where_to_run() -> None:
    with pytest.raises(DstackError, match="no-such-rabbitmqctl is not installed here: run .* on the broker's "
                                          "machine, or leave --rabbitmqctl out"):
        Rabbitmqctl("/", ["no-such-rabbitmqctl"]).exists("alice")


# ----------------------------------------------------------------------------- the CLI


class FakeAccounts:
    """Broker accounts in memory."""

    vhost = "/"

    def __init__(self, fail_remove: bool = False) -> None:
        self.accounts: dict[str, tuple[str, str]] = {}
        self.fail_remove = fail_remove
        self.set: list[tuple[str, str, str]] = []  # set_permissions: name, role, visibility
        self.fail_set: set[str] = set()

    def describe(self) -> str:
        return "the fake"

    def exists(self, name: str) -> bool:
        return name in self.accounts

    def add(self, name: str, password: str, role: str) -> None:
        assert name not in self.accounts
        self.accounts[name] = (password, role)

    def set_permissions(self, name: str, role: str, visibility: str) -> None:
        assert name in self.accounts
        topic_permissions_for(name, role, visibility)  # checks them as the real ones do
        if name in self.fail_set:
            raise DstackError(f"the fake cannot set {name}'s permissions")
        self.set.append((name, role, visibility))

    def remove(self, name: str) -> bool:
        if self.fail_remove:
            raise DstackError("the fake cannot delete")
        return self.accounts.pop(name, None) is not None


class FakeScheduler:
    """An RpcClient that adds and removes users, or refuses like a scheduler asked by no admin."""

    def __init__(self, caller: str = "guest", refuse: bool = False) -> None:
        self.users: dict[str, UserView] = {}
        self.caller, self.refuse = caller, refuse
        self.visibility = "all"
        self.scheduler_account = ""
        self.requests: list[Any] = []

    def check_scheduler(self) -> None:
        self.requests.append("check")

    def call(self, request: Any) -> Any:
        self.requests.append(request)
        if self.refuse and isinstance(request, (AddUser, RemoveUser)):
            raise NotAllowed(f"{self.caller} is no admin: only admins add and remove users")
        if isinstance(request, AddUser):
            self.users[request.name] = UserView(request.name, request.role, 1_700_000_000.0)
            return self.users[request.name]
        if isinstance(request, RemoveUser):
            return self.users.pop(request.name)
        assert isinstance(request, GetUsers)
        caller = self.users.get(self.caller, UserView(self.caller, "admin"))
        return UsersAnswer(users=list(self.users.values()), caller=caller, visibility=self.visibility,
                           scheduler=self.scheduler_account)

    def __enter__(self) -> FakeScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[FakeScheduler, FakeAccounts]:
    scheduler, made = FakeScheduler(), FakeAccounts()
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DSTACK_BROKER_URL", "amqp://guest:guest@rabbit.example.com:5672/team")
    monkeypatch.setattr(context.Context, "client", lambda self: scheduler)
    monkeypatch.setattr(users, "_accounts", lambda ctx, rabbitmqctl: made)
    return scheduler, made


def test_add_makes_the_account_then_tells_the_scheduler_and_prints_the_url(
        fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    result = CliRunner().invoke(cli, ["users", "add", "alice", "--admin"])
    assert result.exit_code == 0, result.output
    password, role = made.accounts["alice"]
    assert role == "admin" and len(password) == 32
    assert scheduler.requests == ["check", AddUser(name="alice", role="admin"), GetUsers()]
    assert made.set == []  # an admin, and visibility all: no topic permissions to set
    assert result.stdout == f"amqp://alice:{password}@rabbit.example.com:5672/team\n"
    assert "shown this once" in result.stderr and "added alice to the scheduler's users as admin" in result.stderr


def test_add_with_a_password_on_stdin_and_as_a_worker(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    result = CliRunner().invoke(cli, ["users", "add", "gpu-1", "--worker", "--password-stdin"], input="p@ss w\n")
    assert result.exit_code == 0, result.output
    assert made.accounts["gpu-1"] == ("p@ss w", "worker")
    assert result.stdout == "amqp://gpu-1:p%40ss%20w@rabbit.example.com:5672/team\n"
    assert "DSTACK_WORKER_ID=gpu-1" in result.stderr


def test_add_refused_by_the_scheduler_deletes_the_account_again(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.refuse = True
    result = CliRunner().invoke(cli, ["users", "add", "alice"])
    assert result.exit_code == 1
    assert made.accounts == {}
    assert "its RabbitMQ account was deleted again" in result.stderr
    assert "error: guest is no admin" in result.stderr and result.stdout == ""


def test_add_says_when_the_account_could_not_be_deleted_again(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.refuse, made.fail_remove = True, True
    result = CliRunner().invoke(cli, ["users", "add", "alice"])
    assert result.exit_code == 1
    assert "could not be deleted again: the fake cannot delete" in result.stderr
    assert "rabbitmqctl delete_user alice" in result.stderr


def test_add_under_visibility_own_sets_a_users_topic_permissions(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.visibility = "own"
    for args in (["bob"], ["carol", "--admin"], ["gpu-1", "--worker"]):
        result = CliRunner().invoke(cli, ["users", "add", *args])
        assert result.exit_code == 0, result.output
    assert made.set == [("bob", "user", "own")]  # admins and workers have none
    assert scheduler.requests[:3] == ["check", AddUser(name="bob", role="user"), GetUsers()]
    assert set(made.accounts) == {"bob", "carol", "gpu-1"}


def test_add_whose_topic_permissions_fail_forgets_the_user_and_deletes_the_account(
        fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.visibility = "own"
    made.fail_set.add("bob")
    result = CliRunner().invoke(cli, ["users", "add", "bob"])
    assert result.exit_code == 1 and result.stdout == ""
    assert scheduler.requests == ["check", AddUser(name="bob", role="user"), GetUsers(), RemoveUser(name="bob")]
    assert made.accounts == {} and scheduler.users == {}
    assert "error: the fake cannot set bob's permissions" in result.stderr
    assert "the scheduler forgot bob again: its RabbitMQ account was deleted again" in result.stderr


def test_add_that_cannot_learn_the_visibility_undoes_too(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.visibility = "everything"  # a scheduler of another version: no topic permissions guessed
    result = CliRunner().invoke(cli, ["users", "add", "bob"])
    assert result.exit_code == 1 and "'everything' is no visibility" in result.stderr
    assert made.accounts == {} and scheduler.users == {} and scheduler.requests[-1] == RemoveUser(name="bob")


@pytest.mark.parametrize("visibility", VISIBILITIES)
def test_sync_sets_every_users_permissions_but_the_schedulers_and_its_own(
        fleet: tuple[FakeScheduler, FakeAccounts], visibility: str) -> None:
    scheduler, made = fleet
    scheduler.visibility, scheduler.scheduler_account = visibility, "sched"
    made.accounts.update({name: ("pw", role) for name, role in (
        ("sched", "admin"), ("guest", "admin"), ("alice", "user"), ("carol", "admin"), ("gpu-1", "worker"))})
    scheduler.users = {name: UserView(name, role, added_at) for name, role, added_at in (
        ("sched", "admin", 0.0),  # the scheduler's own account, as GetUsers names it
        ("alice", "user", 1.0), ("carol", "admin", 1.0), ("ghost", "user", 1.0),  # ghost: no account
        ("gpu-1", "worker", 1.0), ("guest", "admin", 1.0))}  # guest: this CLI's own
    result = CliRunner().invoke(cli, ["users", "sync"])
    assert result.exit_code == 0, result.output
    assert made.set == [("alice", "user", visibility), ("carol", "admin", visibility), ("gpu-1", "worker", visibility)]
    assert scheduler.requests == [GetUsers()]
    follows = "their own runs only" if visibility == "own" else "every run"
    assert f"alice (user): permissions set; follows the live logs and status of {follows}" in result.stderr
    assert "carol (admin): permissions set; follows the live logs and status of every run" in result.stderr
    assert "ghost (user): RabbitMQ has no such account; skipped" in result.stderr
    assert f"for DSTACK_VISIBILITY={visibility}" in result.stderr


def test_sync_goes_on_past_an_account_it_cannot_set_and_fails_at_the_end(
        fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    scheduler.visibility = "own"
    for name in ("alice", "bob"):
        made.accounts[name] = ("pw", "user")
        scheduler.users[name] = UserView(name, "user", 1.0)
    made.fail_set.add("alice")
    result = CliRunner().invoke(cli, ["users", "sync"])
    assert result.exit_code == 1
    assert made.set == [("bob", "user", "own")]
    assert "alice (user): the fake cannot set alice's permissions" in result.stderr
    assert "error: the permissions of alice could not be set (above)" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["users", "add", "al.ice"], "cannot name a user"),
    (["users", "add", "alice", "--admin", "--worker"], "--admin or --worker, not both"),
    (["users", "add", "guest"], "connects to the broker as guest"),
    (["users", "remove", "guest", "--yes"], "cannot remove its own account"),
])
def test_add_and_remove_refuse_before_anything_is_made(fleet: tuple[FakeScheduler, FakeAccounts], args: list[str],
                                                        message: str) -> None:
    scheduler, made = fleet
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and message in result.output
    assert scheduler.requests == [] and made.accounts == {}


def test_remove_tells_the_scheduler_then_deletes_the_account(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    assert CliRunner().invoke(cli, ["users", "add", "bob"]).exit_code == 0
    result = CliRunner().invoke(cli, ["users", "remove", "bob", "--yes"])
    assert result.exit_code == 0, result.output
    assert scheduler.requests[-1] == RemoveUser(name="bob") and made.accounts == {}
    assert "their runs go on" in result.stderr and "Deleted the RabbitMQ account bob" in result.stderr


def test_remove_refused_by_the_scheduler_deletes_nothing(fleet: tuple[FakeScheduler, FakeAccounts]) -> None:
    scheduler, made = fleet
    assert CliRunner().invoke(cli, ["users", "add", "bob"]).exit_code == 0
    scheduler.refuse = True
    result = CliRunner().invoke(cli, ["users", "remove", "bob", "-y"])
    assert result.exit_code == 1 and "is no admin" in result.stderr
    assert "bob" in made.accounts


def test_list_marks_the_caller(fleet: tuple[FakeScheduler, FakeAccounts], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, _ = fleet
    for name in ("alice", "bob"):
        assert CliRunner().invoke(cli, ["users", "add", name]).exit_code == 0
    result = CliRunner().invoke(cli, ["users", "list", "--json"])
    assert json.loads(result.stdout) == {
        "users": [{"name": "alice", "role": "user", "added_at": 1_700_000_000.0},
                  {"name": "bob", "role": "user", "added_at": 1_700_000_000.0}],
        "caller": {"name": "guest", "role": "admin", "added_at": 0.0}, "visibility": "all", "scheduler": ""}
    scheduler.caller = "bob"
    terminal = Console(force_terminal=True, width=120, record=True)  # the table, as on a terminal
    monkeypatch.setattr(users, "out", terminal)
    assert CliRunner().invoke(cli, ["users", "list"]).exit_code == 0
    lines = [line.split() for line in terminal.export_text().splitlines()]
    assert lines[0] == ["USER", "ROLE", "ADDED"]
    assert lines[1][:2] == ["alice", "user"] and lines[2][:3] == ["bob", "(you)", "user"]
