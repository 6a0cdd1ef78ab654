"""The statuses of runs and tasks, shared by the scheduler, the workers, the messages and the CLI,
and the moves between them that the scheduler makes.

The tables below are the state machine: the scheduler changes a status only through one
transition function (:meth:`dstack.scheduler.flow.TaskFlow.move` for tasks,
:meth:`~dstack.scheduler.flow.TaskFlow.move_run` for runs), which calls :func:`check_task_move` or
:func:`check_run_move`. A move
that is not in its table is a bug in the scheduler, never a user's error: it raises
:class:`IllegalTransition`, an ``AssertionError``, so that tests surface it, and the change it was
part of is rolled back with its transaction. Saving a record without changing its status is no move.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Optional


class Status(str, enum.Enum):
    """Status of a run or a task (a provider run, a job, or a workflow record)."""

    SUBMITTED = "submitted"  #: recorded; waiting for what it depends on
    QUEUED = "queued"        #: on a task queue, waiting for a worker
    PULLING = "pulling"      #: a worker took it and pulls its image
    RUNNING = "running"
    RETRYING = "retrying"    #: failed, and runs again once its backoff has passed
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in FINISHED


#: The statuses a run or task never leaves by itself (only a restart moves it on).
FINISHED = frozenset({Status.DONE, Status.FAILED, Status.STOPPED})
#: The statuses of a task a worker is at work on (pulling its image, or running its container).
ACTIVE = frozenset({Status.PULLING, Status.RUNNING})

_S = Status

#: Where a task may go from each status. A task is created ``submitted``. ``submitted`` -> ``done``
#: is a workflow record whose provider and jobs are done, or the job and workflow record of local data
#: uploaded (recorded done, nothing runs); -> ``failed``/``stopped``: what it waits
#: on ended otherwise, or the run was stopped. ``retrying`` -> ``submitted``: its backoff passed.
#: Finished -> ``submitted``: the run was restarted (a done master with it, for its followers).
TASK_MOVES: Mapping[Status, frozenset[Status]] = {
    _S.SUBMITTED: frozenset({_S.QUEUED, _S.DONE, _S.FAILED, _S.STOPPED}),
    _S.QUEUED: frozenset({_S.PULLING, _S.RUNNING, _S.DONE, _S.FAILED, _S.STOPPED, _S.RETRYING}),
    _S.PULLING: frozenset({_S.RUNNING, _S.DONE, _S.FAILED, _S.STOPPED, _S.RETRYING}),
    _S.RUNNING: frozenset({_S.DONE, _S.FAILED, _S.STOPPED, _S.RETRYING}),
    _S.RETRYING: frozenset({_S.SUBMITTED, _S.FAILED, _S.STOPPED}),
    _S.DONE: frozenset({_S.SUBMITTED}),
    _S.FAILED: frozenset({_S.SUBMITTED}),
    _S.STOPPED: frozenset({_S.SUBMITTED}),
}

#: Where a run may go from each status. A run is created ``queued``; it runs from its first
#: task's start; it ends when its last task ends (an upload's run is recorded done at once); a restart
#: makes it ``queued`` again.
RUN_MOVES: Mapping[Status, frozenset[Status]] = {
    _S.QUEUED: frozenset({_S.RUNNING, *FINISHED}),
    _S.RUNNING: frozenset(FINISHED),
    _S.DONE: frozenset({_S.QUEUED}),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.STOPPED: frozenset({_S.QUEUED}),
}

#: The status every new task has, and every new run.
TASK_START: Status = _S.SUBMITTED
RUN_START: Status = _S.QUEUED


class IllegalTransition(AssertionError):
    """A status change the state machine does not allow: a bug in the scheduler."""


def check_task_move(before: Optional[Status], after: Status, what: str) -> None:
    """Refuse a task's move from ``before`` (``None`` for a new task) to ``after`` that
    :data:`TASK_MOVES` does not hold; ``what`` names the task in the message.

    Raises:
        IllegalTransition: the move is not allowed.
    """
    _check(TASK_MOVES, TASK_START, before, after, what)


def check_run_move(before: Optional[Status], after: Status, what: str) -> None:
    """Refuse a run's move that :data:`RUN_MOVES` does not hold (see :func:`check_task_move`)."""
    _check(RUN_MOVES, RUN_START, before, after, what)


def _check(moves: Mapping[Status, frozenset[Status]], start: Status, before: Optional[Status], after: Status,
           what: str) -> None:
    allowed = after is start if before is None else after in moves.get(before, frozenset())
    if not allowed:
        origin = "nothing (a new record)" if before is None else before.value
        raise IllegalTransition(f"{what}: no move from {origin} to {after.value}")

