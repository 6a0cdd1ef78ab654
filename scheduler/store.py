"""Where the scheduler keeps runs and tasks: an interface, and SQLite behind it.

All changes happen inside :meth:`StateStore.transaction`; messages to send after a change
are written to an outbox in the same transaction, so a crash never loses one (they are
sent, maybe twice, and every handler is idempotent).

A store keeps what it is given and holds no rules: the counters of a run's unfinished and
running tasks, and of the tasks queued in each queue, are changed by the state machine
(:meth:`dstack.scheduler.flow.TaskFlow.move`) through :meth:`StateStore.adjust_run_counters` and
:meth:`StateStore.adjust_queue`.
"""
from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Optional

from dstack.errors import DstackError
from dstack.messages import from_dict, plain
from dstack.names import DEFAULT_TASK_QUEUE
from dstack.scheduler.model import SPEC_TYPES, Kind, RunRecord, Status, TaskRecord


class StoredTag(NamedTuple):
    tag: str
    run_name: str
    created_at: float
    #: the dstack user who made it
    owner: str


class StoredSecret(NamedTuple):
    name: str
    #: sealed (:mod:`dstack.scheduler.secrets`)
    value: str
    updated_at: float
    #: the dstack user it belongs to; empty for a team secret
    owner: str


class StoredUser(NamedTuple):
    name: str
    role: str
    added_at: float


