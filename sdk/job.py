"""The :class:`Job` a provider creates."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from .app import App
from .resources import ResourceRequirements
from .retry import Retry, parse_duration_s


class Job:
    """One container to run.

    Args:
        image: the Docker image.
        commands: shell commands, run in order as ``/bin/sh -c 'c1 && c2'``; none (or leaving them
            out) runs the image's own command (its ENTRYPOINT and CMD).
        ports: ports the container opens; ``0`` asks for any free port. The ports actually used
            reach the job as ``JOB_PORT_<i>`` (and ``PORT_<i>``) and are shown by ``dstack status``.
        working_dir: folder to run in, relative to the project root (the default).
        artifacts: folders, relative to the project root, synced to storage while the job runs and when it ends.
        resources: CPUs, memory and GPUs the job needs.
        depends_on: jobs that must be done before this one starts.
        master: a job this one talks to; this job starts once the master runs and gets
            ``MASTER_JOB_HOSTNAME`` and ``MASTER_JOB_PORT_<i>``.
        environment: extra environment variables.
        retry: run the job again when it fails (default: as its workflow's ``retry`` says, else never).
        max_duration: how long the job may run, e.g. ``"2h"``; it is stopped and fails past it
            (default: as its workflow's ``max_duration`` says, else no limit).
        apps: web applications the job serves on its ports; ``dstack status`` shows their URLs.
        registry_auth: ``{"username": ..., "password": ...}`` for the registry of ``image``; a value may be
            ``${{ secrets.NAME }}`` (default: as its workflow's ``registry_auth`` says, else the worker's own).
        pull_policy: when the worker pulls ``image``: ``if-not-present``, ``always`` or ``never`` (default: as
            its workflow's ``pull_policy`` says, else the worker's policy).
        image_name: early dstack's name of ``image`` (give one of the two).
        port_count: early dstack's way to ask for ports: ``port_count=2`` is ``ports=[0, 0]``, two
            free ports. Beside ``ports`` it must equal their number.
    """

    def __init__(self, image: Optional[str] = None, commands: Optional[List[str]] = None,
                 ports: Optional[List[int]] = None,
                 working_dir: Optional[str] = None, artifacts: Optional[List[str]] = None,
                 resources: Optional[ResourceRequirements] = None,
                 depends_on: Optional[List[Job]] = None, master: Optional[Job] = None,
                 environment: Optional[Dict[str, str]] = None, retry: Optional[Retry] = None,
                 max_duration: Union[str, int, float, None] = None, apps: Optional[List[App]] = None,
                 image_name: Optional[str] = None, port_count: Optional[int] = None,
                 registry_auth: Optional[Dict[str, str]] = None, pull_policy: Optional[str] = None) -> None:
        image = _one_image(image, image_name)
        if not isinstance(image, str) or not image:
            raise ValueError("Job(image=...) must be a non-empty image name")
        if isinstance(commands, str) or not all(isinstance(c, str) for c in commands or []):
            raise ValueError("Job(commands=...) must be a list of strings")
        self.image = image
        self.commands = list(commands or [])
        self.ports = _ports(ports, port_count)
        self.working_dir = working_dir or ""
        self.artifacts = list(artifacts or [])
        self.resources = resources or ResourceRequirements()
        self.depends_on = list(depends_on or [])
        self.master = master
        self.environment = {str(k): str(v) for k, v in (environment or {}).items()}
        if retry is not None and not isinstance(retry, Retry):
            raise ValueError("Job(retry=...) must be a dstack.Retry")
        self.retry = retry
        self.max_duration_s = parse_duration_s(max_duration, "Job(max_duration=...)")
        self.registry_auth = _registry_auth(registry_auth)
        if pull_policy not in (None, "if-not-present", "always", "never"):
            raise ValueError(f"Job(pull_policy=...) must be if-not-present, always or never, not {pull_policy!r}")
        self.pull_policy = pull_policy
        self.apps = list(apps or [])
        for app in self.apps:
            if not isinstance(app, App):
                raise ValueError("Job(apps=...) must be a list of dstack.App")
            if app.port_index >= len(self.ports):
                raise ValueError(f"app '{app.name}' listens on port {app.port_index}, but the job has "
                                 f"{len(self.ports)} port(s)")

    def __repr__(self) -> str:
        return f"Job(image={self.image!r}, commands={self.commands!r})"


def _registry_auth(auth: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
    if auth is None:
        return None
    if not isinstance(auth, dict) or set(auth) != {"username", "password"} or not all(
            isinstance(v, str) and v for v in auth.values()):
        raise ValueError("Job(registry_auth=...) must be {'username': ..., 'password': ...}")
    return dict(auth)


def _one_image(image: Optional[str], image_name: Optional[str]) -> Optional[str]:
    """``image``, or early dstack's ``image_name`` for it; both are refused unless they agree."""
    if image_name is None:
        return image
    if image is not None and image != image_name:
        raise ValueError(f"Job(image={image!r}, image_name={image_name!r}): image_name is the older name of "
                         "image and the two differ; give image only")
    return image_name


def _ports(ports: Optional[List[int]], port_count: Optional[int]) -> List[int]:
    """The job's ports: ``ports`` (``0``: any free port), or ``port_count`` free ports.

    Raises:
        ValueError: a port is not a number, ``port_count`` is not a whole number >= 0, or ``ports``
            lists some ports and ``port_count`` says another number of them.
    """
    listed = [int(p) for p in ports or []]
    if port_count is None:
        return listed
    if not isinstance(port_count, int) or isinstance(port_count, bool) or port_count < 0:
        raise ValueError(f"Job(port_count=...) must be a whole number >= 0, not {port_count!r}")
    if not listed:
        return [0] * port_count
    if len(listed) != port_count:
        raise ValueError(f"Job(ports={listed!r}, port_count={port_count}): ports lists {len(listed)} port(s), "
                         f"port_count asks for {port_count}; give ports only (0 for any free port, e.g. "
                         f"ports={[0] * port_count!r}) or port_count only")
    return listed


def jobs_to_dicts(jobs: List[Job]) -> List[Dict[str, Any]]:
    """The jobs as ``jobs.json`` holds them: each in the wire form of ``dstack.messages.JobSpec``
    (the same field names and nesting), read by the worker with ``from_dict(JobSpec, ...)``.

    A job's id is its index in ``jobs`` (``"0"``, ``"1"``, ...); ``depends_on`` and ``master``
    name jobs by that id.

    Raises:
        ValueError: a job's ``depends_on`` or ``master`` names a job that is not in ``jobs``.
    """
    index = {id(job): str(i) for i, job in enumerate(jobs)}

    def ref(job: Job, of: int, what: str) -> str:
        if id(job) not in index:
            raise ValueError(f"job {of} ({jobs[of]!r}): its {what} names a job that create_jobs() did not return")
        return index[id(job)]

    return [{
        "job_id": str(i),
        "image": job.image,
        "commands": job.commands,
        "working_dir": job.working_dir,
        "ports": job.ports,
        "artifacts": job.artifacts,
        "resources": job.resources.to_dict(),
        "depends_on": [ref(dep, i, "depends_on") for dep in job.depends_on],
        "master": ref(job.master, i, "master") if job.master is not None else None,
        "env": job.environment,
        "retry": job.retry.to_dict() if job.retry else None,
        "max_duration_s": job.max_duration_s,
        "apps": [app.to_dict() for app in job.apps],
        "registry_auth": job.registry_auth,
        "pull_policy": job.pull_policy,
    } for i, job in enumerate(jobs)]
