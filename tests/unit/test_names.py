"""Every queue, exchange and actor name is built in dstack/names.py and nowhere else."""
from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import dramatiq.common

from dstack import names

ROOT = Path(__file__).resolve().parents[2]
#: The installed packages' sources (dstack, dstack.sdk, dstack.scheduler, dstack.workers).
PACKAGES = ("dstack", "sdk", "scheduler", "workers")
#: Queue and exchange names, RabbitMQ's reply-to pseudo-queue and Dramatiq's dead-letter suffix.
AMQP_NAME = re.compile(r"\bdstack\.(tasks|events|rpc|logs|updates|worker)\b|\bamq\.|\.XQ\b")


def sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path != ROOT / "dstack" / "names.py":
                yield path


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def string_literals() -> Iterator[tuple[str, int, str]]:
    """``(file, line, text)`` of every string literal but docstrings, f-string parts included."""
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                yield str(path.relative_to(ROOT)), node.lineno, node.value


def test_no_queue_or_exchange_name_is_written_outside_names_py() -> None:
    found = [f"{file}:{line}: {text!r}" for file, line, text in string_literals() if AMQP_NAME.search(text)]
    assert found == []


def test_every_dotted_dstack_literal_outside_names_py_is_a_module() -> None:
    """Such as ``"dstack.schemas"`` for package data; anything else would be a name of the protocol."""
    found: list[str] = []
    for file, line, text in string_literals():
        if text.startswith("dstack."):
            package = ".".join(text.split(".")[:2])
            if importlib.util.find_spec(package) is None:
                found.append(f"{file}:{line}: {text!r}")
    assert found == []


def test_actors_and_queues_are_never_named_by_a_literal() -> None:
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg in ("actor_name", "queue_name") and isinstance(keyword.value, ast.Constant):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {keyword.arg}={keyword.value.value!r}")
    assert found == []


def test_names_follow_the_conventions_of_rabbitmq_and_dramatiq() -> None:
    assert names.dead_letter_queue(names.DEFAULT_TASK_QUEUE) == dramatiq.common.xq_name(names.DEFAULT_TASK_QUEUE)
    assert names.REPLY_TO_QUEUE == "amq.rabbitmq.reply-to"
    actors = {names.TASK_ACTOR, names.CONTROL_ACTOR, names.EVENT_ACTOR}
    assert len(actors) == 3 and all(re.fullmatch(r"[a-z_]+", actor) for actor in actors)
    queues = {names.EVENTS_QUEUE, names.RPC_QUEUE, names.DEFAULT_TASK_QUEUE, names.worker_queue("w1"),
              names.LOGS_EXCHANGE, names.UPDATES_EXCHANGE}
    assert len(queues) == 6 and all(queue.startswith("dstack.") for queue in queues)
