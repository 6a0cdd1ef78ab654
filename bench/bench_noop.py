"""Overhead of dstack on no-op jobs, against the same containers started directly with Docker.

Starts a private RabbitMQ vhost, a scheduler and one worker (real processes; ``--storage``: the
embedded local storage in a temp folder, S3 on a moto server over HTTP, or both side by side), then
times ``dstack run`` on workflows whose jobs all run ``true`` in ``python:3.9``:

* ``single-1``: one job (dstack's fixed cost per run);
* ``chain-20``: 20 jobs, each depending on the previous one;
* ``fanout-100``: 100 independent jobs;
* ``fanin-1000``: 999 independent jobs, then one that depends on all of them.

The baseline starts the same containers with the Docker SDK at the same concurrency: one
after the other for the chain, through a ``ThreadPoolExecutor(slots)`` for the fan-out. The
issue-14 goals are printed as ratios with PASS/FAIL (bench/goals.py). ``--compare REF`` runs
another commit next to the working tree (bench/compare.py); the opt-in ``noop-10000`` and
``runs-2000`` cases measure throughput on 4 workers (bench/scale.py).

Run from the repository root::

    .venv/bin/python -m bench.bench_noop [--repeat 3] [--slots 4] [--storage local|s3|both]
        [--compare REF] [--cases single-1,chain-20,...] [--scale 1.0] [--json out.json]

Needs RabbitMQ at 127.0.0.1:5672, the Docker engine and the ``python:3.9`` image (the
same as the integration tests). See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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

from bench import goals, scale
from bench.compare import Checkout, imported_from
from bench.scale import SCALE_CASES
from dstack.names import WORKER_LABEL
from tests.projects import graph_project
from tests.s3server import MotoServer, start_moto_server
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
        if self.jobs == 1:  # one job: as a new user writes it, with the built-in docker provider
            return {"name": self.name, "provider": "docker", "image": TEST_IMAGE, "commands": ["true"]}
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


def _remove_leftover_containers(client: docker.DockerClient, worker_id: str = WORKER_ID) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={worker_id}"}):
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass


STORAGES = ("local", "s3")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line; ``args.cases`` and ``args.scale_cases`` are lists of case names and
    ``args.storages`` the storages to run on, in order."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown")
    parser.add_argument("--slots", type=int, default=4, help="worker slots, and the direct baseline's threads")
    parser.add_argument("--json", type=Path, help="write the raw figures (every run) to this file")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated cases to run (default: the four interleaved ones; "
                             f"opt-in: {', '.join(c.name for c in SCALE_CASES)})")
    parser.add_argument("--storage", choices=(*STORAGES, "both"), default="local",
                        help="the cluster's storage: the embedded local one, S3 on a moto server over HTTP "
                             "(as the tests), or both side by side in one run (default: local)")
    parser.add_argument("--compare", metavar="REF",
                        help="also run the commit REF (checked out in a temp git worktree, imported from there "
                             "with this venv), interleaved with the working tree's")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size factor of the scale cases (noop-10000, runs-2000), e.g. 0.1 to try them")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (scheduler and worker logs)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the scheduler and worker with py-spy (pip install py-spy) during the "
                             "measured runs; collapsed stacks (idle included, per thread) go to DIR")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    known = {c.name for c in CASES} | {c.name for c in SCALE_CASES}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"no such case {', '.join(unknown) or repr(args.cases)}; cases: {', '.join(sorted(known))}")
    args.cases = [c.name for c in CASES if c.name in names]
    args.scale_cases = [c.name for c in SCALE_CASES if c.name in names]
    args.storages = list(STORAGES) if args.storage == "both" else [args.storage]
    if args.repeat < 1 or args.slots < 1:
        parser.error("--repeat and --slots must be at least 1")
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    return args


class Setup:
    """One cluster to measure: a version of dstack (the working tree or a --compare checkout) on one
    storage, with its own vhost, scheduler, worker(s), project copy and (S3) bucket.

    The scheduler and the workers get ``storage_env`` (where storage is, and S3's credentials); the CLI gets it
    only with ``cli_storage``: without, it asks the scheduler where storage is and reaches S3 through presigned
    URLs, as a user of a shared fleet does (a ``--compare`` checkout older than that needs it)."""

    def __init__(self, version: str, storage: str, env: dict[str, str], storage_env: dict[str, str], index: int,
                 cli_storage: bool = False) -> None:
        self.version, self.storage = version, storage
        self.env = {**env, **storage_env} if cli_storage else env
        self.storage_env = storage_env
        self.label = f"{version}/{storage}"
        self.worker_id = f"{WORKER_ID}-{index}"
        self.worker_ids = [self.worker_id]
        self.vhost: Optional[Vhost] = None
        self.cluster: Optional[Cluster] = None
        #: a project per workflow, with that workflow and single-1 only (a project's size is part of every
        #: `dstack run`: it is read and checked each time)
        self.projects: dict[str, Path] = {}

    def start(self, root: Path, slots: int, workflows: list[dict[str, Any]]) -> Cluster:
        self.vhost = Vhost()
        self.cluster = Cluster(root / "cluster", self.vhost.url, self.env)
        self.cluster.start_scheduler(**self.storage_env)
        self.cluster.start_worker(self.worker_id, slots=slots, **self.storage_env)
        single = workflows[0]
        for workflow in workflows:
            wanted = [single] if workflow is single else [single, workflow]
            folder = root / f"project-{workflow['name']}"
            self.projects[workflow["name"]] = write_project(folder, graph_project(wanted))
        return self.cluster

    def add_workers(self, total: int, slots: int) -> None:
        """Start more workers until the cluster has ``total``."""
        assert self.cluster is not None
        while len(self.worker_ids) < total:
            worker_id = f"{self.worker_id}-{len(self.worker_ids) + 1}"
            self.cluster.start_worker(worker_id, slots=slots, **self.storage_env)
            self.worker_ids.append(worker_id)

    def services(self) -> dict[str, int]:
        """The cluster's processes: name -> pid."""
        assert self.cluster is not None
        return {name: p.pid for name, p in self.cluster.processes.items()}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.vhost is not None:
            self.vhost.delete()


def container_start(client: docker.DockerClient) -> float:
    """Seconds of one ``containers.create`` + ``start`` of the no-op container (then waited for and
    removed, untimed): the unit of the fixed-cost and chain-gap goals."""
    began = time.perf_counter()
    container = client.containers.create(TEST_IMAGE, NOOP, network_mode="host")
    container.start()
    elapsed = time.perf_counter() - began
    container.wait()
    container.remove(force=True)
    return elapsed


def print_goals(results: list[tuple[str, list[goals.Goal]]], start_s: float) -> None:
    print(f"\ngoals (issue 14), one container start (create + start, median) {start_s * 1000:.0f} ms:")
    for label, found in results:
        for goal in found:
            print(f"  {label:<24} {goal.describe()}")
    print("(ratios on a loaded machine read worse than on an idle one: compare the setups of this run)")


def print_side_by_side(tables: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """One line per case and setup: end-to-end, direct, ratio, chain gap."""
    print("\nside by side (medians):")
    print(f"  {'case':<11} {'setup':<24} {'dstack e2e s':>12} {'direct s':>9} {'ratio':>6} {'chain gap ms':>12}")
    cases = [c.name for c in CASES]
    for case in cases:
        for label, rows in tables:
            for r in rows:
                if r["case"] == case:
                    gap = r["chain_gap_median_s"]
                    print(f"  {case:<11} {label:<24} {r['dstack_end_to_end_s']:>12.2f} {r['docker_direct_s']:>9.2f} "
                          f"{r['ratio']:>5.2f}x {'-' if gap != gap else f'{gap * 1000:.0f}':>12}")


def run_scale_case(setup: Setup, case: scale.ScaleCase, factor: float, slots: int,
                   log: Any) -> dict[str, Any]:
    """One scale case on ``setup``'s cluster (grown to 4 workers); its figures, checked."""
    assert setup.cluster is not None
    cluster = setup.cluster
    setup.add_workers(scale.SCALE_WORKERS, slots)
    runs, jobs = case.sized(factor)
    tasks = runs * (jobs + 1)  # each run: its provider and its jobs
    counts = scale.split(runs, case.clis)
    project = setup.projects[case.workflow]

    def submit() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def one_cli(count: int) -> None:
            for _ in range(count):
                began = time.time()
                result = cluster.dstack("run", case.workflow, "-d", cwd=project, timeout=RUN_TIMEOUT)
                out.append({"began": began, "ended": time.time(), "rc": result.returncode,
                            "run_name": run_name_of(result), "stderr": result.stderr[-2000:]})

        with ThreadPoolExecutor(len(counts)) as pool:
            list(pool.map(one_cli, counts))
        return out

    reader = scale.StateReader(cluster.root / "scheduler-home" / "scheduler" / "state.db")
    try:
        log(f"{setup.label} {case.name}: {runs} run(s) of {jobs} job(s) by {len(counts)} CLI(s) "
            f"on {len(setup.worker_ids)} workers")
        services = setup.services()
        figures = scale.measure(submit, tasks, case.block(factor), reader, services["scheduler"], services,
                                timeout=max(600.0, tasks * 1.0), log=log)
    finally:
        reader.close()
    figures.update({"runs": runs, "jobs_per_run": jobs, "clis": len(counts), "workers": len(setup.worker_ids),
                    "problems": scale.problems(figures, runs)})
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    wanted = [c for c in CASES if c.name in args.cases]
    scale_wanted = [c for c in SCALE_CASES if c.name in args.scale_cases]

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
    setups: list[Setup] = []
    moto: Optional[MotoServer] = None
    checkout: Optional[Checkout] = None
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    failed = False
    try:
        versions: list[tuple[str, dict[str, str]]] = [("tree", {})]
        if args.compare:
            checkout = Checkout(REPO_ROOT, args.compare)
            found = imported_from({**os.environ, **checkout.env()}, sys.executable, cwd=REPO_ROOT)
            if any(not path.startswith(str(checkout.layout)) for path in found.values()):
                raise RuntimeError(f"the checkout of {args.compare} does not import from its layout: {found}")
            log(f"--compare: {checkout.label} \"{checkout.subject}\" in {checkout.worktree}")
            versions.append((checkout.label, checkout.env()))
        if "s3" in args.storages:
            moto = start_moto_server()
        workflows = [c.workflow() for c in CASES]
        workflows += [scale.noop_workflow(c.workflow, c.sized(args.scale)[1], TEST_IMAGE)
                      for c in scale_wanted if c.workflow not in {w["name"] for w in workflows}]
        for version, version_env in versions:
            for storage in args.storages:
                if storage == "s3":
                    assert moto is not None
                    bucket = f"bench-{len(setups)}-{os.getpid()}"
                    moto.create_bucket(bucket)
                    storage_env = {**moto.env(), "DSTACK_STORAGE_URL": f"s3://{bucket}/dstack"}
                else:
                    storage_env = {"DSTACK_STORAGE_URL": (root / f"storage-{len(setups)}").as_uri()}
                # bytecode cached, as an installed package has it (some environments set PYTHONDONTWRITEBYTECODE)
                bytecode = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(root / "pycache")}
                setup = Setup(version, storage, {**version_env, **bytecode}, storage_env, len(setups),
                              cli_storage=version != "tree")
                setups.append(setup)
                setup.start(root / f"setup-{len(setups)}", args.slots, workflows)
                log(f"{setup.label}: cluster up (vhost {setup.vhost.name if setup.vhost else '?'}); warming up")
                assert setup.cluster is not None
                for project in setup.projects.values():  # fills caches (snapshot, validation, bytecode)
                    dstack_run(setup.cluster, project, CASES[0])
        _docker_noop(client)
        log(f"{len(setups)} setup(s) in {root}")

        if args.profile:
            for setup in setups:
                assert setup.cluster is not None
                profilers += start_profilers(setup.cluster, args.profile / re.sub(r"[^\w.]+", "-", setup.label))
        load_before = os.getloadavg()
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {s.label: {c.name: [] for c in wanted} for s in setups}
        direct: dict[str, list[float]] = {c.name: [] for c in wanted}
        cli_times: dict[str, list[float]] = {s.label: [] for s in setups}
        starts: list[float] = []
        for attempt in range(args.repeat if wanted else 0):
            starts += [container_start(client) for _ in range(5)]
            for setup in setups:
                assert setup.cluster is not None
                cli_times[setup.label].append(cli_startup(setup.cluster))
            for case in wanted:  # interleaved, so drift of the machine hits every side alike
                for setup in setups:
                    assert setup.cluster is not None
                    figures = dstack_run(setup.cluster, setup.projects[case.name], case)
                    raw[setup.label][case.name].append(figures)
                    log(f"[{attempt + 1}/{args.repeat}] {case.name} {setup.label}: "
                        f"dstack {figures['end_to_end']:.2f} s "
                        f"(jobs span {figures['jobs_span']:.2f} s, provider {figures['provider']:.2f} s)")
                direct[case.name].append(case.run_direct(client, args.slots))
                log(f"[{attempt + 1}/{args.repeat}] {case.name}: direct {direct[case.name][-1]:.2f} s")
        stop_profilers(profilers)
        profilers = []

        start_s = _median(starts)
        tables = [(s.label, summarize(raw[s.label], direct)) for s in setups] if wanted else []
        goal_results = [(label, goals.evaluate_all(rows, start_s)) for label, rows in tables]
        for label, rows in tables:
            print(f"\n=== {label}", end="")
            print_table(rows, args.repeat, args.slots, _median(cli_times[label]))
        if tables:
            if len(tables) > 1:
                print_side_by_side(tables)
            print_goals(goal_results, start_s)

        scale_results: dict[str, dict[str, Any]] = {s.label: {} for s in setups}
        for big in scale_wanted:
            for setup in setups:
                figures = run_scale_case(setup, big, args.scale, args.slots, log)
                scale_results[setup.label][big.name] = figures
                print("\n" + "\n".join(scale.report(big.name, figures, setup.label)))
                for problem in figures["problems"]:
                    failed = True
                    print(f"{setup.label} {big.name}: PROBLEM: {problem}")
                if figures["problems"] and setup.cluster is not None:
                    print(setup.cluster.logs(), file=sys.stderr)
        print(f"\nload average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs: other work on the machine skews the figures")
        if args.json:
            args.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "loadavg_before": load_before,
                "repeat": args.repeat, "slots": args.slots, "image": TEST_IMAGE, "scale_factor": args.scale,
                "compare": {"ref": checkout.ref, "commit": checkout.commit} if checkout else None,
                "container_start_s": starts, "cli_startup_s": cli_times, "docker_direct_s": direct,
                "dstack": raw, "summary": dict(tables),
                "goals": {label: [{**vars(g), "passed": g.passed} for g in found] for label, found in goal_results},
                "scale": scale_results,
            }, indent=2, default=str))
            log(f"raw figures written to {args.json}")
        return 1 if failed else 0
    finally:
        stop_profilers(profilers)
        for setup in setups:
            setup.stop()
        for setup in setups:
            for worker_id in setup.worker_ids:
                _remove_leftover_containers(client, worker_id)
        if moto is not None:
            moto.stop()
        if checkout is not None:
            checkout.remove()
        if args.keep or failed:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
