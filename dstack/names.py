"""Queue names, exchange names, storage keys and container names: built here and nowhere else."""
from __future__ import annotations

import hashlib
import re
import secrets
from typing import Optional

from dstack.messages import Resources
from dstack.placement import gpu_model
from dstack.storage.base import check_key

#: Events from workers to the scheduler (Dramatiq queue).
EVENTS_QUEUE = "dstack.events"
#: Requests from the CLI and workers to the scheduler (request/reply).
RPC_QUEUE = "dstack.rpc"
#: The exchange requests are published to (routing key :data:`RPC_QUEUE`): the one thing a user's broker account
#: may publish to (not the default exchange, through which it could reach any queue).
REQUESTS_EXCHANGE = "dstack.requests"
#: Topic exchange of live log chunks; routing key: :func:`live_routing_key`.
LOGS_EXCHANGE = "dstack.logs"
#: Topic exchange of run and job status changes; routing key: :func:`live_routing_key`.
UPDATES_EXCHANGE = "dstack.updates"
#: RabbitMQ's name of the default exchange (``""``) in permissions: Dramatiq publishes through it.
DEFAULT_EXCHANGE = "amq.default"
#: RabbitMQ's pseudo-queue for direct reply-to: where a request's reply comes back.
REPLY_TO_QUEUE = "amq.rabbitmq.reply-to"
#: Dramatiq actor of the tasks on the task queues (workers read them with their own consumer).
TASK_ACTOR = "run_task"
#: Dramatiq actor of a worker's control queue (stop requests, opened queues).
CONTROL_ACTOR = "control"
#: Dramatiq actor of the scheduler that handles worker events, on :data:`EVENTS_QUEUE`.
EVENT_ACTOR = "handle_event"
#: Label put on every container dstack starts.
CONTAINER_LABEL = "ai.dstack.task"
#: Label naming the worker that started a container.
WORKER_LABEL = "ai.dstack.worker"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` may be a run, workflow or job name part (letters, digits, ``-``, ``_``)."""
    return bool(_NAME.fullmatch(name))


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` may name a run (letters, digits, ``.``, ``-``, ``_``)."""
    return bool(_TAG.fullmatch(tag))


def env_name(variable: str) -> str:
    """The environment variable a variable reaches the provider and the jobs as: upper case, ``-`` as
    ``_`` (``batch-size`` -> ``BATCH_SIZE``), a name a shell can read."""
    return variable.upper().replace("-", "_")


#: What every task queue's name starts with.
TASK_QUEUE_PREFIX = "dstack.tasks."
#: The queue of tasks that ask for no particular resources; every worker takes from it.
DEFAULT_TASK_QUEUE = TASK_QUEUE_PREFIX + "cpu"


def task_queue(needs: Optional[Resources] = None) -> str:
    """The queue of tasks that need exactly ``needs``: one queue per kind of task, named after
    what it needs (``dstack.tasks.gpu2xa100-vram40960mib-cpu8``), so that a worker takes only from
    queues whose tasks fit what it has free. GPU memory, CPUs and memory name the queue only when
    asked for; shared memory is no resource a worker counts."""
    parts = []
    if needs is not None:
        if needs.gpu_count:
            model = gpu_model(needs.gpu_name) if needs.gpu_name else "any"
            if len(model) > 32:  # queue names have at most 255 bytes
                model = model[:24] + hashlib.sha1(model.encode()).hexdigest()[:8]
            parts.append(f"gpu{needs.gpu_count}x{model}")
            if needs.gpu_memory_mib:
                parts.append(f"vram{needs.gpu_memory_mib}mib")
        if needs.cpu:
            parts.append(f"cpu{needs.cpu:.3f}".rstrip("0").rstrip("."))
        if needs.memory_mib:
            parts.append(f"mem{needs.memory_mib}mib")
    return f"{TASK_QUEUE_PREFIX}{'-'.join(parts)}" if parts else DEFAULT_TASK_QUEUE


def live_routing_key(owner: str, run_name: str) -> str:
    """The routing key of a run's live notifications: ``OWNER.RUN``, so that RabbitMQ's topic permissions can
    let a user's account follow only their own runs (``DSTACK_VISIBILITY=own``)."""
    return f"{owner}.{run_name}"


