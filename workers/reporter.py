"""The worker's reports to the scheduler: what it has and what runs on it, when it starts, every
heartbeat interval and soon after each change. Each answer names the task queues that hold
tasks, which is how the worker learns of queues it has never taken from, and the tasks it
holds that are not its own anymore."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from dstack.errors import DstackError
from dstack.messages import WorkerLeaving, WorkerReport
from dstack.rpc import RpcClient
from dstack.views import ReportAnswer

log = logging.getLogger(__name__)

#: Seconds between two reports made because something changed.
MIN_GAP = 1.0


class Reporter:
    """Sends :class:`WorkerReport` to the scheduler from its own thread.

    Args:
        url: the broker.
        report: builds the current report.
        on_answer: gets each answer (see :class:`~dstack.messages.WorkerReport`) and the
            ``time.monotonic()`` at which its report was sent.
        interval: seconds between two reports when nothing changes.
        stopping: set to stop.
    """

    def __init__(self, url: str, report: Callable[[], WorkerReport],
                 on_answer: Callable[[ReportAnswer, float], None], interval: float,
                 stopping: threading.Event) -> None:
        self._url, self._report, self._on_answer = url, report, on_answer
        self._interval, self._stopping = interval, stopping
        self._changed = threading.Event()
        self._rpc: Optional[RpcClient] = None
        #: one call at a time on the client (a pika connection is not thread-safe): the reporting thread's,
        #: the worker's first report and its leaving
        self._calling = threading.Lock()

    def changed(self) -> None:
        """Report soon. Safe to call from any thread."""
        self._changed.set()

    def report(self) -> bool:
        """Report now; returns whether the scheduler answered."""
        sent_at = time.monotonic()
        answer = self._call(self._report())
        if answer is None:
            return False
        self._on_answer(answer, sent_at)
        return True

    def run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(self._interval)
            self._changed.clear()
            if self._stopping.is_set():
                break
            self.report()
            self._stopping.wait(MIN_GAP)

    def leave(self, worker_id: str) -> None:
        """Tell the scheduler this worker stops (best effort: otherwise its reports just stop)."""
        self._call(WorkerLeaving(worker_id=worker_id))
        with self._calling:
            if self._rpc is not None:
                self._rpc.close()
                self._rpc = None

    def _call(self, request: Any) -> Optional[Any]:
        """The scheduler's answer, or ``None``; the next report is the next try (the client makes
        a new connection by itself when the broker dropped its own)."""
        try:
            with self._calling:
                if self._rpc is None:
                    self._rpc = RpcClient(self._url)
                return self._rpc.call(request)
        except DstackError as e:
            log.warning("cannot report to the scheduler (%s); trying again later", e)
            return None