class StateStore(abc.ABC):
    """The scheduler's state. Methods other than ``transaction`` must be called inside one."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager: ...

    @abc.abstractmethod
    def get_run(self, run_name: str) -> Optional[RunRecord]: ...

    @abc.abstractmethod
    def list_runs(self, limit: Optional[int], owner: Optional[str] = None) -> list[RunRecord]:
        """The newest ``limit`` runs (``None``: every run) of ``owner`` (``None``: anyone's), newest first."""

    @abc.abstractmethod
    def save_run(self, run: RunRecord) -> None: ...

    @abc.abstractmethod
    def delete_run(self, run_name: str, *, with_tags: bool) -> list[str]:
        """Forget a run: its record, tasks, edges and counters (and, ``with_tags``, the tags naming it, which
        are returned). The caller checks that it may."""

    @abc.abstractmethod
    def get_task(self, run_name: str, task_id: str) -> Optional[TaskRecord]: ...

    @abc.abstractmethod
    def tasks_of(self, run_name: str) -> list[TaskRecord]: ...

    @abc.abstractmethod
    def add_task(self, task: TaskRecord) -> None:
        """Record a new task, and the edges to what it waits on (``depends_on``, ``master``)."""

    @abc.abstractmethod
    def save_task(self, task: TaskRecord) -> None:
        """Keep the task as it is now (it exists)."""

    @abc.abstractmethod
    def stored_status(self, run_name: str, task_id: str) -> Optional[tuple[Status, str]]:
        """``(status, queue)`` of the task as stored, ``None`` if there is no such task."""

    @abc.abstractmethod
    def dependents_of(self, run_name: str, task_id: str) -> list[tuple[TaskRecord, str]]:
        """``(task, kind)`` for every task waiting on ``task_id``; kind is ``dep`` or ``master``."""

    @abc.abstractmethod
    def upstream_of(self, run_name: str, task_id: str) -> list[tuple[TaskRecord, str]]:
        """``(task, kind)`` for every task ``task_id`` waits on."""

    @abc.abstractmethod
    def add_dependency(self, run_name: str, upstream: str, downstream: str) -> None:
        """Make ``downstream`` wait for ``upstream`` to be done (one more dependency left)."""

    @abc.abstractmethod
    def decrement_deps(self, run_name: str, task_id: str) -> int:
        """One dependency of the task is done; returns how many are left."""

    @abc.abstractmethod
    def jobs_of(self, run_name: str, workflow: str) -> list[TaskRecord]:
        """The jobs a workflow's provider created."""

    @abc.abstractmethod
    def get_tag(self, tag: str) -> Optional[StoredTag]:
        """The tag of that name: the run it names, when and by whom it was made."""

    @abc.abstractmethod
    def set_tag(self, tag: str, run_name: str, created_at: float, owner: str = "") -> None: ...

    @abc.abstractmethod
    def delete_tag(self, tag: str) -> bool: ...

    @abc.abstractmethod
    def list_tags(self) -> list[StoredTag]:
        """Every tag, by name."""

    @abc.abstractmethod
    def tags_of(self, run_name: str) -> list[str]:
        """The tags that name a run, by name."""

    @abc.abstractmethod
    def tasks_in_status(self, status: Status) -> list[TaskRecord]:
        """Every task of every run in ``status``."""

    @abc.abstractmethod
    def count_unfinished(self, run_name: str) -> tuple[int, int]:
        """``(unfinished tasks, running tasks)`` of a run: its counters."""

    @abc.abstractmethod
    def adjust_run_counters(self, run_name: str, *, unfinished: int = 0, running: int = 0) -> None:
        """Add to the run's counters of unfinished and running tasks."""

    @abc.abstractmethod
    def adjust_queue(self, queue: str, queued: int) -> None:
        """Add ``queued`` to the count of tasks queued in ``queue`` (made known by :meth:`add_queue`)."""

    @abc.abstractmethod
    def add_queue(self, queue: str, needs: dict[str, Any]) -> int:
        """Make ``queue`` (of tasks needing ``needs``) known; returns how many tasks are queued in it."""

    @abc.abstractmethod
    def open_queues(self) -> list[tuple[str, dict[str, Any]]]:
        """``(queue, needs)`` of every task queue that holds queued tasks."""

    @abc.abstractmethod
    def save_worker(self, worker_id: str, report: dict[str, Any], seen_at: float) -> None:
        """Keep a worker's latest report, received at ``seen_at``."""

    @abc.abstractmethod
    def delete_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    def workers(self) -> list[tuple[dict[str, Any], float]]:
        """``(latest report, seen_at)`` of every worker heard from and not gone, by worker id."""

    @abc.abstractmethod
    def tasks_held_by(self, worker_id: str) -> list[TaskRecord]:
        """The unfinished tasks a worker claimed."""

    @abc.abstractmethod
    def set_secret(self, name: str, value: str, updated_at: float, owner: str = "") -> None:
        """Keep the secret ``name`` of ``owner`` (empty: the team's)."""

    @abc.abstractmethod
    def delete_secret(self, name: str, owner: str = "") -> bool: ...

    @abc.abstractmethod
    def secrets(self, owners: Optional[tuple[str, ...]] = None) -> list[StoredSecret]:
        """The secrets of ``owners`` (``None``: everyone's; ``""`` names the team's), by owner and name."""

    @abc.abstractmethod
    def add_user(self, name: str, role: str, added_at: float) -> None:
        """Keep ``name`` as a dstack user with ``role`` (a user added again gets the new role)."""

    @abc.abstractmethod
    def remove_user(self, name: str) -> bool: ...

    @abc.abstractmethod
    def get_user(self, name: str) -> Optional[StoredUser]: ...

    @abc.abstractmethod
    def users(self) -> list[StoredUser]:
        """Every dstack user, by name."""

    @abc.abstractmethod
    def add_outbox(self, queue: str, actor: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    def outbox(self) -> list[tuple[int, str, str, bytes]]: ...

    @abc.abstractmethod
    def remove_outbox(self, item_id: int) -> None: ...


#: Version of the tables below; a database of another version is refused, not misread.
SCHEMA_VERSION = 4

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_name TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL,
    submitted_at REAL NOT NULL, snapshot_id TEXT NOT NULL, project TEXT NOT NULL,
    reason TEXT NOT NULL, stop_requested INTEGER NOT NULL, abort INTEGER NOT NULL,
    started_at REAL, finished_at REAL,
    unfinished INTEGER NOT NULL DEFAULT 0, running INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (submitted_at);
CREATE TABLE IF NOT EXISTS tasks (
    run_name TEXT NOT NULL, task_id TEXT NOT NULL, kind TEXT NOT NULL, workflow TEXT NOT NULL,
    status TEXT NOT NULL, spec TEXT NOT NULL, attempt INTEGER NOT NULL, depends_on TEXT NOT NULL,
    deps_left INTEGER NOT NULL, master TEXT, worker_id TEXT, hostname TEXT, ports TEXT NOT NULL,
    exit_code INTEGER, reason TEXT NOT NULL, submitted_at REAL NOT NULL, started_at REAL,
    finished_at REAL, queue TEXT NOT NULL DEFAULT '{DEFAULT_TASK_QUEUE}', PRIMARY KEY (run_name, task_id));
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_by_worker ON tasks (worker_id);
CREATE TABLE IF NOT EXISTS edges (
    run_name TEXT NOT NULL, upstream TEXT NOT NULL, downstream TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (run_name, upstream, downstream, kind));
CREATE INDEX IF NOT EXISTS edges_by_downstream ON edges (run_name, downstream);
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT PRIMARY KEY, run_name TEXT NOT NULL, created_at REAL NOT NULL, owner TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS queues (
    queue TEXT PRIMARY KEY, needs TEXT NOT NULL, queued INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, report TEXT NOT NULL, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    owner TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, actor TEXT NOT NULL, payload BLOB NOT NULL);
"""

#: Version 2 had one task queue, and no record of queues and workers.
_FROM_VERSION_2 = f"""BEGIN;
CREATE TABLE IF NOT EXISTS queues (
    queue TEXT PRIMARY KEY, needs TEXT NOT NULL, queued INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, report TEXT NOT NULL, seen_at REAL NOT NULL);
ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT '{DEFAULT_TASK_QUEUE}';
INSERT INTO queues SELECT '{DEFAULT_TASK_QUEUE}', '{{}}', count(*) FROM tasks WHERE status = 'queued';
PRAGMA user_version = 3;
COMMIT;
"""

#: Version 3 had no users: runs and tags had no owner, and secrets were the team's.
_FROM_VERSION_3 = """BEGIN;
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE tags ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE secrets_by_owner (
    owner TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (owner, name));
INSERT INTO secrets_by_owner SELECT '', name, value, updated_at FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_by_owner RENAME TO secrets;
PRAGMA user_version = 4;
COMMIT;
"""

#: The steps from each older version to the next.
_MIGRATIONS = {2: _FROM_VERSION_2, 3: _FROM_VERSION_3}

_RUN_COLUMNS = ("run_name", "workflow", "status", "submitted_at", "snapshot_id", "project", "reason",
                "stop_requested", "abort", "started_at", "finished_at", "owner")
_TASK_COLUMNS = ("run_name", "task_id", "kind", "workflow", "status", "spec", "attempt", "depends_on",
                 "deps_left", "master", "worker_id", "hostname", "ports", "exit_code", "reason",
                 "submitted_at", "started_at", "finished_at", "queue")
_JSON_TASK_COLUMNS = ("spec", "depends_on", "ports")


class SqliteStateStore(StateStore):
    """State in one SQLite file (WAL mode); safe to use from several threads of one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # deleted rows are overwritten, not left in free pages: a secret deleted or sealed again under a new
        # key leaves nothing of its earlier form in the file
        self._db.execute("PRAGMA secure_delete=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        while has_tables and version in _MIGRATIONS:
            self._db.executescript(_MIGRATIONS[version])
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if has_tables and version != SCHEMA_VERSION:
            raise DstackError(f"the scheduler's state at {path} has schema version {version}, not "
                              f"{SCHEMA_VERSION} (written by another version of dstack); move it away to start afresh")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ runs

    def get_run(self, run_name: str) -> Optional[RunRecord]:
        row = self._db.execute("SELECT * FROM runs WHERE run_name = ?", (run_name,)).fetchone()
        return _run(row) if row else None

    def list_runs(self, limit: Optional[int], owner: Optional[str] = None) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs WHERE ? IS NULL OR owner = ? ORDER BY submitted_at DESC LIMIT ?",
                                (owner, owner, -1 if limit is None else limit))
        return [_run(row) for row in rows]

    def save_run(self, run: RunRecord) -> None:
        values = [getattr(run, c) for c in _RUN_COLUMNS]
        values[2] = run.status.value
        self._db.execute(_upsert("runs", _RUN_COLUMNS, ("run_name",)), values)

    def delete_run(self, run_name: str, *, with_tags: bool) -> list[str]:
        tags = self.tags_of(run_name) if with_tags else []
        self._db.execute("DELETE FROM tags WHERE run_name = ? AND ?", (run_name, int(with_tags)))
        self._db.execute("DELETE FROM edges WHERE run_name = ?", (run_name,))
        self._db.execute("DELETE FROM tasks WHERE run_name = ?", (run_name,))
        self._db.execute("DELETE FROM runs WHERE run_name = ?", (run_name,))
        return tags

    # ------------------------------------------------------------------ tasks

    def get_task(self, run_name: str, task_id: str) -> Optional[TaskRecord]:
        row = self._db.execute("SELECT * FROM tasks WHERE run_name = ? AND task_id = ?",
                               (run_name, task_id)).fetchone()
        return _task(row) if row else None

    def tasks_of(self, run_name: str) -> list[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE run_name = ? ORDER BY rowid", (run_name,))
        return [_task(row) for row in rows]

    def add_task(self, task: TaskRecord) -> None:
        self.save_task(task)
        edges = [(task.run_name, up, task.task_id, "dep") for up in task.depends_on]
        if task.master:
            edges.append((task.run_name, task.master, task.task_id, "master"))
        self._db.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?, ?, ?)", edges)

    def save_task(self, task: TaskRecord) -> None:
        values: list[Any] = []
        for column in _TASK_COLUMNS:
            value = getattr(task, column)
            values.append(json.dumps(plain(value)) if column in _JSON_TASK_COLUMNS else
                          value.value if isinstance(value, (Status, Kind)) else value)
        self._db.execute(_upsert("tasks", _TASK_COLUMNS, ("run_name", "task_id")), values)

    def stored_status(self, run_name: str, task_id: str) -> Optional[tuple[Status, str]]:
        row = self._db.execute("SELECT status, queue FROM tasks WHERE run_name = ? AND task_id = ?",
                               (run_name, task_id)).fetchone()
        return (Status(row["status"]), row["queue"]) if row else None

    def dependents_of(self, run_name: str, task_id: str) -> list[tuple[TaskRecord, str]]:
        rows = self._db.execute(
            "SELECT t.*, e.kind AS edge FROM edges e JOIN tasks t ON t.run_name = e.run_name "
            "AND t.task_id = e.downstream WHERE e.run_name = ? AND e.upstream = ?", (run_name, task_id))
        return [(_task(row), row["edge"]) for row in rows]

    def upstream_of(self, run_name: str, task_id: str) -> list[tuple[TaskRecord, str]]:
        rows = self._db.execute(
            "SELECT t.*, e.kind AS edge FROM edges e JOIN tasks t ON t.run_name = e.run_name "
            "AND t.task_id = e.upstream WHERE e.run_name = ? AND e.downstream = ?", (run_name, task_id))
        return [(_task(row), row["edge"]) for row in rows]

    def add_dependency(self, run_name: str, upstream: str, downstream: str) -> None:
        self._db.execute("INSERT INTO edges VALUES (?, ?, ?, 'dep')", (run_name, upstream, downstream))
        self._db.execute("UPDATE tasks SET deps_left = deps_left + 1 WHERE run_name = ? AND task_id = ?",
                         (run_name, downstream))

    def decrement_deps(self, run_name: str, task_id: str) -> int:
        self._db.execute("UPDATE tasks SET deps_left = deps_left - 1 WHERE run_name = ? AND task_id = ?",
                         (run_name, task_id))
        row = self._db.execute("SELECT deps_left FROM tasks WHERE run_name = ? AND task_id = ?",
                               (run_name, task_id)).fetchone()
        return int(row[0])

    def jobs_of(self, run_name: str, workflow: str) -> list[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE run_name = ? AND workflow = ? AND kind = 'job' "
                                "ORDER BY rowid", (run_name, workflow))
        return [_task(row) for row in rows]

    # ------------------------------------------------------------------ tags

    def get_tag(self, tag: str) -> Optional[StoredTag]:
        row = self._db.execute("SELECT tag, run_name, created_at, owner FROM tags WHERE tag = ?", (tag,)).fetchone()
        return StoredTag(*row) if row else None

    def set_tag(self, tag: str, run_name: str, created_at: float, owner: str = "") -> None:
        self._db.execute("INSERT OR REPLACE INTO tags (tag, run_name, created_at, owner) VALUES (?, ?, ?, ?)",
                         (tag, run_name, created_at, owner))

    def delete_tag(self, tag: str) -> bool:
        return self._db.execute("DELETE FROM tags WHERE tag = ?", (tag,)).rowcount > 0

    def list_tags(self) -> list[StoredTag]:
        return [StoredTag(*row) for row in
                self._db.execute("SELECT tag, run_name, created_at, owner FROM tags ORDER BY tag")]

    def tags_of(self, run_name: str) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT tag FROM tags WHERE run_name = ? ORDER BY tag",
                                                   (run_name,))]

    def tasks_in_status(self, status: Status) -> list[TaskRecord]:
        return [_task(row) for row in self._db.execute("SELECT * FROM tasks WHERE status = ?", (status.value,))]

    def count_unfinished(self, run_name: str) -> tuple[int, int]:
        row = self._db.execute("SELECT unfinished, running FROM runs WHERE run_name = ?", (run_name,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def adjust_run_counters(self, run_name: str, *, unfinished: int = 0, running: int = 0) -> None:
        self._db.execute("UPDATE runs SET unfinished = unfinished + ?, running = running + ? WHERE run_name = ?",
                         (unfinished, running, run_name))

    # ------------------------------------------------------------------ queues and workers

    def add_queue(self, queue: str, needs: dict[str, Any]) -> int:
        self._db.execute("INSERT OR IGNORE INTO queues (queue, needs) VALUES (?, ?)", (queue, json.dumps(needs)))
        return int(self._db.execute("SELECT queued FROM queues WHERE queue = ?", (queue,)).fetchone()[0])

    def adjust_queue(self, queue: str, queued: int) -> None:
        self._db.execute("UPDATE queues SET queued = queued + ? WHERE queue = ?", (queued, queue))

    def open_queues(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute("SELECT queue, needs FROM queues WHERE queued > 0 ORDER BY queue")
        return [(row[0], json.loads(row[1])) for row in rows]

    def save_worker(self, worker_id: str, report: dict[str, Any], seen_at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)", (worker_id, json.dumps(report), seen_at))

    def delete_worker(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self) -> list[tuple[dict[str, Any], float]]:
        rows = self._db.execute("SELECT report, seen_at FROM workers ORDER BY worker_id")
        return [(json.loads(row[0]), row[1]) for row in rows]

    def tasks_held_by(self, worker_id: str) -> list[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE worker_id = ? AND status IN (?, ?, ?)",
                                (worker_id, Status.QUEUED.value, Status.PULLING.value, Status.RUNNING.value))
        return [_task(row) for row in rows]

    # ------------------------------------------------------------------ secrets

    def set_secret(self, name: str, value: str, updated_at: float, owner: str = "") -> None:
        self._db.execute("INSERT OR REPLACE INTO secrets (owner, name, value, updated_at) VALUES (?, ?, ?, ?)",
                         (owner, name, value, updated_at))

    def delete_secret(self, name: str, owner: str = "") -> bool:
        return self._db.execute("DELETE FROM secrets WHERE owner = ? AND name = ?", (owner, name)).rowcount > 0

    def secrets(self, owners: Optional[tuple[str, ...]] = None) -> list[StoredSecret]:
        query = "SELECT name, value, updated_at, owner FROM secrets"
        if owners is not None:  # a claim reads the secrets of one run's owner and the team's, not everyone's
            query += f" WHERE owner IN ({', '.join('?' * len(owners))})"
        return [StoredSecret(*row) for row in self._db.execute(query + " ORDER BY owner, name", owners or ())]

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, role: str, added_at: float) -> None:
        self._db.execute("INSERT INTO users VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role",
                         (name, role, added_at))

    def remove_user(self, name: str) -> bool:
        return self._db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def get_user(self, name: str) -> Optional[StoredUser]:
        row = self._db.execute("SELECT name, role, added_at FROM users WHERE name = ?", (name,)).fetchone()
        return StoredUser(*row) if row else None

    def users(self) -> list[StoredUser]:
        return [StoredUser(*row) for row in self._db.execute("SELECT name, role, added_at FROM users ORDER BY name")]

    # ------------------------------------------------------------------ outbox

    def add_outbox(self, queue: str, actor: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO outbox (queue, actor, payload) VALUES (?, ?, ?)", (queue, actor, payload))

    def outbox(self) -> list[tuple[int, str, str, bytes]]:
        return [tuple(row) for row in self._db.execute("SELECT id, queue, actor, payload FROM outbox ORDER BY id")]

    def remove_outbox(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    """INSERT, or UPDATE in place (keeping the row's id, so listing order stays creation order)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _run(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    del data["unfinished"], data["running"]
    data["status"] = Status(data["status"])
    data["stop_requested"] = bool(data["stop_requested"])
    data["abort"] = bool(data["abort"])
    return RunRecord(**data)


def _task(row: sqlite3.Row) -> TaskRecord:
    data = {k: row[k] for k in _TASK_COLUMNS}
    for column in _JSON_TASK_COLUMNS:
        data[column] = json.loads(data[column])
    data["status"] = Status(data["status"])
    data["kind"] = Kind(data["kind"])
    data["spec"] = from_dict(SPEC_TYPES[data["kind"]], data["spec"])  # rows of older versions load too
    return TaskRecord(**data)
