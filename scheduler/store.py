"""Where the scheduler keeps runs and tasks: an interface, and SQLite behind it.

All changes happen inside :meth:`StateStore.transaction`; messages to send after a change
are written to an outbox in the same transaction, so a crash never loses one (they are
sent, maybe twice, and every handler is idempotent).
"""
from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from dstack.errors import DstackError
from dstack.scheduler.model import Kind, RunRecord, Status, TaskRecord


class StateStore(abc.ABC):
    """The scheduler's state. Methods other than ``transaction`` must be called inside one."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager: ...

    @abc.abstractmethod
    def get_run(self, run_name: str) -> Optional[RunRecord]: ...

    @abc.abstractmethod
    def list_runs(self, limit: int) -> List[RunRecord]: ...

    @abc.abstractmethod
    def save_run(self, run: RunRecord) -> None: ...

    @abc.abstractmethod
    def get_task(self, run_name: str, task_id: str) -> Optional[TaskRecord]: ...

    @abc.abstractmethod
    def tasks_of(self, run_name: str) -> List[TaskRecord]: ...

    @abc.abstractmethod
    def save_task(self, task: TaskRecord) -> None: ...

    @abc.abstractmethod
    def dependents_of(self, run_name: str, task_id: str) -> List[Tuple[TaskRecord, str]]:
        """``(task, kind)`` for every task waiting on ``task_id``; kind is ``dep`` or ``master``."""

    @abc.abstractmethod
    def upstream_of(self, run_name: str, task_id: str) -> List[Tuple[TaskRecord, str]]:
        """``(task, kind)`` for every task ``task_id`` waits on."""

    @abc.abstractmethod
    def add_dependency(self, run_name: str, upstream: str, downstream: str) -> None:
        """Make ``downstream`` wait for ``upstream`` to be done (one more dependency left)."""

    @abc.abstractmethod
    def decrement_deps(self, run_name: str, task_id: str) -> int:
        """One dependency of the task is done; returns how many are left."""

    @abc.abstractmethod
    def jobs_of(self, run_name: str, workflow: str) -> List[TaskRecord]:
        """The jobs a workflow's provider created."""

    @abc.abstractmethod
    def get_tag(self, tag: str) -> Optional[str]:
        """The run a tag names."""

    @abc.abstractmethod
    def set_tag(self, tag: str, run_name: str, created_at: float) -> None: ...

    @abc.abstractmethod
    def delete_tag(self, tag: str) -> bool: ...

    @abc.abstractmethod
    def list_tags(self) -> List[Tuple[str, str, float]]: ...

    @abc.abstractmethod
    def tasks_in_status(self, status: Status) -> List[TaskRecord]:
        """Every task of every run in ``status``."""

    @abc.abstractmethod
    def count_unfinished(self, run_name: str) -> Tuple[int, int]:
        """``(unfinished tasks, running tasks)`` of a run."""

    @abc.abstractmethod
    def add_queue(self, queue: str, needs: Dict[str, Any]) -> int:
        """Make ``queue`` (of tasks needing ``needs``) known; returns how many tasks are queued in it."""

    @abc.abstractmethod
    def open_queues(self) -> List[Tuple[str, Dict[str, Any]]]:
        """``(queue, needs)`` of every task queue that holds queued tasks."""

    @abc.abstractmethod
    def save_worker(self, worker_id: str, report: Dict[str, Any], seen_at: float) -> None:
        """Keep a worker's latest report, received at ``seen_at``."""

    @abc.abstractmethod
    def delete_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    def workers(self) -> List[Tuple[Dict[str, Any], float]]:
        """``(latest report, seen_at)`` of every worker heard from and not gone, by worker id."""

    @abc.abstractmethod
    def tasks_held_by(self, worker_id: str) -> List[TaskRecord]:
        """The unfinished tasks a worker claimed."""

    @abc.abstractmethod
    def set_secret(self, name: str, value: str, updated_at: float) -> None: ...

    @abc.abstractmethod
    def delete_secret(self, name: str) -> bool: ...

    @abc.abstractmethod
    def secrets(self) -> List[Tuple[str, str, float]]:
        """``(name, value, updated_at)`` of every secret, by name."""

    @abc.abstractmethod
    def add_outbox(self, queue: str, actor: str, payload: bytes) -> None: ...

    @abc.abstractmethod
    def outbox(self) -> List[Tuple[int, str, str, bytes]]: ...

    @abc.abstractmethod
    def remove_outbox(self, item_id: int) -> None: ...


