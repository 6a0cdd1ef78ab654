"""Following a run: its logs and status changes, live, until it ends."""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import Optional

from rich.console import Console

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


class LogPrinter:
    """Prints log lines once each, marked with their job, optionally for one job only."""

    def __init__(self, storage: Storage, run_name: str, job: Optional[str] = None) -> None:
        self._storage = storage
        self._run_name = run_name
        self._job = job
        self.seen: dict[str, int] = {}  # task -> chunks printed

    def catch_up(self) -> None:
        """Print what storage holds that was not printed yet."""
        def counted(chunks: Iterator[LogChunk]) -> Iterator[LogChunk]:
            for chunk in chunks:
                yield chunk
                self.seen[chunk.task_id] = chunk.number + 1

        streams = stored_chunks(self._storage, self._run_name, self._job or "", skip=self.seen)
        for _ts, task_id, line in merged_lines({task: counted(c) for task, c in streams.items()}):
            self._print(task_id, line)

    def live(self, chunk: LogChunk) -> None:
        if self._job and chunk.task_id != self._job:
            return
        expected = self.seen.get(chunk.task_id, 0)
        if chunk.number < expected:
            return
        if chunk.number > expected:  # missed some: storage has them
            self.catch_up()
            return
        for _ts, line in chunk.lines:
            self._print(chunk.task_id, line)
        self.seen[chunk.task_id] = expected + 1

    def _print(self, task_id: str, line: str) -> None:
        sys.stdout.write(f"{task_id} | {line}\n")
        sys.stdout.flush()


def follow(rpc: RpcClient, broker_url: str, storage: Storage, run_name: str, *, job: Optional[str] = None,
           show_status: bool = True, err: Optional[Console] = None) -> RunView:
    """Print logs (and status changes) of ``run_name`` until it ends; return the final run view."""
    err = err or Console(stderr=True)
    subscription = Subscription(broker_url, run_name)
    printer = LogPrinter(storage, run_name, job)
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
        if job.reason and job.status in (Status.FAILED, Status.STOPPED):
            detail += f": {job.reason}"
        where = endpoint(job)
        if where:
            detail = " at " + where
        err.print(f"[dim]{job.job_id} {job.status.value}{detail}[/]", highlight=False)