def user_queue(user: str, name: str) -> str:
    """A queue of the broker account ``user`` (live notifications): the only queues its account may declare
    and read."""
    return f"dstack.user.{user}.{name}"


def worker_queue(worker_id: str) -> str:
    """The control queue of one worker (stop requests)."""
    return f"dstack.worker.{worker_id}"


def delay_queue(queue: str) -> str:
    """Where Dramatiq holds ``queue``'s delayed messages (``dramatiq.common.dq_name``, without loading Dramatiq)."""
    return f"{queue}.DQ"


def dead_letter_queue(queue: str) -> str:
    """Where Dramatiq's queue ``queue`` puts the messages nobody could handle (Dramatiq's naming)."""
    return f"{queue}.XQ"


def provider_task_id(workflow: str) -> str:
    """The id of the task that runs ``workflow``'s provider."""
    return f"{workflow}.provider"


def job_id(workflow: str, index: int) -> str:
    """The id of the ``index``-th job ``workflow``'s provider created."""
    return f"{workflow}.{index}"


def container_name(run_name: str, task_id: str, attempt: int) -> str:
    """The deterministic name of a task's container: a second start finds the first."""
    return f"dstack-{run_name}-{task_id.replace('.', '-')}-{attempt}"


def snapshot_blob_key(digest: str) -> str:
    return check_key(f"blobs/{digest[:2]}/{digest}")


def snapshot_key(snapshot_id: str) -> str:
    return check_key(f"snapshots/{snapshot_id}.json")


def run_prefix(run_name: str) -> str:
    """Where everything a run stored lives (its logs, artifacts and manifests): ``runs/RUN/``."""
    return f"runs/{check_key(run_name)}/"


def log_prefix(run_name: str, task_id: str = "") -> str:
    return f"runs/{run_name}/logs/{task_id + '/' if task_id else ''}"


def log_chunk_key(run_name: str, task_id: str, chunk: int) -> str:
    return check_key(f"{log_prefix(run_name, task_id)}{chunk:010d}.msgpack")


def artifacts_prefix(run_name: str, job_id: str = "") -> str:
    return f"runs/{run_name}/artifacts/{job_id + '/' if job_id else ''}"


def artifact_key(run_name: str, job_id: str, path: str) -> str:
    return check_key(f"{artifacts_prefix(run_name, job_id)}{path}")


def artifacts_manifest_key(run_name: str, job_id: str) -> str:
    """Written after all of a job's artifact files: its presence means the upload is complete."""
    return check_key(f"runs/{run_name}/manifests/{job_id}.json")


def manifests_prefix(run_name: str) -> str:
    return f"runs/{run_name}/manifests/"


def cache_entry_key(cache_key: str) -> str:
    """The job cache's entry for ``cache_key``: which earlier job's result an identical job reuses."""
    return check_key(f"cache/{cache_key}.json")


def cache_record_key(run_name: str, job_id: str) -> str:
    """The same entry kept with the job whose result it names: deleted with its run, which makes
    the entry stale."""
    return check_key(f"runs/{run_name}/cache/{job_id}.json")


_ADJECTIVES = ("amber", "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "lucky", "mellow",
               "nimble", "proud", "quick", "quiet", "rapid", "shiny", "silent", "sunny", "swift", "witty")
_ANIMALS = ("badger", "beaver", "crane", "dingo", "falcon", "ferret", "gecko", "heron", "ibis", "koala",
            "lemur", "lynx", "marten", "otter", "panda", "puffin", "raven", "seal", "tapir", "wombat")


def new_run_name() -> str:
    """A fresh, readable run name such as ``witty-otter-4821``."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.randbelow(9000) + 1000}"