#: Version of the tables below; a database of another version is refused, not misread.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_name TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL,
    submitted_at REAL NOT NULL, snapshot_id TEXT NOT NULL, project TEXT NOT NULL,
    reason TEXT NOT NULL, stop_requested INTEGER NOT NULL, abort INTEGER NOT NULL,
    started_at REAL, finished_at REAL,
    unfinished INTEGER NOT NULL DEFAULT 0, running INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (submitted_at);
CREATE TABLE IF NOT EXISTS tasks (
    run_name TEXT NOT NULL, task_id TEXT NOT NULL, kind TEXT NOT NULL, workflow TEXT NOT NULL,
    status TEXT NOT NULL, spec TEXT NOT NULL, attempt INTEGER NOT NULL, depends_on TEXT NOT NULL,
    deps_left INTEGER NOT NULL, master TEXT, worker_id TEXT, hostname TEXT, ports TEXT NOT NULL,
    exit_code INTEGER, reason TEXT NOT NULL, submitted_at REAL NOT NULL, started_at REAL,
    finished_at REAL, queue TEXT NOT NULL DEFAULT 'dstack.tasks.cpu', PRIMARY KEY (run_name, task_id));
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_by_worker ON tasks (worker_id);
CREATE TABLE IF NOT EXISTS edges (
    run_name TEXT NOT NULL, upstream TEXT NOT NULL, downstream TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (run_name, upstream, downstream, kind));
