"""Checks on the jobs a provider created, before any of them is recorded."""
from __future__ import annotations

import posixpath
from typing import Optional

from dstack.messages import JobSpec


def check_relative_path(path: str, what: str) -> str:
    """Return the normalised ``path`` if it stays inside the project root.

    Raises:
        ValueError: the path is absolute or leaves the root (``../x``).
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{what} must be a non-empty relative path")
    if path.startswith(("/", "~")) or "\\" in path:
        raise ValueError(f"{what} {path!r} must be relative to the project root, not absolute")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"{what} {path!r} leaves the project root")
    return normal


def check_job_graph(jobs: list[JobSpec]) -> list[JobSpec]:
    """Check a provider's jobs as a whole and return them.

    Raises:
        ValueError: no jobs, duplicate ids, a ``depends_on`` or ``master`` naming a job that
            does not exist, a dependency cycle, an unsafe artifact or working directory path,
            a port out of range, or an app on a port the job does not have. The message names the job.
    """
    if not jobs:
        raise ValueError("the provider created no jobs")
    by_id: dict[str, JobSpec] = {}
    for job in jobs:
        if job.job_id in by_id:
            raise ValueError(f"two jobs have the id {job.job_id!r}")
        by_id[job.job_id] = job
    for job in jobs:
        job.depends_on = list(dict.fromkeys(job.depends_on))  # a dependency named twice counts once
        for upstream in job.depends_on + ([job.master] if job.master else []):
            if upstream not in by_id:
                raise ValueError(f"job {job.job_id} depends on job {upstream!r}, which does not exist")
            if upstream == job.job_id:
                raise ValueError(f"job {job.job_id} depends on itself")
        job.artifacts = [check_relative_path(a, f"job {job.job_id}: artifact") for a in job.artifacts]
        if job.working_dir:
            job.working_dir = check_relative_path(job.working_dir, f"job {job.job_id}: working_dir")
        for port in job.ports:  # 0: any free port, chosen by the worker
            if not isinstance(port, int) or not 0 <= port < 65536:
                raise ValueError(f"job {job.job_id}: port {port!r} is not between 0 and 65535")
        for app in job.apps:
            if not 0 <= app.port_index < len(job.ports):
                raise ValueError(f"job {job.job_id}: app '{app.name}' listens on port {app.port_index}, but the "
                                 f"job has {len(job.ports)} port(s)")
    _check_acyclic(by_id)
    return jobs


def _check_acyclic(by_id: dict[str, JobSpec]) -> None:
    cycle = find_cycle({job_id: _upstream(job) for job_id, job in by_id.items()})
    if cycle:
        raise ValueError("dependency cycle: " + " -> ".join(cycle))


def find_cycle(graph: dict[str, list[str]]) -> Optional[list[str]]:
    """A cycle of ``graph`` (node -> the nodes it waits on) as ``[a, b, a]``, or ``None``.

    Iterative depth-first search: no recursion limit on deep graphs.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child) and child in graph:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(graph[child])))
    return None


def _upstream(job: JobSpec) -> list[str]:
    return job.depends_on + ([job.master] if job.master else [])
