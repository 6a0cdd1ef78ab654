"""Overhead of dstack on no-op jobs, against the same containers started directly with Docker.

Starts a private RabbitMQ vhost, a scheduler and one worker (real processes, embedded local
storage in a temp folder), then times ``dstack run`` on three workflows whose jobs all run
``true`` in ``python:3.9``:

* ``single-1``: one job (dstack's fixed cost per run);
* ``chain-20``: 20 jobs, each depending on the previous one;
* ``fanout-100``: 100 independent jobs;
* ``fanin-1000``: 999 independent jobs, then one that depends on all of them.

The baseline starts the same containers with the Docker SDK at the same concurrency: one
after the other for the chain, through a ``ThreadPoolExecutor(slots)`` for the fan-out.

Run from the repository root::

    .venv/bin/python -m bench.bench_noop [--repeat 3] [--slots 4] [--json out.json]

Needs RabbitMQ at 127.0.0.1:5672, the Docker engine and the ``python:3.9`` image (the
same as the integration tests). See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import docker

from dstack.names import WORKER_LABEL
from tests.projects import graph_project
from tests.services import REPO_ROOT, TEST_IMAGE, Cluster, Vhost, run_name_of, write_project

NOOP = ["/bin/sh", "-c", "true"]
WORKER_ID = "bench-worker"
#: Seconds one ``dstack run`` may take before the benchmark gives up.
RUN_TIMEOUT = 1200.0


# --------------------------------------------------------------------------- cases


class Case:
    """A workflow of no-op jobs, and how the direct baseline runs the same containers."""

    def __init__(self, name: str, jobs: int, chained: bool, fan_in: bool = False) -> None:
        self.name, self.jobs, self.chained, self.fan_in = name, jobs, chained, fan_in

    def workflow(self) -> dict[str, Any]:
        specs: list[dict[str, Any]] = []
        for i in range(self.jobs):
            spec: dict[str, Any] = {"commands": ["true"], "image": TEST_IMAGE}
            if self.chained and i > 0:
                spec["depends_on"] = [i - 1]
            if self.fan_in and i == self.jobs - 1:  # the last job waits for all the others
                spec["depends_on"] = list(range(self.jobs - 1))
            specs.append(spec)
        return {"name": self.name, "jobs": specs}

    def run_direct(self, client: docker.DockerClient, slots: int) -> float:
        """Seconds to run the case's containers straight through the Docker SDK."""
        start = time.perf_counter()
        if self.chained or self.jobs == 1:
            for _ in range(self.jobs):
                _docker_noop(client)
        else:
            parallel = self.jobs - 1 if self.fan_in else self.jobs
            with ThreadPoolExecutor(slots) as pool:
                list(pool.map(lambda _: _docker_noop(client), range(parallel)))
            if self.fan_in:
                _docker_noop(client)
        return time.perf_counter() - start


CASES = [Case("single-1", 1, chained=False), Case("chain-20", 20, chained=True),
         Case("fanout-100", 100, chained=False), Case("fanin-1000", 1000, chained=False, fan_in=True)]


def _docker_noop(client: docker.DockerClient) -> None:
    client.containers.run(TEST_IMAGE, NOOP, network_mode="host", remove=True)


# --------------------------------------------------------------------------- dstack side


