"""How runs and jobs look in the terminal."""
from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dstack.messages import Allocation, Resources
from dstack.placement import asks_for_anything, describe_inventory, describe_needs
from dstack.states import Status
from dstack.views import JobView, RunView, TagView, WorkerView

STATUS_STYLES: dict[Status, str] = {
    Status.SUBMITTED: "dim", Status.QUEUED: "yellow", Status.PULLING: "blue", Status.RUNNING: "cyan",
    Status.RETRYING: "yellow",
    Status.DONE: "green", Status.FAILED: "red", Status.STOPPED: "magenta"}


def ago(timestamp: Optional[float]) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def human_size(size: Optional[float]) -> str:
    """``1.5 GB``, ``320.0 KB``, ``12 B`` (decimal units, as storage bills them); ``-`` for ``None``."""
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def duration(started: Optional[float], finished: Optional[float]) -> str:
    if not started:
        return "-"
    seconds = int((finished or time.time()) - started)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def styled(status: Status) -> str:
    return f"[{STATUS_STYLES.get(status, '')}]{status.value}[/]"


def endpoint(job: JobView) -> str:
    """Where a running job is reached: its apps' URLs, else its host and ports."""
    if not job.ports or job.status is not Status.RUNNING:
        return ""
    urls = [f"{app.name} {app.url}" for app in job.apps if app.url]
    return ", ".join(urls) or ", ".join(f"{job.hostname}:{port}" for port in job.ports)


def runs_table(runs: list[RunView]) -> Table:
    """Runs, each followed by its jobs."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN / JOB", "WORKFLOW", "OWNER", "STATUS", "EXIT", "SUBMITTED", "DURATION", "TAGS", "ARTIFACTS",
                   "PORTS / URL", "REASON"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(f"[bold]{run.run_name}[/]", run.workflow, escape(run.owner or "-"), styled(run.status), "",
                      ago(run.submitted_at), duration(run.started_at, run.finished_at), escape(", ".join(run.tags)),
                      human_size(run.artifacts_size) if run.artifacts_size else "-", "",
                      escape(short_reason(run.reason)))
        for job in run.jobs:
            exit_code = "" if job.exit_code is None else str(job.exit_code)
            status = styled(job.status) + (f" (cached from {escape(job.cached_from)})" if job.cached_from else "")
            table.add_row(f"  {job.job_id}", "", "", status, exit_code, ago(job.submitted_at),
                          duration(job.started_at, job.finished_at), "", human_size(job.artifacts_size),
                          escape(endpoint(job)), escape(short_reason(job.reason)))
    return table


def first_line(text: str) -> str:
    return (text or "").split("\n", 1)[0]


def short_reason(text: str) -> str:
    """A reason on one line: its first line, and its last when it has more (``exit code 1; last lines: ...``
    ends with the job's last line of output, which says most about why)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} ... {lines[-1]}"


def print_runs(console: Console, runs: list[RunView], detailed: bool = False) -> None:
    """The runs table; ``detailed`` adds each run's workflows with their variables and sources."""
    if not runs:
        console.print("No runs yet. Start one with [bold]dstack run WORKFLOW[/].")
        return
    console.print(runs_table(runs))
    if not detailed:
        return
    for run in runs:
        for workflow in run.workflows:
            parts = [f"workflow [bold]{workflow.name}[/] {styled(workflow.status)}"]
            needs = workflow.depends_on + workflow.tagged
            if needs:
                parts.append("depends on " + ", ".join(needs))
            if workflow.variables:
                parts.append("variables " + " ".join(f"{k}={v}" for k, v in workflow.variables.items()))
            if workflow.provider_commit:
                parts.append(f"provider commit {workflow.provider_commit[:12]}")
            console.print("; ".join(parts))


def print_workers(console: Console, workers: list[WorkerView]) -> None:
    """Live workers: what each has, what each job holds, the free disk of its images, and when it last reported."""
    if not workers:
        console.print("No live workers. Start one with [bold]dstack worker[/] (or [bold]dstack up[/]).")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("WORKER", "HOST", "RESOURCES", "IN USE", "SLOTS", "DISK FREE", "REPORTED"):
        table.add_column(column, overflow="fold")
    for worker in workers:
        table.add_row(f"[bold]{worker.worker_id}[/]", worker.host, describe_inventory(worker.resources),
                      "\n".join(_holding(a) for a in worker.in_use) or "-", f"{len(worker.in_use)}/{worker.slots}",
                      human_size(worker.disk_free), ago(worker.seen_at))
    console.print(table)


def _holding(allocation: Allocation) -> str:
    """``witty-otter-1234/train.0: 2xA100, 4 CPUs (GPU 0,1)``."""
    needs: Resources = allocation.needs
    held = f": {describe_needs(needs)}" if asks_for_anything(needs) else ""
    gpus = f" (GPU {','.join(allocation.gpu_ids)})" if allocation.gpu_ids else ""
    return f"{allocation.run_name}/{allocation.task_id}{held}{gpus}"


def print_tags(console: Console, tags: list[TagView]) -> None:
    """Tags as a table: the run each names, its kind (a run, or local data uploaded), its status, the size of
    its artifacts, its workflows and when it was made."""
    if not tags:
        console.print("No tags yet. Tag a run with [bold]dstack tag RUN NAME[/], or store local data with "
                      "[bold]dstack artifacts upload PATH --tag NAME[/].")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("TAG", "KIND", "RUN", "OWNER", "STATUS", "SIZE", "WORKFLOWS", "CREATED"):
        table.add_column(column, overflow="fold", justify="right" if column == "SIZE" else "left")
    for tag in tags:
        status = styled(Status(tag.status)) if tag.status in Status._value2member_map_ else tag.status
        table.add_row(f"[bold]{escape(tag.tag)}[/]", tag.kind, tag.run_name, escape(tag.owner or "-"), status,
                      human_size(tag.size),
                      ", ".join(tag.workflows), ago(tag.created_at))
    console.print(table)