CREATE INDEX IF NOT EXISTS edges_by_downstream ON edges (run_name, downstream);
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT PRIMARY KEY, run_name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    queue TEXT PRIMARY KEY, needs TEXT NOT NULL, queued INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, report TEXT NOT NULL, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, actor TEXT NOT NULL, payload BLOB NOT NULL);
"""

#: Version 2 had one task queue, and no record of queues and workers.
_FROM_VERSION_2 = "BEGIN;" + _SCHEMA + f"""
ALTER TABLE tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'dstack.tasks.cpu';
INSERT INTO queues SELECT 'dstack.tasks.cpu', '{{}}', count(*) FROM tasks WHERE status = 'queued';
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_RUN_COLUMNS = ("run_name", "workflow", "status", "submitted_at", "snapshot_id", "project", "reason",
                "stop_requested", "abort", "started_at", "finished_at")
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
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        if has_tables and version == 2:
            self._db.executescript(_FROM_VERSION_2)
            version = SCHEMA_VERSION
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

    def list_runs(self, limit: int) -> List[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY submitted_at DESC LIMIT ?", (limit,))
        return [_run(row) for row in rows]

    def save_run(self, run: RunRecord) -> None:
        values = [getattr(run, c) for c in _RUN_COLUMNS]
        values[2] = run.status.value
        self._db.execute(_upsert("runs", _RUN_COLUMNS, ("run_name",)), values)

    # ------------------------------------------------------------------ tasks

    def get_task(self, run_name: str, task_id: str) -> Optional[TaskRecord]:
        row = self._db.execute("SELECT * FROM tasks WHERE run_name = ? AND task_id = ?",
                               (run_name, task_id)).fetchone()
        return _task(row) if row else None

    def tasks_of(self, run_name: str) -> List[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE run_name = ? ORDER BY rowid", (run_name,))
        return [_task(row) for row in rows]

    def save_task(self, task: TaskRecord) -> None:
        row = self._db.execute("SELECT status, queue FROM tasks WHERE run_name = ? AND task_id = ?",
                               (task.run_name, task.task_id)).fetchone()
        new = row is None
        values: List[Any] = []
        for column in _TASK_COLUMNS:
            value = getattr(task, column)
            values.append(json.dumps(value) if column in _JSON_TASK_COLUMNS else
                          value.value if isinstance(value, (Status, Kind)) else value)
        self._db.execute(_upsert("tasks", _TASK_COLUMNS, ("run_name", "task_id")), values)
        # the run's counters follow each change: reading them never scans the run's tasks
        before = None if new else Status(row["status"])
        unfinished = _counts(task.status, lambda s: not s.finished) - _counts(before, lambda s: not s.finished)
        running = _counts(task.status, lambda s: s is Status.RUNNING) - _counts(before, lambda s: s is Status.RUNNING)
        if unfinished or running:
            self._db.execute("UPDATE runs SET unfinished = unfinished + ?, running = running + ? WHERE run_name = ?",
                             (unfinished, running, task.run_name))
        # and so do the queues' counters: listing the queues that hold tasks never scans tasks
        was_queued = row is not None and row["status"] == Status.QUEUED.value
        is_queued = task.status is Status.QUEUED
        if was_queued and (not is_queued or row["queue"] != task.queue):
            self._db.execute("UPDATE queues SET queued = queued - 1 WHERE queue = ?", (row["queue"],))
        if is_queued and not (was_queued and row["queue"] == task.queue):
            self._db.execute("UPDATE queues SET queued = queued + 1 WHERE queue = ?", (task.queue,))
        if new:
            edges = [(task.run_name, up, task.task_id, "dep") for up in task.depends_on]
            if task.master:
                edges.append((task.run_name, task.master, task.task_id, "master"))
            self._db.executemany("INSERT OR IGNORE INTO edges VALUES (?, ?, ?, ?)", edges)

    def dependents_of(self, run_name: str, task_id: str) -> List[Tuple[TaskRecord, str]]:
        rows = self._db.execute(
            "SELECT t.*, e.kind AS edge FROM edges e JOIN tasks t ON t.run_name = e.run_name "
            "AND t.task_id = e.downstream WHERE e.run_name = ? AND e.upstream = ?", (run_name, task_id))
        return [(_task(row), row["edge"]) for row in rows]

    def upstream_of(self, run_name: str, task_id: str) -> List[Tuple[TaskRecord, str]]:
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

    def jobs_of(self, run_name: str, workflow: str) -> List[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE run_name = ? AND workflow = ? AND kind = 'job' "
                                "ORDER BY rowid", (run_name, workflow))
        return [_task(row) for row in rows]

    # ------------------------------------------------------------------ tags

    def get_tag(self, tag: str) -> Optional[str]:
        row = self._db.execute("SELECT run_name FROM tags WHERE tag = ?", (tag,)).fetchone()
        return row[0] if row else None

    def set_tag(self, tag: str, run_name: str, created_at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (tag, run_name, created_at))

    def delete_tag(self, tag: str) -> bool:
        return self._db.execute("DELETE FROM tags WHERE tag = ?", (tag,)).rowcount > 0

    def list_tags(self) -> List[Tuple[str, str, float]]:
        return [tuple(row) for row in self._db.execute("SELECT tag, run_name, created_at FROM tags ORDER BY tag")]

    def tasks_in_status(self, status: Status) -> List[TaskRecord]:
        return [_task(row) for row in self._db.execute("SELECT * FROM tasks WHERE status = ?", (status.value,))]

    def count_unfinished(self, run_name: str) -> Tuple[int, int]:
        row = self._db.execute("SELECT unfinished, running FROM runs WHERE run_name = ?", (run_name,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # ------------------------------------------------------------------ queues and workers

    def add_queue(self, queue: str, needs: Dict[str, Any]) -> int:
        self._db.execute("INSERT OR IGNORE INTO queues (queue, needs) VALUES (?, ?)", (queue, json.dumps(needs)))
        return int(self._db.execute("SELECT queued FROM queues WHERE queue = ?", (queue,)).fetchone()[0])

    def open_queues(self) -> List[Tuple[str, Dict[str, Any]]]:
        rows = self._db.execute("SELECT queue, needs FROM queues WHERE queued > 0 ORDER BY queue")
        return [(row[0], json.loads(row[1])) for row in rows]

    def save_worker(self, worker_id: str, report: Dict[str, Any], seen_at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)", (worker_id, json.dumps(report), seen_at))

    def delete_worker(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self) -> List[Tuple[Dict[str, Any], float]]:
        rows = self._db.execute("SELECT report, seen_at FROM workers ORDER BY worker_id")
        return [(json.loads(row[0]), row[1]) for row in rows]

    def tasks_held_by(self, worker_id: str) -> List[TaskRecord]:
        rows = self._db.execute("SELECT * FROM tasks WHERE worker_id = ? AND status IN (?, ?)",
                                (worker_id, Status.QUEUED.value, Status.RUNNING.value))
        return [_task(row) for row in rows]

    # ------------------------------------------------------------------ secrets

    def set_secret(self, name: str, value: str, updated_at: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?, ?)", (name, value, updated_at))

    def delete_secret(self, name: str) -> bool:
        return self._db.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount > 0

    def secrets(self) -> List[Tuple[str, str, float]]:
        return [tuple(row) for row in self._db.execute("SELECT name, value, updated_at FROM secrets ORDER BY name")]

    # ------------------------------------------------------------------ outbox

    def add_outbox(self, queue: str, actor: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO outbox (queue, actor, payload) VALUES (?, ?, ?)", (queue, actor, payload))

    def outbox(self) -> List[Tuple[int, str, str, bytes]]:
        return [tuple(row) for row in self._db.execute("SELECT id, queue, actor, payload FROM outbox ORDER BY id")]

    def remove_outbox(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def _upsert(table: str, columns: Tuple[str, ...], key: Tuple[str, ...]) -> str:
    """INSERT, or UPDATE in place (keeping the row's id, so listing order stays creation order)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _counts(status: Optional[Status], test: Callable[[Status], bool]) -> int:
    return int(status is not None and test(status))


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
    return TaskRecord(**data)
