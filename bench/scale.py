"""Throughput at scale (issue 14, item 8), the opt-in cases of ``bench_noop``:

* ``noop-10000``: one run of 10,000 independent no-op jobs (``dstack run noop-10000 -d``);
* ``runs-2000``: 2,000 one-job runs, submitted by 16 CLI processes at once (``dstack run single-1 -d``).

Both on 4 workers (the benchmark starts 3 more next to its own before these cases). ``--scale``
shrinks them (``--scale 0.1``: 1,000 jobs, 200 runs) to check that they work. While a case runs, the
benchmark counts the finished tasks (jobs and providers) in the scheduler's SQLite database, read
only, and at every thousand of them (scaled too: ``block``) reads the scheduler's CPU time
(``/proc/PID/stat``, user + system) and the services' RSS. It reports tasks and jobs per second,
the scheduler's CPU seconds per 1,000 finished tasks in each block (each task is a claim, a
TaskStarted and a TaskFinished event to the scheduler; flat from the first block to the last is the
goal; the first also pays for the submissions, so the last is compared with the median block) and
the peak RSS (``VmHWM``) of the scheduler and of every worker.
"""
from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.procfs import proc_status, process_cpu_s

FINISHED = ("done", "failed", "stopped")


@dataclass(frozen=True)
class ScaleCase:
    """``runs`` runs of ``jobs_per_run`` independent no-op jobs, submitted by ``clis`` CLIs at once."""

    name: str
    runs: int
    jobs_per_run: int
    clis: int
    workflow: str  # the workflow each `dstack run -d` submits

    def sized(self, scale: float) -> tuple[int, int]:
        """``(runs, jobs per run)`` at ``scale`` (at least one of each)."""
        if self.runs > 1:
            return max(1, round(self.runs * scale)), self.jobs_per_run
        return 1, max(1, round(self.jobs_per_run * scale))

    def block(self, scale: float) -> int:
        """Finished tasks between two CPU readings: 1,000, scaled (at least 50)."""
        return max(50, round(1000 * min(scale, 1.0)))


SCALE_CASES = [ScaleCase("noop-10000", 1, 10000, 1, "noop-10000"),
               ScaleCase("runs-2000", 2000, 1, 16, "single-1")]
#: Workers the scale cases run on.
SCALE_WORKERS = 4


def noop_workflow(name: str, jobs: int, image: str) -> dict[str, Any]:
    """A graph workflow of ``jobs`` independent no-op jobs."""
    return {"name": name, "jobs": [{"commands": ["true"], "image": image} for _ in range(jobs)]}


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts as equal as can be (the first ones get the remainder)."""
    parts = max(1, min(parts, total)) if total else 1
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def per_thousand(cpu_readings: list[tuple[int, float]], min_tasks: int = 1) -> list[dict[str, float]]:
    """Scheduler CPU seconds per 1,000 finished tasks in each block between consecutive readings
    ``(finished tasks, CPU s)``; a block of fewer than ``min_tasks`` tasks (the few after the last
    mark, say) is merged into the one before it, so that it does not read as a spike."""
    points: list[tuple[int, float]] = []
    for n, c in cpu_readings:
        if points and n - points[-1][0] < min_tasks and len(points) > 1:
            points[-1] = (n, c)  # extend the previous block to this reading
        elif not points or n > points[-1][0]:
            points.append((n, c))
    return [{"tasks_from": n0, "tasks_to": n1, "cpu_s": c1 - c0, "cpu_s_per_1000": (c1 - c0) / (n1 - n0) * 1000}
            for (n0, c0), (n1, c1) in zip(points, points[1:])]


def flatness(blocks: list[dict[str, float]]) -> float:
    """The last block's CPU per 1,000 tasks over the median block's (1.0: flat; NaN: under 3 blocks).
    The first block also pays for the submissions, so the median, not the first, is the reference."""
    if len(blocks) < 3:
        return float("nan")
    median = statistics.median(b["cpu_s_per_1000"] for b in blocks)
    return blocks[-1]["cpu_s_per_1000"] / median if median > 0 else float("nan")


class StateReader:
    """Read-only queries on the scheduler's state database (WAL mode: reads never block it)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)

    def finished_tasks(self, since: float) -> int:
        """Jobs and providers finished (any end) of the runs submitted at or after ``since`` (epoch s)."""
        marks = ",".join("?" * len(FINISHED))
        return self._db.execute(
            f"SELECT count(*) FROM tasks t JOIN runs r ON r.run_name = t.run_name "
            f"WHERE r.submitted_at >= ? AND t.kind IN ('job', 'provider') AND t.status IN ({marks})",
            (since, *FINISHED)).fetchone()[0]

    def summary(self, since: float) -> dict[str, Any]:
        """Counts of jobs and providers by kind and status, retried tasks, runs by status, and the time
        span of the runs submitted at or after ``since``."""
        rows = self._db.execute(
            "SELECT t.kind, t.status, count(*), max(t.attempt), min(t.started_at), max(t.finished_at) "
            "FROM tasks t JOIN runs r ON r.run_name = t.run_name "
            "WHERE r.submitted_at >= ? AND t.kind IN ('job', 'provider') "
            "GROUP BY t.kind, t.status", (since,)).fetchall()
        runs = dict(self._db.execute("SELECT status, count(*) FROM runs WHERE submitted_at >= ? GROUP BY status",
                                     (since,)).fetchall())
        first_submit = self._db.execute("SELECT min(submitted_at) FROM runs WHERE submitted_at >= ?",
                                        (since,)).fetchone()[0]
        return {"tasks": {f"{kind}:{status}": count for kind, status, count, *_ in rows},
                "max_attempt": max((row[3] for row in rows), default=0),
                "first_submitted_at": first_submit,
                "last_finished_at": max((row[5] for row in rows if row[5] is not None), default=None),
                "runs": runs}

    def close(self) -> None:
        self._db.close()


