"""Many runs at once: ``--runs`` one-job runs submitted by ``--clis`` CLI processes concurrently.

Starts a private RabbitMQ vhost, a scheduler and one worker (real processes, embedded local
storage in a temp folder; the same set-up as ``bench_noop``), writes one small project whose
workflow ``load`` has one provider making ONE job, and then starts ``--clis`` submitters at
once, each running ``dstack run load -d`` (a real CLI process) ``runs / clis`` times, one after
the other. It waits until every run is finished (polling ``dstack status --json``) and measures:

* the total wall time, from the first submission to the last run finished (scheduler timestamps),
  and runs per second;
* the submission time (first ``dstack run -d`` started to last one returned) and the latency of
  one ``dstack run -d`` under that load;
* the peak RSS (``VmHWM``) and threads of the scheduler and worker processes (not their children),
  also sampled every 0.5 s (``VmRSS``) to show the RSS before and after the load;
* the CPU seconds spent during the load by the scheduler, the worker, the CLI processes, Docker,
  RabbitMQ and the whole machine.

Checks (exit code 1 when one fails): every submission exited 0 with a run name, every run is
``done`` with one provider and one job, every task ran at attempt 1, and every job's container ran
exactly once: the job's command is ``curl -sf "http://127.0.0.1:PORT/hit/$RUN_NAME?..." && true``, to an
HTTP server in the benchmark that counts the hits of each run (exactly one each, none for a run it
did not submit).

Run from the repository root::

    .venv/bin/python -m bench.bench_load --runs 200 --clis 8 --slots 4 [--json out.json]

Needs RabbitMQ at 127.0.0.1:5672, the Docker engine and the ``python:3.9`` image (the same as the
integration tests). See bench/README.md.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import docker

from bench.bench_noop import WORKER_ID, _remove_leftover_containers, machine
from bench.procfs import proc_status, process_cpu_s
from dstack.names import WORKER_LABEL
from tests.projects import graph_project
from tests.s3server import free_port
from tests.services import REPO_ROOT, TEST_IMAGE, Cluster, Vhost, run_name_of, write_project

WORKFLOW = "load"
FINISHED = ("done", "failed", "stopped")
#: Seconds one ``dstack run -d`` or ``dstack status`` may take before it counts as failed.
CLI_TIMEOUT = 300.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- hit counter


class HitCounter:
    """A local HTTP server (the jobs use host networking) counting ``GET /hit/RUN_NAME`` per run."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.attempts: dict[str, list[str]] = {}
        lock = threading.Lock()
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if not parts.path.startswith("/hit/"):
                    self.send_error(404)
                    return
                run_name = parts.path[len("/hit/"):]
                with lock:
                    counter.hits[run_name] = counter.hits.get(run_name, 0) + 1
                    counter.attempts.setdefault(run_name, []).append(parts.query)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def command(self) -> str:
        # -f: an HTTP error or no server fails the job (and so the run), rather than passing unseen
        return f'curl -sf "http://127.0.0.1:{self.port}/hit/$RUN_NAME?job=$JOB_ID&attempt=$JOB_ATTEMPT"'

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- memory sampler


class MemorySampler(threading.Thread):
    """Samples VmRSS and Threads of the service processes (themselves, not their children)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[list[float]]] = {name: [] for name in pids}  # [t, rss KiB, threads]
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            for name, pid in self.pids.items():
                figures = proc_status(pid)
                if figures:
                    self.samples[name].append([now, figures.get("VmRSS", 0), figures.get("Threads", 0)])
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def pids_named(*names: str) -> dict[str, int]:
    """Processes of these exact names (``/proc/PID/comm``), e.g. dockerd: name -> pid (the first)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names and comm not in found:
                found[comm] = int(entry.name)
    return found


