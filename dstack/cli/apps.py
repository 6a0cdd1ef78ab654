"""``dstack app RUN [JOB]``: the URLs of a run's web applications (a job's ``apps``), opened in a browser if asked."""
from __future__ import annotations

import sys
import webbrowser
from typing import Optional

import click

from dstack.cli.context import Context, complete_run_names, err, pass_context
from dstack.errors import DstackError
from dstack.messages import GetRuns
from dstack.views import JobView, RunView


@click.command()
@click.argument("run_name", shell_complete=complete_run_names)
@click.argument("job", required=False)
@click.option("--open", "open_them", is_flag=True, help="Also open each URL in a browser, where there is one.")
@pass_context
def app(context: Context, run_name: str, job: Optional[str], open_them: bool) -> None:
    """Print the URLs of the web applications of RUN_NAME (or of its JOB), one a line: JOB, APP and URL.

    An app has a URL while its job runs. Exits 1 when none runs.
    """
    with context.rpc() as rpc:
        run: RunView = rpc.call(GetRuns(run_name=run_name))[0]
    found = app_urls(run, job)
    if not found:
        jobs = [j for j in run.jobs if job in (None, j.job_id)]
        declared = sorted({f"{j.job_id} {a.name}" for j in jobs for a in j.apps})
        if declared:
            err.print(f"No app of {run_name} runs now ({run.status.value}): {', '.join(declared)} "
                      "get URLs while their jobs run.")
        else:
            err.print(f"{run_name}{' job ' + job if job else ''} has no apps (a job declares them with `apps`).")
        sys.exit(1)
    for job_id, name, url in found:
        click.echo(f"{job_id}\t{name}\t{url}")
    if open_them:
        try:
            browser = webbrowser.get()
        except webbrowser.Error:
            err.print("No browser found here: open the URLs above yourself.")
            return
        for _, _, url in found:
            browser.open(url)


def app_urls(run: RunView, job: Optional[str] = None) -> list[tuple[str, str, str]]:
    """``(job, app, url)`` of every app of the run (of ``job`` only, if set) that has a URL now.

    Raises:
        DstackError: the run has no job ``job``; the message names those it has.
    """
    jobs: list[JobView] = run.jobs
    if job is not None:
        jobs = [j for j in run.jobs if j.job_id == job]
        if not jobs:
            known = ", ".join(j.job_id for j in run.jobs if j.kind == "job") or "none yet"
            raise DstackError(f"run {run.run_name} has no job '{job}' (its jobs: {known})")
    return [(j.job_id, a.name, a.url) for j in jobs for a in j.apps if a.url]