def measure(submit: Callable[[], list[dict[str, Any]]], expected_tasks: int, block: int, reader: StateReader,
            scheduler_pid: int, services: dict[str, int], timeout: float,
            log: Callable[[str], None], poll: float = 0.2, stall: float = 180.0) -> dict[str, Any]:
    """Run ``submit`` (in a thread: it starts the CLIs and returns their results) and follow the
    scheduler's state until ``expected_tasks`` tasks of the runs submitted from now on have finished,
    ``timeout`` seconds have passed, or no task has finished for ``stall`` seconds once the
    submissions returned; the figures of the case."""
    since = time.time() - 0.001
    cpu0 = process_cpu_s(scheduler_pid) or 0.0
    readings: list[tuple[int, float]] = [(0, cpu0)]
    rss: list[dict[str, Any]] = []
    submissions: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: submissions.extend(submit()), daemon=True)
    began = time.time()
    thread.start()
    next_mark, finished, deadline = block, 0, time.monotonic() + timeout
    progress_at, stalled = time.monotonic(), False
    while finished < expected_tasks and time.monotonic() < deadline:
        time.sleep(poll)
        now_finished = reader.finished_tasks(since)
        if now_finished != finished or thread.is_alive():
            progress_at = time.monotonic()
        finished = now_finished
        if time.monotonic() - progress_at > stall:
            stalled = True
            log(f"  no task finished for {stall:.0f} s: giving up at {finished}/{expected_tasks}")
            break
        if finished >= next_mark or finished >= expected_tasks:
            readings.append((finished, process_cpu_s(scheduler_pid) or readings[-1][1]))
            rss.append({"tasks": finished, **{name: proc_status(pid).get("VmRSS") for name, pid in services.items()}})
            log(f"  {finished}/{expected_tasks} tasks finished after {time.time() - began:.0f} s, scheduler CPU "
                f"{readings[-1][1] - cpu0:.1f} s")
            while next_mark <= finished:
                next_mark += block
    thread.join(max(0.0, deadline - time.monotonic()))
    summary = reader.summary(since)
    ended = summary["last_finished_at"] or time.time()
    total = ended - began
    jobs_done = summary["tasks"].get("job:done", 0)
    tasks_done = sum(n for key, n in summary["tasks"].items() if key.endswith(":done"))
    blocks = per_thousand(readings, min_tasks=max(1, block // 2))
    figures: dict[str, Any] = {
        "expected_tasks": expected_tasks, "finished_tasks": finished, "timed_out": finished < expected_tasks,
        "stalled": stalled,
        "total_s": total, "jobs_done": jobs_done, "tasks_done": tasks_done,
        "jobs_per_s": jobs_done / total if total > 0 else float("nan"),
        "tasks_per_s": tasks_done / total if total > 0 else float("nan"),
        "scheduler_cpu_s": readings[-1][1] - cpu0,
        "scheduler_cpu_s_per_1000_tasks": blocks, "cpu_last_over_median": flatness(blocks),
        "rss_kib_by_block": rss,
        "peak_rss_kib": {name: proc_status(pid).get("VmHWM") for name, pid in services.items()},
        "state": summary, "submissions": submissions,
    }
    return figures


def problems(figures: dict[str, Any], runs: int) -> list[str]:
    """What went wrong in a scale case (empty: every run and task done, each at attempt 1)."""
    found = []
    if figures["timed_out"]:
        found.append(f"only {figures['finished_tasks']} of {figures['expected_tasks']} tasks finished "
                     + ("(no progress for minutes: stalled)" if figures.get("stalled") else "in time"))
    failed = [s for s in figures["submissions"] if s.get("rc") != 0]
    if failed:
        found.append(f"{len(failed)} `dstack run -d` failed, e.g.: {failed[0].get('stderr', '')[-500:]}")
    state = figures["state"]
    not_done = {k: n for k, n in state["tasks"].items() if not k.endswith(":done")}
    if not_done:
        found.append(f"tasks not done: {not_done}")
    if state["runs"].get("done", 0) != runs:
        found.append(f"runs by status {state['runs']}, expected {runs} done")
    if state["max_attempt"] > 1:
        found.append(f"some task ran {state['max_attempt']} times")
    return found


def report(name: str, figures: dict[str, Any], label: str) -> list[str]:
    """Lines to print for one scale case."""
    blocks = figures["scheduler_cpu_s_per_1000_tasks"]
    per = ", ".join(f"{b['cpu_s_per_1000']:.1f}" for b in blocks)
    flat = flatness(blocks)
    peaks = ", ".join(f"{n} {kib / 1024:.0f}" for n, kib in figures["peak_rss_kib"].items() if kib)
    return [f"{label} {name}: {figures['jobs_done']} jobs ({figures['tasks_done']} tasks) "
            f"in {figures['total_s']:.1f} s: "
            f"{figures['jobs_per_s']:.2f} jobs/s, {figures['tasks_per_s']:.2f} tasks/s",
            f"{label} {name}: scheduler CPU {figures['scheduler_cpu_s']:.1f} s; per 1,000 finished tasks by block: "
            f"{per} s (last/median {flat:.2f})",
            f"{label} {name}: peak RSS (VmHWM) MiB: {peaks}"]