def machine_cpu_s() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs; /proc/stat, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent during the load by: the scheduler and the worker, the CLI processes this
    benchmark started (reaped children), the Docker engine (dockerd, containerd), the RabbitMQ node,
    and the whole machine (other work included)."""

    def __init__(self, services: dict[str, int]) -> None:
        self.pids = {**services, **pids_named("dockerd", "containerd", "beam.smp")}
        self.start = self._read()

    def _read(self) -> dict[str, Optional[float]]:
        figures: dict[str, Optional[float]] = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        figures["cli_processes"] = children.ru_utime + children.ru_stime
        figures["machine"] = machine_cpu_s()
        figures["wall"] = time.time()
        return figures

    def since_start(self) -> dict[str, Optional[float]]:
        end = self._read()
        return {name: (end[name] - self.start[name]  # type: ignore[operator]
                       if end.get(name) is not None and self.start.get(name) is not None else None)
                for name in end}


# --------------------------------------------------------------------------- submitters


def submitter(cluster: Cluster, project: Path, count: int, out: list[dict[str, Any]], go: threading.Event) -> None:
    """``dstack run WORKFLOW -d``, ``count`` times one after the other; each result appended to ``out``."""
    go.wait()
    for _ in range(count):
        began = time.time()
        try:
            result = cluster.dstack("run", WORKFLOW, "-d", cwd=project, timeout=CLI_TIMEOUT)
            rc, run_name, err = result.returncode, run_name_of(result), result.stderr
        except subprocess.TimeoutExpired as e:
            rc, run_name, err = -1, "", f"timed out after {e.timeout:.0f} s"
        out.append({"began": began, "ended": time.time(), "rc": rc, "run_name": run_name,
                    "stderr": err[-2000:] if rc else ""})


def get_runs(cluster: Cluster, limit: int) -> Optional[list[dict[str, Any]]]:
    """``dstack status --json -n LIMIT`` (None if the CLI failed: the poll is tried again)."""
    try:
        result = cluster.dstack("status", "--json", "-n", str(limit), timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        log(f"`dstack status` exited {result.returncode}: {result.stderr.strip()[-500:]}")
        return None
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- checks and figures


def check(submissions: list[dict[str, Any]], runs: dict[str, dict[str, Any]], counter: HitCounter,
          expected: int, warmup: Optional[str]) -> list[str]:
    """Everything that went wrong, one line each (empty: all checks pass)."""
    problems: list[str] = []
    failed = [s for s in submissions if s["rc"] != 0 or not s["run_name"]]
    for s in failed[:10]:
        problems.append(f"`dstack run -d` exited {s['rc']} (run name {s['run_name']!r}): {s['stderr'].strip()}")
    names = [s["run_name"] for s in submissions if s["run_name"]]
    if len(submissions) != expected:
        problems.append(f"{len(submissions)} submissions made, {expected} expected")
    if len(set(names)) != len(names):
        problems.append(f"{len(names) - len(set(names))} run names were given twice")
    for name in names:
        run = runs.get(name)
        if run is None:
            problems.append(f"{name}: not listed by `dstack status`")
            continue
        if run["status"] != "done":
            problems.append(f"{name}: {run['status']} ({run.get('reason')!r})")
        kinds = sorted(j["kind"] for j in run["jobs"])
        if kinds != ["job", "provider"]:
            problems.append(f"{name}: tasks {kinds}, expected one provider and one job")
        for job in run["jobs"]:
            if job["status"] != "done" or job["attempt"] != 1:
                problems.append(f"{name}/{job['job_id']}: {job['status']} at attempt {job['attempt']} "
                                f"({job.get('reason')!r})")
        hits = counter.hits.get(name, 0)
        if hits != 1:
            problems.append(f"{name}: its job's container hit the counter {hits} times "
                            f"({counter.attempts.get(name)}), expected once")
    strangers = set(counter.hits) - set(names) - {warmup}
    if strangers:
        problems.append(f"hits from runs not submitted here: {sorted(strangers)}")
    return problems


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def figures_of(submissions: list[dict[str, Any]], runs: dict[str, dict[str, Any]],
               samples: dict[str, list[list[float]]], hwm: dict[str, dict[str, int]], began: float,
               all_finished_seen: Optional[float]) -> dict[str, Any]:
    mine = [runs[s["run_name"]] for s in submissions if s["run_name"] in runs]
    finished = [r["finished_at"] for r in mine if r.get("finished_at")]
    latencies = [s["ended"] - s["began"] for s in submissions]
    submit_span = max(s["ended"] for s in submissions) - began if submissions else float("nan")
    last_finished = max(finished) if finished else float("nan")
    total = last_finished - began
    turnaround = [r["finished_at"] - r["submitted_at"] for r in mine if r.get("finished_at")]
    jobs = [j for r in mine for j in r["jobs"] if j["kind"] == "job" and j.get("started_at")]
    providers = [j for r in mine for j in r["jobs"] if j["kind"] == "provider" and j.get("started_at")]
    queue_wait = [p["started_at"] - r["submitted_at"] for r in mine for p in r["jobs"]
                  if p["kind"] == "provider" and p.get("started_at")]
    memory: dict[str, Any] = {}
    for name, series in samples.items():
        rss = [s[1] for s in series]
        memory[name] = {
            "vmhwm_kib": hwm.get(name, {}).get("VmHWM"),
            # VmHWM can lag VmRSS a little (per-thread RSS counters are folded in lazily)
            "peak_kib": max([hwm.get(name, {}).get("VmHWM") or 0, *rss]) or None,
            "rss_before_kib": rss[0] if rss else None,
            "rss_peak_sampled_kib": max(rss) if rss else None,
            "rss_end_kib": rss[-1] if rss else None,
            "threads_max": max((s[2] for s in series), default=None),
            "threads_end": series[-1][2] if series else None,
            "samples": len(series),
        }
    return {
        "total_s": total,
        "runs_per_s": len(finished) / total if total > 0 else float("nan"),
        "submission_s": submit_span,
        "submissions_per_s": len(submissions) / submit_span if submit_span > 0 else float("nan"),
        "submit_latency_s": {"median": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95),
                             "max": max(latencies, default=float("nan"))},
        "run_turnaround_s": {"median": _pct(turnaround, 0.5), "p95": _pct(turnaround, 0.95),
                             "max": max(turnaround, default=float("nan"))},
        "submitted_to_provider_started_s": {"median": _pct(queue_wait, 0.5), "p95": _pct(queue_wait, 0.95),
                                            "max": max(queue_wait, default=float("nan"))},
        "last_submission_to_last_finished_s": last_finished - max(s["ended"] for s in submissions)
        if submissions else float("nan"),
        "last_finished_to_seen_by_poll_s": (all_finished_seen - last_finished) if all_finished_seen else None,
        "containers_started": len(jobs) + len(providers),
        "memory": memory,
    }


def print_table(args: argparse.Namespace, f: dict[str, Any], problems: list[str], hits: int,
                load_before: tuple, load_after: tuple) -> None:
    mib = lambda kib: f"{kib / 1024:.1f} MiB" if kib else "-"  # noqa: E731
    rows = [
        ("runs / CLI processes / worker slots", f"{args.runs} / {args.clis} / {args.slots}"),
        ("total: first submission -> last run finished", f"{f['total_s']:.1f} s"),
        ("runs per second (overall)", f"{f['runs_per_s']:.2f}"),
        ("submission: first `run -d` started -> last returned", f"{f['submission_s']:.1f} s "
         f"({f['submissions_per_s']:.2f} runs/s)"),
        ("one `dstack run -d` (median / p95 / max)", "{median:.2f} / {p95:.2f} / {max:.2f} s".format(
            **f["submit_latency_s"])),
        ("run submitted -> finished (median / p95 / max)", "{median:.1f} / {p95:.1f} / {max:.1f} s".format(
            **f["run_turnaround_s"])),
        ("run submitted -> provider running (median / p95 / max)", "{median:.1f} / {p95:.1f} / {max:.1f} s".format(
            **f["submitted_to_provider_started_s"])),
        ("last submission returned -> last run finished", f"{f['last_submission_to_last_finished_s']:.1f} s"),
        ("containers started (providers + jobs) / counter hits", f"{f['containers_started']} / {hits}"),
    ]
    for name, m in f["memory"].items():
        rows.append((f"{name}: peak RSS (max of VmHWM and samples)", mib(m["peak_kib"])))
        rows.append((f"{name}: RSS before / sampled peak / end", f"{mib(m['rss_before_kib'])} / "
                     f"{mib(m['rss_peak_sampled_kib'])} / {mib(m['rss_end_kib'])}"))
        rows.append((f"{name}: threads max / end", f"{m['threads_max']} / {m['threads_end']}"))
    c = f.get("cpu_s", {})
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    rows.append(("CPU s during the load: scheduler / worker", f"{fmt(c.get('scheduler'))} / {fmt(c.get('worker'))}"))
    rows.append(("CPU s: CLI processes (all `run -d` + `status` polls)",
                 f"{fmt(c.get('cli_processes'))} (about {c.get('per_run_submission_estimate', 0):.2f} "
                 f"per `run -d`, {c.get('one_status_poll', 0):.2f} per `status`)"))
    rows.append(("CPU s: dockerd / containerd / RabbitMQ (beam.smp)",
                 f"{fmt(c.get('dockerd'))} / {fmt(c.get('containerd'))} / {fmt(c.get('beam.smp'))}"))
    if c.get("machine") is not None and c.get("wall"):
        rows.append(("CPU s: whole machine (others' work included) / wall",
                     f"{c['machine']:.1f} / {c['wall']:.1f} s ({c['machine'] / c['wall']:.2f} of "
                     f"{os.cpu_count()} CPUs busy)"))
    rows.append(("load average (1 min) before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f} "
                 f"on {os.cpu_count()} CPUs"))
    rows.append(("checks", "all passed" if not problems else f"{len(problems)} FAILED"))
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label.ljust(width)}  {value}")
    for problem in problems[:50]:
        print(f"  FAILED: {problem}")
    if len(problems) > 50:
        print(f"  ... and {len(problems) - 50} more")


def rabbitmq_connections(vhost: str) -> Optional[int]:
    """How many connections the broker holds on ``vhost`` (None if rabbitmqctl failed)."""
    result = subprocess.run(["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "vhost"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return sum(1 for line in result.stdout.splitlines() if line.strip() == vhost)


# --------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs to submit in all")
    parser.add_argument("--clis", type=int, default=8, help="CLI processes submitting at once")
    parser.add_argument("--slots", type=int, default=4, help="worker slots")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait for every run to finish before giving up (a failure)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between `dstack status` polls")
    parser.add_argument("--json", type=Path, help="write the raw figures (every submission and run) here")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (not counted)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp folder (scheduler and worker logs); kept anyway when a check fails")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.clis < 1 or args.slots < 1:
        parser.error("--runs, --clis and --slots must be at least 1")

    client = docker.from_env()
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        log(f"image {TEST_IMAGE} is missing; run scripts/build-images.sh")
        return 2

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # clean up (finally below) on SIGTERM as on Ctrl-C
    root = Path(tempfile.mkdtemp(prefix="dstack-bench-load-"))
    keep = args.keep
    vhost: Optional[Vhost] = None
    cluster: Optional[Cluster] = None
    counter: Optional[HitCounter] = None
    sampler: Optional[MemorySampler] = None
    try:
        counter = HitCounter()
        vhost = Vhost()
        cluster = Cluster(root / "cluster", vhost.url, {"DSTACK_STORAGE_URL": (root / "storage").as_uri()})
        cluster.start_scheduler()
        cluster.start_worker(WORKER_ID, slots=args.slots, DSTACK_NETWORK="host")  # jobs reach the counter
        project = write_project(root / "project", graph_project([
            {"name": WORKFLOW, "jobs": [{"commands": [counter.command(), "true"], "image": TEST_IMAGE}]}]))
        pids = {"scheduler": cluster.processes["scheduler"].pid, "worker": cluster.processes[WORKER_ID].pid}
        log(f"cluster up in {root} (vhost {vhost.name}, scheduler pid {pids['scheduler']}, "
            f"worker pid {pids['worker']}, hit counter on port {counter.port})")

        warmup: Optional[str] = None
        if not args.no_warmup:  # fills caches (snapshot blobs, bytecode); not counted
            result = cluster.dstack("run", WORKFLOW, cwd=project, timeout=CLI_TIMEOUT)
            warmup = run_name_of(result)
            if result.returncode != 0:
                raise RuntimeError(f"warm-up run exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
                                   f"{cluster.logs()}")
            log(f"warm-up run {warmup} done")

        sampler = MemorySampler(pids)
        sampler.start()
        time.sleep(1.0)  # a few samples before the load
        load_before = os.getloadavg()
        cpu = CpuMeter(pids)

        per_cli = [args.runs // args.clis + (1 if i < args.runs % args.clis else 0) for i in range(args.clis)]
        results: list[list[dict[str, Any]]] = [[] for _ in per_cli]
        go = threading.Event()
        threads = [threading.Thread(target=submitter, args=(cluster, project, n, out, go), daemon=True)
                   for n, out in zip(per_cli, results) if n]
        for thread in threads:
            thread.start()
        began = time.time()
        go.set()
        log(f"{len(threads)} submitters started ({args.runs} runs)")

        limit = args.runs + 50
        deadline = time.monotonic() + args.timeout
        runs: dict[str, dict[str, Any]] = {}
        all_finished_seen: Optional[float] = None
        polls = 0
        last_report = 0.0
        while True:
            time.sleep(args.poll)
            for name, process in cluster.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited {process.returncode} during the load\n{cluster.logs()}")
            listed = get_runs(cluster, limit)
            polls += 1
            if listed is not None:
                runs = {r["run_name"]: r for r in listed}
            submissions = [s for out in results for s in out]
            names = [s["run_name"] for s in submissions if s["run_name"]]
            finished = sum(1 for n in names if runs.get(n, {}).get("status") in FINISHED)
            submitting = any(t.is_alive() for t in threads)
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                log(f"{time.time() - began:6.1f} s: {len(submissions)} submitted, {finished} finished")
            if not submitting and listed is not None and finished == len(names):
                all_finished_seen = time.time()
                break
            if time.monotonic() > deadline:
                unfinished = [n for n in names if runs.get(n, {}).get("status") not in FINISHED]
                log(f"timed out after {args.timeout:.0f} s: {len(submissions)} submitted, "
                    f"{len(unfinished)} of them not finished, e.g. "
                    + "; ".join(f"{n}: {runs.get(n, {}).get('status')} "
                                f"{[(j['job_id'], j['status'], j.get('reason')) for j in runs.get(n, {}).get('jobs', [])]}"  # noqa: E501
                                for n in unfinished[:10]))
                break
        for thread in threads:  # after a time-out, let the submissions still under way end
            thread.join(CLI_TIMEOUT)
        cpu_used = cpu.since_start()
        before_poll = resource.getrusage(resource.RUSAGE_CHILDREN)
        listed = get_runs(cluster, limit)  # the final state, for the checks and the figures
        after_poll = resource.getrusage(resource.RUSAGE_CHILDREN)
        if listed is not None:
            runs = {r["run_name"]: r for r in listed}
        # one `dstack status` alone, to split the CLI processes' CPU between submissions and polls
        cpu_used["one_status_poll"] = (after_poll.ru_utime + after_poll.ru_stime
                                       - before_poll.ru_utime - before_poll.ru_stime)
        sampler.stop()
        load_after = os.getloadavg()
        hwm = {name: proc_status(pid) for name, pid in pids.items()}
        connections = rabbitmq_connections(vhost.name)
        leftover = len(client.containers.list(all=True, filters={"label": f"{WORKER_LABEL}={WORKER_ID}"}))

        submissions = sorted((s for out in results for s in out), key=lambda s: s["began"])
        problems = check(submissions, runs, counter, args.runs, warmup)
        if all_finished_seen is None:
            problems.insert(0, f"not every run finished within {args.timeout:.0f} s")
        f = figures_of(submissions, runs, sampler.samples, hwm, began, all_finished_seen)
        cpu_used["per_run_submission_estimate"] = ((cpu_used["cli_processes"] - polls * cpu_used["one_status_poll"])
                                                  / max(1, len(submissions)))
        f.update({"status_polls": polls, "rabbitmq_connections_end": connections, "containers_left": leftover,
                  "cpu_s": cpu_used})
        print_table(args, f, problems, sum(counter.hits.get(s["run_name"], 0) for s in submissions),
                    load_before, load_after)
        print(f"broker connections on the vhost at the end: {connections}; containers left: {leftover}; "
              f"`dstack status` polls: {polls}")
        if problems:
            keep = True
            log("\n----- logs (tails)\n" + cluster.logs())
        if args.json:
            args.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                "loadavg_before": load_before, "loadavg_after": load_after,
                "runs": args.runs, "clis": args.clis, "slots": args.slots, "image": TEST_IMAGE,
                "began": began, "figures": f, "problems": problems, "warmup_run": warmup,
                "submissions": submissions, "hits": counter.hits,
                "runs_status": [runs.get(s["run_name"]) for s in submissions],
                "memory_samples": sampler.samples,
            }, indent=2))
            log(f"raw figures written to {args.json}")
        return 1 if problems else 0
    except BaseException:
        keep = True
        raise
    finally:  # each step on its own, so that one failing does not leave processes or the vhost behind
        for step in (sampler.stop if sampler is not None else None,
                     cluster.stop if cluster is not None else None,
                     lambda: _remove_leftover_containers(client),
                     vhost.delete if vhost is not None else None,
                     counter.stop if counter is not None else None):
            if step is not None:
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - clean-up goes on
                    log(f"clean-up step failed: {e!r}")
        if keep:
            log(f"kept {root} (scheduler and worker logs in {root / 'cluster'})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
