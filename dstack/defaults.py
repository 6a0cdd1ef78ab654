"""Every default of dstack, in one place, with its unit.

Settings (:mod:`dstack.settings`) read the environment once and fall back to these.
"""
from __future__ import annotations

#: Where RabbitMQ listens.
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Local state of the CLI, scheduler and worker on this machine.
HOME = "~/.dstack"
#: Storage folder (under ``DSTACK_HOME``) used when ``DSTACK_STORAGE_URL`` is not set.
LOCAL_STORAGE_DIR = "storage"

#: Version of the message protocol; a message of another version is refused.
PROTOCOL_VERSION = 1
#: Largest message the services decode, in bytes.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: How long the CLI waits for the scheduler to answer a request, in seconds.
RPC_TIMEOUT = 15.0
#: How long the CLI waits for the broker to accept a connection, in seconds.
BROKER_CONNECT_TIMEOUT = 5.0
#: First wait, in seconds, before connecting to the broker again after it went away; the waits
#: double after each failure, up to the next setting.
RECONNECT_FIRST_DELAY = 0.5
#: Longest wait between two tries to reach the broker, in seconds.
RECONNECT_MAX_DELAY = 10.0
#: Longest wait, in seconds, before a service's consumer (request server, task intake, live publisher)
#: connects again: they are back at most this long after the broker, before clients ask them things.
CONSUMER_RECONNECT_MAX_DELAY = 1.0

#: Seconds between two flushes of a container's log lines to storage (and to live followers).
LOG_FLUSH_INTERVAL = 0.5
#: A log chunk is flushed early when it holds this many bytes.
LOG_CHUNK_BYTES = 256 * 1024

#: Waits, in seconds, between tries of a storage write that failed (about a minute in all).
STORAGE_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

#: Seconds a stopped container gets between SIGTERM and SIGKILL.
STOP_GRACE_PERIOD = 10
#: How many tasks (provider runs and jobs) one worker runs at once when its config does not say.
WORKER_SLOTS = 4
#: Seconds between two reports of a worker to the scheduler (what it has, what runs on it).
HEARTBEAT_INTERVAL = 10.0
#: Seconds after its last report that the scheduler counts a worker as gone.
WORKER_TIMEOUT = 60.0
#: Seconds a worker told to stop (SIGTERM) lets its running tasks go on before it stops them.
DRAIN_PERIOD = 30.0
#: Seconds between two scans of a running job's artifact folders; a file unchanged for this long is uploaded.
ARTIFACT_SYNC_INTERVAL = 30.0
#: Seconds the worker's intake waits for a task before it checks its capacity again.
INTAKE_POLL_TIMEOUT = 1.0

#: Where a job's project snapshot is mounted inside its container.
CONTAINER_WORKDIR = "/workflow"
#: Where dstack's own files (SDK, provider input and output) are mounted in a provider container.
CONTAINER_DSTACK_DIR = "/dstack"
#: The image built-in providers run in (they need Python 3.8 or newer); the default image of their jobs too.
BUILTIN_PROVIDER_IMAGE = "python:3.11"

#: When a worker pulls a task's image: ``if-not-present``, ``always`` or ``never``.
PULL_POLICY = "if-not-present"
#: Seconds a worker goes on retrying (with backoff) a registry it cannot reach before the job fails.
PULL_RETRY_TIMEOUT = 120.0
#: Seconds between two lines of a pull's progress in the job's log.
PULL_PROGRESS_INTERVAL = 0.5
#: Seconds an image a worker pulled may stay unused before the worker may remove it (7 days).
IMAGE_MAX_AGE = 7 * 86400.0
#: MiB that must stay free on the disk of Docker's images; below it a worker removes its unused images (20 GB).
IMAGE_MIN_FREE_MIB = 20 * 1024
#: Seconds between two checks of that disk's free space.
IMAGE_CHECK_INTERVAL = 60.0

#: The most processes (and threads) a job's container may run at once, unless its ``resources`` say.
JOB_PIDS_LIMIT = 4096

#: MiB of the machine's memory a job that asks for no memory limit cannot take (or 5% of it, if more), so that a
#: job that fills its memory ends itself, not the worker.
WORKER_MEMORY_RESERVE_MIB = 1024