def dstack_run(cluster: Cluster, project: Path, case: Case) -> dict[str, Any]:
    """Run ``case`` with ``dstack run`` (following it to the end); its timings, in seconds."""
    began_wall, began = time.time(), time.perf_counter()
    result = cluster.dstack("run", case.name, cwd=project, timeout=RUN_TIMEOUT)
    elapsed = time.perf_counter() - began
    ended_wall = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"`dstack run {case.name}` exited {result.returncode}:\n{result.stdout}\n"
                           f"{result.stderr}\n{cluster.logs()}")
    run_name = run_name_of(result)
    run = cluster.status(run_name)
    if run["status"] != "done":
        raise RuntimeError(f"{run_name} is {run['status']}: {run['reason']}")
    provider = next(j for j in run["jobs"] if j["kind"] == "provider")
    jobs = sorted((j for j in run["jobs"] if j["kind"] == "job"), key=lambda j: j["started_at"])
    if len(jobs) != case.jobs or any(j["status"] != "done" for j in jobs):
        raise RuntimeError(f"{run_name}: expected {case.jobs} done jobs, got {[j['status'] for j in jobs]}")
    first_started = min(j["started_at"] for j in jobs)
    last_finished = max(j["finished_at"] for j in jobs)
    figures = {
        "run_name": run_name,
        "end_to_end": elapsed,
        "jobs_span": last_finished - first_started,
        "provider": provider["finished_at"] - provider["started_at"],
        # where the end-to-end time goes, in order (wall clock; all processes on this machine)
        "phases": {
            "cli_start_to_submit": run["submitted_at"] - began_wall,
            "submit_to_provider_started": provider["started_at"] - run["submitted_at"],
            "provider_running": provider["finished_at"] - provider["started_at"],
            "provider_done_to_first_job_started": first_started - provider["finished_at"],
            "jobs_span": last_finished - first_started,
            "last_job_done_to_cli_exit": ended_wall - last_finished,
        },
        # per job, as the scheduler saw it: from TaskStarted (container started) to TaskFinished
        "job_started_to_finished_median": statistics.median(j["finished_at"] - j["started_at"] for j in jobs),
    }
    # how many jobs ran at once (scheduler view: from container started to end reported)
    edges = sorted([(j["started_at"], 1) for j in jobs] + [(j["finished_at"], -1) for j in jobs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    figures["jobs_running_at_once_max"] = peak
    span = last_finished - first_started
    figures["jobs_running_at_once_mean"] = (sum(j["finished_at"] - j["started_at"] for j in jobs) / span
                                            if span > 0 else float("nan"))
    if len(jobs) > 1:
        # the pace at which the worker starts containers
        figures["start_interval_median"] = statistics.median(b["started_at"] - a["started_at"]
                                                             for a, b in zip(jobs, jobs[1:]))
    if case.chained and len(jobs) > 1:
        # from a job's completion (scheduler) to the next job's start (scheduler): release, queue,
        # worker intake, claim, snapshot, container start
        gaps = [b["started_at"] - a["finished_at"] for a, b in zip(jobs, jobs[1:])]
        figures["chain_gap_median"] = statistics.median(gaps)
    return figures


def cli_startup(cluster: Cluster) -> float:
    """Seconds for the CLI to start and exit (``dstack --version``): paid by every command."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dstack.cli.main", "--version"], capture_output=True, check=True,
                   env=cluster.env)
    return time.perf_counter() - began


def start_profilers(cluster: Cluster, folder: Path) -> list[subprocess.Popen]:
    """``py-spy record`` on every process of the cluster, until :func:`stop_profilers`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    profilers = []
    for name, process in cluster.processes.items():
        profilers.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(process.pid), "--format", "raw", "--idle", "--threads",
             "--rate", "200", "--output", str(folder / f"{name}.collapsed")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # attached before the first measured run
    return profilers


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        if profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for profiler in profilers:
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            profiler.kill()


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(raw: dict[str, list[dict[str, Any]]], direct: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        if case.name not in raw:
            continue
        runs = raw[case.name]
        e2e = _median([r["end_to_end"] for r in runs])
        base = _median(direct[case.name])
        rows.append({
            "case": case.name, "jobs": case.jobs,
            "dstack_end_to_end_s": e2e,
            "dstack_jobs_span_s": _median([r["jobs_span"] for r in runs]),
            "dstack_provider_s": _median([r["provider"] for r in runs]),
            "docker_direct_s": base,
            "ratio": e2e / base if base else float("nan"),
            "overhead_per_job_ms": (e2e - base) / case.jobs * 1000,
            "span_overhead_per_job_ms": (_median([r["jobs_span"] for r in runs]) - base) / case.jobs * 1000,
            "job_started_to_finished_median_s": _median([r["job_started_to_finished_median"] for r in runs]),
            "chain_gap_median_s": _median([r["chain_gap_median"] for r in runs if "chain_gap_median" in r]),
            "jobs_running_at_once_max": max(r["jobs_running_at_once_max"] for r in runs),
            "jobs_running_at_once_mean": _median([r["jobs_running_at_once_mean"] for r in runs]),
            "start_interval_median_s": _median([r["start_interval_median"] for r in runs
                                                if "start_interval_median" in r]),
            "phases_median_s": {k: _median([r["phases"][k] for r in runs]) for k in runs[0]["phases"]},
        })
    return rows


def print_table(rows: list[dict[str, Any]], repeat: int, slots: int, cli_s: float) -> None:
    print(f"\nmedian of {repeat} run(s); worker slots {slots}; `dstack --version` takes {cli_s:.2f} s\n")
    header = ["case", "dstack end-to-end s", "dstack jobs span s", "provider s", "docker direct s",
              "ratio", "overhead/job ms"]
    lines = [[r["case"], f"{r['dstack_end_to_end_s']:.2f}", f"{r['dstack_jobs_span_s']:.2f}",
              f"{r['dstack_provider_s']:.2f}", f"{r['docker_direct_s']:.2f}", f"{r['ratio']:.1f}x",
              f"{r['overhead_per_job_ms']:.0f}"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))))
    print("\nwhere the end-to-end time goes (median s):")
    phases = list(rows[0]["phases_median_s"]) if rows else []
    pw = max(len(p) for p in phases) if phases else 0
    print(" " * pw + "  " + "  ".join(f"{r['case']:>10}" for r in rows))
    for phase in phases:
        print(phase.ljust(pw) + "  " + "  ".join(f"{r['phases_median_s'][phase]:>10.2f}" for r in rows))
    print("job started->finished (scheduler view, median s): "
          + ", ".join(f"{r['case']} {r['job_started_to_finished_median_s']:.2f}" for r in rows))
    for r in rows:
        if r["chain_gap_median_s"] == r["chain_gap_median_s"]:  # not NaN
            print(f"{r['case']}: median gap from a job's end to the next job's start {r['chain_gap_median_s']:.2f} s")
        if r["jobs"] > 1:
            print(f"{r['case']}: jobs running at once: max {r['jobs_running_at_once_max']}, "
                  f"mean {r['jobs_running_at_once_mean']:.2f}; "
                  f"median interval between job starts {r['start_interval_median_s'] * 1000:.0f} ms")


# --------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "loadavg": os.getloadavg()}
    try:
        info["docker"] = docker.from_env().version().get("Version")
    except docker.errors.DockerException:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    return info


def _remove_leftover_containers(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={WORKER_ID}"}):
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown")
    parser.add_argument("--slots", type=int, default=4, help="worker slots, and the direct baseline's threads")
    parser.add_argument("--json", type=Path, help="write the raw figures (every run) to this file")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated cases to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (scheduler and worker logs)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the scheduler and worker with py-spy (pip install py-spy) during the "
                             "measured runs; collapsed stacks (idle included, per thread) go to DIR")
    args = parser.parse_args(argv)
    wanted = [c for c in CASES if c.name in args.cases.split(",")]
    if not wanted:
        parser.error(f"no such case in {args.cases!r}")

    client = docker.from_env()
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        print(f"image {TEST_IMAGE} is missing; run scripts/build-images.sh", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # clean up (finally below) on SIGTERM as on Ctrl-C
    root = Path(tempfile.mkdtemp(prefix="dstack-bench-"))
    profilers: list[subprocess.Popen] = []
    vhost: Optional[Vhost] = None
    cluster: Optional[Cluster] = None
    try:
        vhost = Vhost()
        cluster = Cluster(root / "cluster", vhost.url, {"DSTACK_STORAGE_URL": (root / "storage").as_uri()})
        cluster.start_scheduler()
        cluster.start_worker(WORKER_ID, slots=args.slots)
        project = write_project(root / "project", graph_project([c.workflow() for c in CASES]))
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        log(f"cluster up in {root} (vhost {vhost.name}); warming up")
        dstack_run(cluster, project, CASES[0])  # first run fills caches (snapshot blobs, bytecode)
        _docker_noop(client)

        if args.profile:
            profilers = start_profilers(cluster, args.profile)
        load_before = os.getloadavg()
        raw: dict[str, list[dict[str, Any]]] = {c.name: [] for c in wanted}
        direct: dict[str, list[float]] = {c.name: [] for c in wanted}
        cli_times: list[float] = []
        for attempt in range(args.repeat):
            cli_times.append(cli_startup(cluster))
            for case in wanted:  # interleaved, so drift of the machine hits both sides alike
                figures = dstack_run(cluster, project, case)
                raw[case.name].append(figures)
                direct[case.name].append(case.run_direct(client, args.slots))
                log(f"[{attempt + 1}/{args.repeat}] {case.name}: dstack {figures['end_to_end']:.2f} s "
                    f"(jobs span {figures['jobs_span']:.2f} s, provider {figures['provider']:.2f} s), "
                    f"direct {direct[case.name][-1]:.2f} s")
        stop_profilers(profilers)
        profilers = []

        rows = summarize(raw, direct)
        print_table(rows, args.repeat, args.slots, _median(cli_times))
        print(f"load average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs: other work on the machine skews the figures")
        if args.json:
            args.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "loadavg_before": load_before,
                "repeat": args.repeat,
                "slots": args.slots, "image": TEST_IMAGE, "cli_startup_s": cli_times,
                "dstack": raw, "docker_direct_s": direct, "summary": rows,
            }, indent=2))
            log(f"raw figures written to {args.json}")
        return 0
    finally:
        stop_profilers(profilers)
        if cluster is not None:
            cluster.stop()
        _remove_leftover_containers(client)
        if vhost is not None:
            vhost.delete()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
