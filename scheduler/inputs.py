"""The artifacts a workflow starts with that come from other runs, resolved when the run is submitted:
``WORKFLOW:TAG`` and ``:TAG`` entries of ``depends-on``, and the runs a built-in provider names in ``runs``
(tensorboard's). Each refuses, saying why, what cannot be had, so a bad submission records nothing.
Call them inside the store's transaction.
"""
from __future__ import annotations

from dstack.errors import RequestRejected
from dstack.messages import ArtifactRef, TagRef, WorkflowSpec, run_input_folder
from dstack.names import is_valid_name, is_valid_tag
from dstack.scheduler.model import RunRecord, Status, TaskRecord
from dstack.scheduler.store import StateStore


def tag_inputs(store: StateStore, spec: WorkflowSpec) -> list[ArtifactRef]:
    """The artifacts the ``WORKFLOW:TAG`` entries of a workflow name; refuses unknown tags."""
    return [ref for tagged in spec.tagged for ref in _tagged_artifacts(store, spec.name, "depends on", tagged)]


def _tagged_artifacts(store: StateStore, workflow: str, uses: str, tagged: TagRef,
                      target: str = "") -> list[ArtifactRef]:
    """The artifacts of ``tagged`` (``WORKFLOW:TAG``, or ``:TAG`` for every job of the tagged run that left
    artifacts, an upload's), which ``workflow`` ``uses`` (depends on, names in runs), put below ``target``;
    refuses an unknown tag, a workflow not done in the tagged run, or (``:TAG``) a tagged run not finished or
    without artifacts."""
    tag = store.get_tag(tagged.tag)
    if tag is None:
        known = ", ".join(t.tag for t in store.list_tags()) or "none"
        raise RequestRejected(f"workflow '{workflow}' {uses} {tagged.workflow}:{tagged.tag}, but there "
                              f"is no tag '{tagged.tag}' (known tags: {known})")
    run_name = tag.run_name
    if not tagged.workflow:
        return _run_artifacts(store, workflow, uses, tagged.tag, run_name, target)
    record = store.get_task(run_name, tagged.workflow)
    if record is None or record.status is not Status.DONE:
        state = "is not part of it" if record is None else f"is {record.status.value} there"
        raise RequestRejected(f"tag '{tagged.tag}' names run {run_name}, but workflow "
                              f"'{tagged.workflow}' {state}")
    return [ArtifactRef(run_name, job.task_id, target) for job in store.jobs_of(run_name, tagged.workflow)
            if job.job_state.job.artifacts]


def _run_artifacts(store: StateStore, workflow: str, uses: str, tag: str, run_name: str,
                   target: str) -> list[ArtifactRef]:
    """The artifacts of every job of ``run_name`` (tagged ``tag``) that left some, for ``:TAG``."""
    run = store.get_run(run_name)
    if run is None or not run.status.finished:
        state = "is gone" if run is None else f"is {run.status.value}"
        raise RequestRejected(f"workflow '{workflow}' {uses} :{tag}, but run {run_name}, which tag '{tag}' names, "
                              f"{state}; use it once it has finished")
    refs = [ArtifactRef(run_name, task.task_id, target) for task in store.tasks_of(run_name)
            if _left_artifacts(task, run)]
    if not refs:
        raise RequestRejected(f"workflow '{workflow}' {uses} :{tag}, but run {run_name}, which tag '{tag}' names, "
                              f"left no artifacts")
    return refs


def run_inputs(store: StateStore, spec: WorkflowSpec) -> list[ArtifactRef]:
    """The artifacts of the runs a workflow names in ``runs``, each below its own folder
    (:func:`~dstack.messages.run_input_folder`): of a run name, every job of that run that left
    artifacts (the jobs that are done, and those that failed or were stopped after their container
    ended, which upload theirs too); of ``WORKFLOW:TAG``, the jobs of that workflow in the tagged
    run, as in ``depends-on`` (of ``:TAG``, every job of the tagged run that left artifacts). Refuses an
    unknown run, a run that has not finished and a bad entry."""
    refs: list[ArtifactRef] = []
    for entry in dict.fromkeys(spec.runs):
        target = run_input_folder(entry)
        workflow, colon, tag = entry.partition(":")
        if colon:
            if not ((not workflow or is_valid_name(workflow)) and is_valid_tag(tag)):
                raise RequestRejected(f"workflow '{spec.name}' names {entry!r} in runs: write a run name, "
                                      f"WORKFLOW:TAG or :TAG")
            refs += _tagged_artifacts(store, spec.name, "names in runs", TagRef(workflow, tag), target)
            continue
        run = store.get_run(entry) if is_valid_name(entry) else None
        if run is None:
            raise RequestRejected(f"workflow '{spec.name}' names run '{entry}' in runs, but there is no run "
                                  f"named '{entry}' (`dstack status` lists the runs; a tagged run is "
                                  f"WORKFLOW:TAG)")
        if not run.status.finished:
            raise RequestRejected(f"workflow '{spec.name}' names run '{entry}' in runs, which is "
                                  f"{run.status.value}; name it once it has finished")
        refs += [ArtifactRef(entry, task.task_id, target) for task in store.tasks_of(entry)
                 if _left_artifacts(task, run)]
    return refs


def _left_artifacts(task: TaskRecord, run: RunRecord) -> bool:
    """Whether ``task``, of the finished ``run``, is a job whose artifacts are stored: it has artifact
    folders and is done, or its container ended (an exit code) and the run was not aborted (a worker
    uploads a job's artifacts whenever its container ends, unless told to abort)."""
    job = task.job_spec
    if job is None or not job.artifacts:
        return False
    return task.status is Status.DONE or (task.exit_code is not None and not run.abort)
