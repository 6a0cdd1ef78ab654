"""What a job is given (secrets; never the broker's or storage's credentials), what is never
shown, and messages no service can read."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import dramatiq
import pika
import pytest

from dstack.broker import make_broker
from dstack.names import DEFAULT_TASK_QUEUE, EVENTS_QUEUE
from tests.projects import graph_workflow_project
from tests.services import Cluster, queue_counts, wait_for

pytestmark = pytest.mark.integration


def test_containers_get_no_broker_or_storage_credentials(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", [{"commands": ["env"]}]))
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    assert run["status"] == "done", run
    printed = "\n".join(fleet.job_logs(run_name)["w.0"])
    assert "RUN_NAME=" in printed
    for name in ("AWS_", "DSTACK_BROKER_URL", "DSTACK_STORAGE_URL"):
        assert name not in printed
    assert fleet.broker_url not in printed and "guest:guest" not in printed


def test_secrets_reach_jobs_and_are_never_shown(fleet: Cluster, tmp_path: Path) -> None:
    value = "s3cr3t-Value-42"
    for name in ("HF_TOKEN", "OTHER"):
        result = subprocess.run([sys.executable, "-m", "dstack.cli.main", "secrets", "set", name], input=value + "\n",
                                capture_output=True, text=True, env=fleet.env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert value not in result.stdout + result.stderr
    listed = fleet.dstack("secrets", "list")
    assert listed.stdout.split() == ["HF_TOKEN", "OTHER"] and value not in listed.stdout
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": ['test "$HF_TOKEN" = "s3cr3t-Value-42" && echo "the job has it"', 'echo "token: $HF_TOKEN"',
                         'echo "$HF_TOKEN" >&2; exit 3']}]
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", jobs))
    run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
    logs = fleet.job_logs(run_name)["w.0"]
    assert "the job has it" in logs and "token: ***" in logs
    shown = [json.dumps(run), "\n".join(logs), fleet.dstack("status", run_name).stdout,
             fleet.dstack("logs", run_name).stdout]
    assert not any(value in text for text in shown)
    assert run["jobs"][-1]["reason"].startswith("exit code 3")  # its last lines, the secret hidden
    bad = fleet.dstack("secrets", "set", "1BAD", env={})
    assert bad.returncode != 0


def test_messages_of_another_version_or_shape_go_to_the_dead_letter_queue(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_reporting_worker("worker-a")
    broker = make_broker(fleet.broker_url)
    bad_payloads = [{"type": "JobTask", "v": 999}, {"type": "NoSuchThing", "v": 1}, "not a map"]
    for queue, actor in ((DEFAULT_TASK_QUEUE, "run_task"), (EVENTS_QUEUE, "handle_event")):
        for payload in bad_payloads:
            broker.declare_queue(queue)
            broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=(payload,), kwargs={},
                                            options={}))
    connection = pika.BlockingConnection(pika.URLParameters(fleet.broker_url))
    connection.channel().basic_publish("", DEFAULT_TASK_QUEUE, b"\x00 not msgpack at all")
    connection.close()
    for queue, count in ((DEFAULT_TASK_QUEUE, 4), (EVENTS_QUEUE, 3)):
        # wait_for calls the lambda at once, in this iteration: the loop variables are the ones meant
        wait_for(lambda: queue_counts(fleet.broker_url, f"{queue}.XQ")[0] == count,  # noqa: B023
                 30, f"{queue}.XQ to hold them")
    assert "goes to the dead-letter queue" in fleet.logs()
    # both services live on
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", [{"commands": ["true"]}]))
    assert fleet.wait_status(run_name, ("done", "failed"), timeout=60)["status"] == "done"
    assert all(p.poll() is None for p in fleet.processes.values())


def test_secrets_are_sealed_at_rest_and_survive_a_key_rotation(fleet: Cluster, tmp_path: Path) -> None:
    value = "at-rest-Value-7"
    assert fleet.dstack("secrets", "set", "HF_TOKEN", input=value).returncode == 0
    fleet.start_reporting_worker("worker-a")
    jobs = [{"commands": ['printf %s "$HF_TOKEN" | sha256sum']}]  # the value itself is in no file of the project

    def job_has_it(folder: str) -> bool:
        run_name = fleet.submit(graph_workflow_project(tmp_path / folder, jobs))
        run = fleet.wait_status(run_name, ("done", "failed", "stopped"), timeout=60)
        printed = " ".join(fleet.job_logs(run_name)["w.0"])
        return run["status"] == "done" and hashlib.sha256(value.encode()).hexdigest() in printed

    assert job_has_it("first")
    scheduler_home = fleet.root / "scheduler-home" / "scheduler"
    key_file = scheduler_home / "secrets.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    database = sorted(scheduler_home.glob("state.db*"))
    assert database and not any(value.encode() in path.read_bytes() for path in database)

    # rotation: refused while the scheduler runs (it holds the old key) ...
    home = {"DSTACK_HOME": str(fleet.root / "scheduler-home")}
    refused = fleet.dstack("secrets", "rotate-key", env=home)
    assert refused.returncode != 0 and "a scheduler is running" in refused.stderr
    # ... then with the scheduler stopped, the command on its machine (its home), the scheduler started again
    fleet.signal("scheduler", signal.SIGTERM)
    fleet.processes["scheduler"].wait(30)
    old_key = key_file.read_bytes()
    rotated = fleet.dstack("secrets", "rotate-key", env=home)
    assert rotated.returncode == 0 and "1 secrets sealed under a new key" in rotated.stderr, rotated.stderr
    assert key_file.read_bytes() != old_key
    fleet.start_scheduler()
    assert job_has_it("second")
    assert not any(value.encode() in path.read_bytes() for path in sorted(scheduler_home.glob("state.db*")))


def test_task_messages_carry_no_secret(fleet: Cluster, tmp_path: Path) -> None:
    """A job's secrets come with its worker's claim; the task message on the broker holds none of them."""
    value = "in-transit-Value-9"
    assert fleet.dstack("secrets", "set", "HF_TOKEN", input=value).returncode == 0
    fleet.start_reporting_worker("worker-a", resources="{cpu: 2, memory: 4GB, gpu: 0}")
    # the job waits in its queue: no worker has a GPU
    run_name = fleet.submit(graph_workflow_project(tmp_path / "project", [
        {"commands": ['echo "$HF_TOKEN"'], "resources": {"gpu": 1}}]))
    queue = "dstack.tasks.gpu1xany"
    wait_for(lambda: queue_counts(fleet.broker_url, queue)[0] == 1, 60, "the job's task on its queue")
    connection = pika.BlockingConnection(pika.URLParameters(fleet.broker_url))
    channel = connection.channel()
    method, _, body = channel.basic_get(queue, auto_ack=False)
    assert method is not None and value.encode() not in body
    assert run_name.encode() in body  # it is the job's task
    channel.basic_nack(method.delivery_tag, requeue=True)
    connection.close()
