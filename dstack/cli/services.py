"""The commands that run the services (scheduler, worker, or both with ``up``) and list the live workers."""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional

import click

from dstack.cli.context import Context, out, pass_context
from dstack.cli.render import print_workers
from dstack.messages import GetWorkers, plain


def _serve(service: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.shutdown())
    service.run()


@click.command()
@pass_context
def scheduler(context: Context) -> None:
    """Run the scheduler (one per broker): it owns the state of runs and jobs."""
    from dstack.scheduler.main import SchedulerService

    _serve(SchedulerService(context.settings))


@click.command()
@click.option("--slots", type=int, default=None, help="Tasks run at once (default: DSTACK_WORKER_SLOTS or 4).")
@click.option("--resources", default=None, metavar="YAML",
              help="What the worker offers, declared or restricted, e.g. '{cpu: 8, memory: 64GB, gpu: 2}' or "
                   "'{gpu: {count: 2, name: A100, memory: 40GB}}' (default: DSTACK_WORKER_RESOURCES, else what "
                   "the machine has).")
@pass_context
def worker(context: Context, slots: Optional[int], resources: Optional[str]) -> None:
    """Run a worker: it takes the tasks that fit what it has free and runs them in Docker containers."""
    from dstack.settings import with_overrides, yaml_mapping
    from dstack.workers.service import Worker

    settings = context.settings
    if slots:
        settings = with_overrides(settings, worker_slots=slots)
    if resources is not None:
        settings = with_overrides(settings, worker_resources=yaml_mapping(resources, "--resources"))
    _serve(Worker.from_settings(settings))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of workers.")
@pass_context
def workers(context: Context, as_json: bool) -> None:
    """The live workers: what each has, what is in use and by which job, and when it last reported."""
    with context.rpc() as rpc:
        found = rpc.call(GetWorkers())
    if as_json:
        out.print_json(json.dumps(plain(found)))
    else:
        print_workers(out, found)


def die_with_parent(parent: int) -> Any:
    """What a child of ``parent`` runs before its program (``preexec_fn``): on Linux, it is sent SIGTERM when
    ``parent`` dies, even by SIGKILL, so that no scheduler or worker of a killed `dstack up` goes on alone (and a
    second `dstack up` starts no second scheduler beside it). Elsewhere it does nothing."""
    def arrange() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return  # no prctl: not Linux
        if os.getppid() != parent:  # the parent died before the call: nobody is left to signal it
            os.kill(os.getpid(), signal.SIGTERM)
    return arrange


@click.command()
@pass_context
def up(context: Context) -> None:
    """Run a scheduler and one worker on this machine, in the foreground, until Ctrl-C."""
    children = [subprocess.Popen([sys.executable, "-m", "dstack.cli.main", name],
                                 preexec_fn=die_with_parent(os.getpid()))
                for name in ("scheduler", "worker")]
    def stop_all(*_: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while all(c.poll() is None for c in children):
        time.sleep(0.5)
    stop_all()
    codes = [c.wait() for c in children]
    sys.exit(max(codes))
