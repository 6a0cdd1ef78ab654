"""Task logs: written by workers as numbered chunks in storage, read and followed by the CLI.

A chunk is stored before it is announced live, so a follower that subscribes first and then
reads storage misses nothing; chunks seen twice are recognised by their number.
"""
from __future__ import annotations

import codecs
import heapq
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Callable, Optional

from dstack import defaults
from dstack.errors import MessageError
from dstack.messages import pack, unpack
from dstack.names import LOGS_EXCHANGE, log_chunk_key, log_prefix
from dstack.storage import Storage
from dstack.storage.retry import with_retries


@dataclass(frozen=True)
class LogChunk:
    """Consecutive lines of one task; ``number`` orders the chunks of a task from 0.

    The same bytes are stored (``runs/RUN/logs/TASK/NNNNNNNNNN.msgpack``) and published live on
    the ``dstack.logs`` exchange: a msgpack map ``{"task": TASK, "chunk": NUMBER, "lines":
    [[UNIX_TIME, TEXT], ...]}``, written by :meth:`encode` and read by :meth:`decode` only.
    """

    task_id: str
    number: int
    #: ``(unix time, text)`` per line, the text without its line break
    lines: list[tuple[float, str]]

    def encode(self) -> bytes:
        return pack({"task": self.task_id, "chunk": self.number, "lines": self.lines})

    @classmethod
    def decode(cls, data: bytes) -> LogChunk:
        """Raises: MessageError: ``data`` is no log chunk."""
        raw = unpack(data)
        try:
            task_id, number = raw["task"], raw["chunk"]
            if not isinstance(task_id, str) or not isinstance(number, int):
                raise TypeError("task must be a string and chunk a number")
            return cls(task_id, number, [(float(t), str(s)) for t, s in raw["lines"]])
        except (KeyError, TypeError, ValueError) as e:
            raise MessageError(f"not a log chunk: {e!r}") from None


class LogWriter:
    """Collects a task's output lines and ships them as chunks: to storage, then live.

    Call :meth:`feed` with raw output, :meth:`flush_if_due` regularly, :meth:`close` at the end.
    """

    def __init__(self, storage: Storage, run_name: str, task_id: str,
                 announce: Optional[Callable[[str, str, bytes], None]] = None, hide: Iterable[str] = ()) -> None:
        self._storage = storage
        # secret values, longest first (one may contain another); each shown as ***
        self._hide = sorted((value for value in hide if value), key=len, reverse=True)
        self._run_name = run_name
        self._task_id = task_id
        self._announce = announce
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._lines: list[tuple[float, str]] = []
        self._bytes = 0
        # numbering goes on after chunks stored earlier (e.g. by a worker that died)
        self._next_chunk = sum(1 for _ in storage.list(log_prefix(run_name, task_id)))
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        """Add raw output; complete lines are buffered, a trailing partial line waits."""
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        self.add_lines(complete)

    def add_lines(self, lines: Iterable[str]) -> None:
        now = time.time()
        with self._lock:
            for line in lines:
                for value in self._hide:
                    line = line.replace(value, "***")
                self._lines.append((now, line.rstrip("\r")))
                self._bytes += len(line)
        if self._bytes >= defaults.LOG_CHUNK_BYTES:
            self.flush()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._last_flush >= defaults.LOG_FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._last_flush = time.monotonic()
            if not self._lines:
                return
            chunk = LogChunk(self._task_id, self._next_chunk, self._lines)
            body = chunk.encode()
            # a failed write keeps the lines for the next flush: nothing is lost, nothing skipped
            self._storage.put_bytes(log_chunk_key(self._run_name, self._task_id, chunk.number), body)
            self._lines, self._bytes = [], 0
            self._next_chunk += 1
        if self._announce:
            self._announce(LOGS_EXCHANGE, self._run_name, body)

    def close(self) -> None:
        """Flush everything, the last partial line included."""
        tail = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if tail:
            self.add_lines([tail])
        with_retries(self.flush, f"storing the logs of {self._task_id}")

    def tail(self, count: int) -> list[str]:
        """The last ``count`` lines written (from storage and buffer), for failure reasons."""
        with self._lock:
            buffered = [text for _, text in self._lines]
        lines: list[str] = []
        for number in range(max(0, self._next_chunk - 3), self._next_chunk):
            lines += [text for _, text in LogChunk.decode(self._storage.get_bytes(
                log_chunk_key(self._run_name, self._task_id, number))).lines]
        return (lines + buffered)[-count:]


def stored_chunks(storage: Storage, run_name: str, task_id: str = "",
                  skip: Optional[dict[str, int]] = None) -> dict[str, Iterator[LogChunk]]:
    """The stored chunks of a run (or of one task): per task, a lazy iterator in chunk order.

    ``skip`` maps a task to the number of its chunks already seen; those are not read again.
    """
    skip = skip or {}
    keys: dict[str, list[str]] = {}
    for info in storage.list(log_prefix(run_name, task_id)):
        task, name = info.key.rsplit("/", 2)[-2:]
        if int(name.split(".")[0]) >= skip.get(task, 0):
            keys.setdefault(task, []).append(info.key)
    storage.will_read(key for task_keys in keys.values() for key in task_keys)
    return {task: (LogChunk.decode(storage.get_bytes(key)) for key in task_keys)
            for task, task_keys in keys.items()}


def merged_lines(streams: dict[str, Iterator[LogChunk]]) -> Iterator[tuple[float, str, str]]:
    """``(time, task_id, line)`` across tasks in time order, each task's lines in their order.

    Reads lazily: memory holds about one chunk per task, whatever the size of the logs.
    """

    def lines_of(chunks: Iterator[LogChunk]) -> Iterator[tuple[float, str, str]]:
        for chunk in chunks:
            for ts, text in chunk.lines:
                yield ts, chunk.task_id, text

    return heapq.merge(*(lines_of(c) for c in streams.values()), key=lambda item: item[0])
