"""Following a run: its logs and status changes, live, until it ends."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Container, Iterator
from typing import Optional

from rich.console import Console
from rich.markup import escape

from dstack.broker import Backoff, retry
from dstack.cli.render import endpoint
from dstack.errors import BrokerUnavailable, ServiceUnavailable
from dstack.live import Subscription
from dstack.logs import LogChunk, merged_lines, stored_chunks
from dstack.messages import GetRuns, from_dict, unpack
from dstack.names import LOGS_EXCHANGE
from dstack.rpc import RpcClient
from dstack.states import FINISHED, Status
from dstack.storage import Storage
from dstack.views import JobView, RunUpdate, RunView

#: Seconds between two reads of the run's status while following, besides live updates.
REFRESH_INTERVAL = 10.0
#: Tries of a refresh while the scheduler is away (waits of 0.5 s doubling to 2 s: about 15 s in all).
FOLLOW_ATTEMPTS = 10


class WorkflowTasks(Container[str]):
    """The tasks of one workflow of a run (its provider and its jobs, also those not created yet): their ids are
    ``WORKFLOW.SUFFIX`` (:func:`dstack.names.job_id`, :func:`dstack.names.provider_task_id`)."""

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and task_id.split(".", 1)[0] == self.workflow


class LogPrinter:
    """Prints log lines once each, marked with their job: of the tasks in ``tasks`` only (``None``: every task),
    and of those only the lines logged at or after ``since`` (a unix time; ``None``: all)."""

    def __init__(self, storage: Storage, run_name: str, tasks: Optional[Container[str]] = None,
                 since: Optional[float] = None) -> None:
        self._storage = storage
        self._run_name = run_name
        self._tasks = tasks
        self._since = since
        self.seen: dict[str, int] = {}  # task -> chunks read (printed, or older than since)
        self.printed = 0

    def catch_up(self) -> None:
        """Print what storage holds that was not printed yet."""
        def counted(chunks: Iterator[LogChunk]) -> Iterator[LogChunk]:
            for chunk in chunks:
                yield chunk
                self.seen[chunk.task_id] = chunk.number + 1

        one = next(iter(self._tasks)) if isinstance(self._tasks, (set, frozenset)) and len(self._tasks) == 1 else ""
        streams = stored_chunks(self._storage, self._run_name, one, skip=self.seen)
        selected = {task: counted(c) for task, c in streams.items() if self._selects(task)}
        for ts, task_id, line in merged_lines(selected):
            self._print(task_id, ts, line)

    def live(self, chunk: LogChunk) -> None:
        if not self._selects(chunk.task_id):
            return
        expected = self.seen.get(chunk.task_id, 0)
        if chunk.number < expected:
            return
        if chunk.number > expected:  # missed some: storage has them
            self.catch_up()
            return
        for ts, line in chunk.lines:
            self._print(chunk.task_id, ts, line)
        self.seen[chunk.task_id] = expected + 1

    def _selects(self, task_id: str) -> bool:
        return self._tasks is None or task_id in self._tasks

    def _print(self, task_id: str, ts: float, line: str) -> None:
        if self._since is not None and ts < self._since:
            return
        sys.stdout.write(f"{task_id} | {line}\n")
        sys.stdout.flush()
        self.printed += 1


def follow(rpc: RpcClient, broker_url: str, storage: Storage, run_name: str, *,
           tasks: Optional[Container[str]] = None, since: Optional[float] = None,
           show_status: bool = True, err: Optional[Console] = None, printer: Optional[LogPrinter] = None) -> RunView:
    """Print logs (and status changes) of ``run_name`` until it ends; return the final run view. ``tasks`` and
    ``since`` select the lines as in :class:`LogPrinter`; a ``printer`` given (following again) is used instead,
    and prints nothing it printed before."""
    err = err or Console(stderr=True)
    owner = rpc.call(GetRuns(run_name=run_name))[0].owner  # live notifications are routed by it
    subscription = Subscription(broker_url, owner, run_name)
    printer = printer or LogPrinter(storage, run_name, tasks, since)
    statuses: dict[str, str] = {}
    try:
        run = _refresh(rpc, run_name, statuses, err if show_status else None)
        printer.catch_up()
        next_refresh = time.monotonic() + REFRESH_INTERVAL
        while run.status not in FINISHED:
            try:
                item = subscription.get(timeout=1.0)
            except BrokerUnavailable:
                subscription.reconnect()  # waits for the broker
                item, next_refresh = None, 0.0
            if item is not None:
                exchange, body = item
                if exchange == LOGS_EXCHANGE:
                    printer.live(LogChunk.decode(body))
                else:
                    update = from_dict(RunUpdate, unpack(body))
                    _show_changes(update.jobs, statuses, err if show_status else None)
                    run.status = update.run.status
            # also while notifications keep coming: a missed one is caught up, and the request
            # connection stays in use
            if run.status in FINISHED or time.monotonic() >= next_refresh:
                run = _refresh_patiently(rpc, run_name, statuses, err if show_status else None)
                next_refresh = time.monotonic() + REFRESH_INTERVAL
        printer.catch_up()  # the last chunks are stored before the end is announced
        return run
    finally:
        subscription.close()


def _refresh_patiently(rpc: RpcClient, run_name: str, statuses: dict[str, str],
                       err: Optional[Console]) -> RunView:
    """:func:`_refresh`, asking again for a while when the broker or the scheduler is away: after a
    restart of the broker, a follower may be back before the scheduler's request server is."""
    run = retry(lambda: _refresh(rpc, run_name, statuses, err), what="the scheduler is not answering yet",
                errors=(ServiceUnavailable,), backoff=Backoff(first=0.5, cap=2.0), attempts=FOLLOW_ATTEMPTS,
                level=logging.DEBUG)
    assert run is not None  # no stopping event: retry returns the run or raises
    return run


def _refresh(rpc: RpcClient, run_name: str, statuses: dict[str, str], err: Optional[Console]) -> RunView:
    run: RunView = rpc.call(GetRuns(run_name=run_name))[0]
    _show_changes(run.jobs, statuses, err)
    return run


def _show_changes(jobs: list[JobView], statuses: dict[str, str], err: Optional[Console]) -> None:
    for job in jobs:
        seen = f"{job.status.value}: {job.reason or ''}"  # a queued job can start or stop waiting
        if statuses.get(job.job_id) == seen:
            continue
        statuses[job.job_id] = seen
        if err is None:
            continue
        detail = ""
        if job.status is Status.QUEUED and job.reason:
            detail = f": {job.reason}"
        if job.status in (Status.DONE, Status.FAILED) and job.exit_code is not None:
            detail = f" (exit code {job.exit_code})"
        if job.cached_from:  # job caching: nothing ran
            detail = f" (cached from {job.cached_from})"
        if job.reason and job.status in (Status.FAILED, Status.STOPPED):
            detail += f": {job.reason}"
        where = endpoint(job)
        if where:
            detail = " at " + where
        err.print(f"[dim]{job.job_id} {job.status.value}{escape(detail)}[/]", highlight=False)
