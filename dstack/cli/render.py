"""How runs and jobs look in the terminal."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from rich.console import Console
from rich.table import Table

from dstack.messages import Allocation, Inventory, Resources, from_dict
from dstack.placement import describe_inventory, describe_needs

STATUS_STYLES = {"submitted": "dim", "queued": "yellow", "running": "cyan", "retrying": "yellow", "done": "green",
                 "failed": "red", "stopped": "magenta"}


def ago(timestamp: Optional[float]) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def duration(started: Optional[float], finished: Optional[float]) -> str:
    if not started:
        return "-"
    seconds = int((finished or time.time()) - started)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def styled(status: str) -> str:
    return f"[{STATUS_STYLES.get(status, '')}]{status}[/]"


def endpoint(job: Dict[str, Any]) -> str:
    """Where a running job is reached: its apps' URLs, else its host and ports."""
    if not job.get("ports") or job.get("status") != "running":
        return ""
    urls = [f"{app['name']} {app['url']}" for app in job.get("apps", []) if app.get("url")]
    return ", ".join(urls) or ", ".join(f"{job.get('hostname')}:{port}" for port in job["ports"])


def runs_table(runs: List[Dict[str, Any]]) -> Table:
    """Runs, each followed by its jobs."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN / JOB", "WORKFLOW", "STATUS", "EXIT", "SUBMITTED", "DURATION", "PORTS / URL", "REASON"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(f"[bold]{run['run_name']}[/]", run["workflow"], styled(run["status"]), "",
                      ago(run["submitted_at"]), duration(run.get("started_at"), run.get("finished_at")), "",
                      first_line(run.get("reason", "")))
        for job in run["jobs"]:
            exit_code = "" if job.get("exit_code") is None else str(job["exit_code"])
            table.add_row(f"  {job['job_id']}", "", styled(job["status"]), exit_code, ago(job.get("submitted_at")),
                          duration(job.get("started_at"), job.get("finished_at")), endpoint(job),
                          first_line(job.get("reason", "")))
    return table


def first_line(text: str) -> str:
    return (text or "").split("\n", 1)[0]


def print_runs(console: Console, runs: List[Dict[str, Any]], detailed: bool = False) -> None:
    """The runs table; ``detailed`` adds each run's workflows with their variables and sources."""
    if not runs:
        console.print("No runs yet. Start one with [bold]dstack run WORKFLOW[/].")
        return
    console.print(runs_table(runs))
    if not detailed:
        return
    for run in runs:
        for workflow in run.get("workflows", []):
            parts = [f"workflow [bold]{workflow['name']}[/] {styled(workflow['status'])}"]
            needs = workflow["depends_on"] + workflow["tagged"]
            if needs:
                parts.append("depends on " + ", ".join(needs))
            if workflow["variables"]:
                parts.append("variables " + " ".join(f"{k}={v}" for k, v in workflow["variables"].items()))
            if workflow.get("provider_commit"):
                parts.append(f"provider commit {workflow['provider_commit'][:12]}")
            console.print("; ".join(parts))


def print_workers(console: Console, workers: List[Dict[str, Any]]) -> None:
    """Live workers: what each has, what each job holds, and when the worker last reported."""
    if not workers:
        console.print("No live workers. Start one with [bold]dstack worker[/] (or [bold]dstack up[/]).")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("WORKER", "HOST", "RESOURCES", "IN USE", "SLOTS", "REPORTED"):
        table.add_column(column, overflow="fold")
    for worker in workers:
        inventory = from_dict(Inventory, worker["resources"])
        in_use = [from_dict(Allocation, a) for a in worker["in_use"]]
        table.add_row(f"[bold]{worker['worker_id']}[/]", worker["host"], describe_inventory(inventory),
                      "\n".join(_holding(a) for a in in_use) or "-", f"{len(in_use)}/{worker['slots']}",
                      ago(worker["seen_at"]))
    console.print(table)


def _holding(allocation: Allocation) -> str:
    """``witty-otter-1234/train.0: 2xA100, 4 CPUs (GPU 0,1)``."""
    needs: Resources = allocation.needs
    held = "" if not (needs.gpu_count or needs.cpu or needs.memory_mib) else f": {describe_needs(needs)}"
    gpus = f" (GPU {','.join(allocation.gpu_ids)})" if allocation.gpu_ids else ""
    return f"{allocation.run_name}/{allocation.task_id}{held}{gpus}"
