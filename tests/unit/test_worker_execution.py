"""One task on a worker, with a fake container runtime: the end each kind of exit reports, logs,
artifacts and inputs, and a provider's jobs."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from dstack.errors import StorageError
from dstack.messages import (
    AppSpec,
    ArtifactFile,
    ArtifactManifest,
    ArtifactRef,
    JobSpec,
    Resources,
    RetryPolicy,
    TaskFinished,
    TaskStarted,
)
from dstack.names import LOGS_EXCHANGE, artifact_key, artifacts_manifest_key, live_routing_key
from dstack.sdk import GPU, App, Job, ResourceRequirements, Retry
from dstack.sdk.job import jobs_to_dicts
from dstack.states import Status
from dstack.workers.artifacts import upload_artifacts
from dstack.workers.execution import TASK_FILE, Execution, JobExecution, ProviderExecution
from dstack.workers.runtime import ContainerSpec
from tests.fakes import Script, provider_io, workdir
from tests.worker_harness import RUN, WorkerHarness


class Harness(WorkerHarness):
    """The worker harness, running a task to its end in this thread."""

    def run(self, task: Any, before_follow: Optional[Callable[[Execution], None]] = None) -> TaskFinished:
        """Start the task, follow it to its end and return what it reported."""
        execution = Execution.for_task(task, self.context)
        execution.save()
        execution.start()
        if before_follow is not None:
            before_follow(execution)
        execution.follow()
        started, finished = self.events
        assert isinstance(started, TaskStarted) and isinstance(finished, TaskFinished)
        assert not execution.folder.exists()  # cleaned up
        assert self.runtime.started[execution.container.name].removed  # type: ignore[union-attr]
        return finished


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def write_files(files: dict[str, str]) -> Callable[[ContainerSpec], None]:
    """An ``on_start`` that writes ``files`` (path -> text) into the task's project folder."""
    def write(spec: ContainerSpec) -> None:
        for path, text in files.items():
            target = workdir(spec) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return write


# ----------------------------------------------------------------------------- which class


def test_each_kind_of_task_has_its_execution(h: Harness, tmp_path: Path) -> None:
    job, provider = Execution.for_task(h.job(), h.context), Execution.for_task(h.provider(), h.context)
    assert isinstance(job, JobExecution) and isinstance(provider, ProviderExecution)
    job.save()
    provider.save()
    loaded = sorted((Execution.load(path, h.context) for path in (h.context.home / "tasks").rglob("task.msgpack")),
                    key=lambda e: e.key)
    assert [type(e) for e in loaded] == [JobExecution, ProviderExecution]
    assert [e.task for e in loaded] == [job.task, provider.task]


def test_what_a_job_holds_and_how_long_it_may_run(h: Harness) -> None:
    job = Execution.for_task(h.job(resources=Resources(cpu=2, gpu_count=1), max_duration_s=60.0), h.context)
    assert job.needs == Resources(cpu=2, gpu_count=1) and job.max_duration_s == 60.0
    provider = Execution.for_task(h.provider(), h.context)
    assert provider.needs == Resources() and provider.max_duration_s is None


# ----------------------------------------------------------------------------- outcomes


def test_a_job_that_exits_with_0_is_done(h: Harness) -> None:
    finished = h.run(h.job(script=Script(output=[b"hello\n", b"wor", b"ld\n"])))
    assert finished == TaskFinished(run_name=RUN, task_id="train.0", attempt=1, status=Status.DONE, exit_code=0,
                                    worker_id="w1")
    assert h.log_lines("train.0") == ["hello", "world"]
    # stored, then published live
    assert [item[:2] for item in h.announced] == [(LOGS_EXCHANGE, live_routing_key("", RUN))]
    started = h.events[0]
    assert started.worker_id == "w1" and started.endpoint.hostname == "host-a" and started.provider_commit is None


def test_a_failing_job_quotes_its_last_lines(h: Harness) -> None:
    output = [f"line {i}\n".encode() for i in range(12)]
    finished = h.run(h.job(script=Script(output=output, exit_code=3)))
    assert finished.status == Status.FAILED and finished.exit_code == 3
    assert finished.reason == "exit code 3; last lines:\n" + "\n".join(f"line {i}" for i in range(2, 12))
    assert h.log_lines("train.0")[-1] == f"dstack: train.0 failed: {finished.reason}"


def test_out_of_memory_names_the_limit_when_there_is_one(h: Harness) -> None:
    finished = h.run(h.job(script=Script(exit_code=137, oom_killed=True), resources=Resources(memory_mib=512)))
    assert (finished.status, finished.reason) == (Status.FAILED, "out of memory (the limit is 512 MiB)")


def test_out_of_memory_without_a_limit(h: Harness) -> None:
    finished = h.run(h.job(script=Script(exit_code=137, oom_killed=True)))
    assert (finished.status, finished.reason) == (Status.FAILED, "out of memory")


def test_a_job_past_its_max_duration_is_stopped_and_fails(h: Harness) -> None:
    finished = h.run(h.job(script=Script(until_stopped=True), max_duration_s=0.2))
    assert finished.status == Status.FAILED and finished.timed_out
    assert finished.reason == "ran longer than its max_duration of 0.2 s; stopped"


def test_a_stop_request_ends_the_task_stopped(h: Harness) -> None:
    finished = h.run(h.job(script=Script(until_stopped=True)), lambda e: e.stop(abort=False))
    assert (finished.status, finished.reason, finished.timed_out) == (Status.STOPPED, "stopped by request", False)
    assert h.log_lines("train.0")[-1] == "dstack: train.0 stopped: stopped by request"


def test_a_stop_with_a_failure_ends_the_task_failed(h: Harness) -> None:
    finished = h.run(h.job(script=Script(until_stopped=True)),
                     lambda e: e.stop(abort=False, failure="worker w1 shut down"))
    assert (finished.status, finished.reason) == (Status.FAILED, "worker w1 shut down")


def test_a_stop_from_another_thread_while_following(h: Harness) -> None:
    def stop_soon(execution: Execution) -> None:
        threading.Timer(0.2, execution.stop, kwargs={"abort": False}).start()

    finished = h.run(h.job(script=Script(output=[b"working\n"], until_stopped=True)), stop_soon)
    assert finished.status == Status.STOPPED and h.log_lines("train.0")[0] == "working"


def test_secrets_never_reach_the_logs(h: Harness) -> None:
    task = h.job(script=Script(output=[b"token=s3cret-value\n"]))
    task.secrets = {"TOKEN": "s3cret-value"}
    h.run(task)
    assert h.log_lines("train.0") == ["token=***"]
    assert h.runtime.started[next(iter(h.runtime.started))].spec.env["TOKEN"] == "s3cret-value"


def test_abandon_reports_a_failure_and_removes_the_container(h: Harness) -> None:
    execution = Execution.for_task(h.job(script=Script(until_stopped=True)), h.context)
    execution.start()
    execution.abandon("worker error: see the worker's log")
    finished = h.events[-1]
    assert (finished.status, finished.reason) == (Status.FAILED, "worker error: see the worker's log")
    assert h.runtime.started[execution.container.name].removed  # type: ignore[union-attr]
    assert h.log_lines("train.0") == ["dstack: train.0 failed: worker error: see the worker's log"]


# ----------------------------------------------------------------------------- providers


def test_a_provider_gets_the_workflow_and_the_sdk(h: Harness) -> None:
    seen: dict[str, Any] = {}

    def look(spec: ContainerSpec) -> None:
        seen["workflow"] = json.loads((provider_io(spec) / "workflow.json").read_text())
        seen["env"] = spec.env

    h.run(h.provider(Script(on_start=look)))
    assert seen["workflow"] == {"name": "train", "provider": "p", "run_name": RUN, "data": {"n": 1},
                                "provider_args": []}
    assert seen["env"]["DSTACK_PROVIDER_OUTPUT"] == "/dstack/io" and seen["env"]["PYTHONUSERBASE"] == "/dstack/sdk"


def test_provider_jobs_are_decoded_from_what_the_sdk_writes(h: Harness) -> None:
    prepare = Job("alpine", ["prep"], artifacts=["data"])
    train = Job("pytorch", ["train"], ports=[0], depends_on=[prepare], environment={"A": "1"},
                resources=ResourceRequirements(cpu=2, memory="1GB", gpu=GPU(1, "A100")), retry=Retry(2, "5s"),
                max_duration="1h", apps=[App("board", 0, "/x")])
    follower = Job("pytorch", ["follow"], master=train)

    def create(spec: ContainerSpec) -> None:
        (provider_io(spec) / "jobs.json").write_text(json.dumps({"jobs": jobs_to_dicts([prepare, train, follower])}))

    finished = h.run(h.provider(Script(on_start=create)))
    assert finished.status == Status.DONE, finished.reason
    assert finished.jobs == [
        JobSpec(job_id="0", image="alpine", commands=["prep"], artifacts=["data"]),
        JobSpec(job_id="1", image="pytorch", commands=["train"], ports=[0], depends_on=["0"], env={"A": "1"},
                resources=Resources(cpu=2.0, memory_mib=1024, gpu_count=1, gpu_name="A100"),
                retry=RetryPolicy(limit=2, backoff_s=5.0), max_duration_s=3600.0,
                apps=[AppSpec(name="board", port_index=0, url_path="/x")]),
        JobSpec(job_id="2", image="pytorch", commands=["follow"], master="1"),
    ]


def test_a_provider_without_jobs_json_fails(h: Harness) -> None:
    finished = h.run(h.provider(Script()))
    assert (finished.status, finished.reason) == (
        Status.FAILED, "the provider exited without creating jobs (does it call provider.start()?)")
    assert finished.jobs is None


def test_a_provider_failure_gives_the_reason_of_error_json(h: Harness) -> None:
    def fail(spec: ContainerSpec) -> None:
        (provider_io(spec) / "error.json").write_text(json.dumps({"reason": "parameter 'n' must be a string"}))

    finished = h.run(h.provider(Script(output=[b"oops\n"], exit_code=2, on_start=fail)))
    assert (finished.status, finished.reason, finished.exit_code) == (
        Status.FAILED, "parameter 'n' must be a string", 2)


def test_a_provider_failure_without_error_json_quotes_its_last_lines(h: Harness) -> None:
    finished = h.run(h.provider(Script(output=[b"Traceback\n", b"NameError\n"], exit_code=1)))
    assert finished.reason == "exit code 1; last lines:\nTraceback\nNameError"


def test_a_provider_out_of_memory(h: Harness) -> None:
    finished = h.run(h.provider(Script(exit_code=137, oom_killed=True)))
    assert (finished.status, finished.reason) == (Status.FAILED, "out of memory")


@pytest.mark.parametrize("jobs, fragment", [
    ([{"job_id": "0", "image": "a", "commands": [], "environment": {}}],
     "the provider's jobs.json is malformed: JobSpec: unknown fields ['environment']"),
    ([{"job_id": "0", "image": "a", "commands": [], "depends_on": [0]}], "the provider's jobs.json is malformed"),
    ([{"job_id": "0", "image": "a", "commands": [], "depends_on": ["1"]},
      {"job_id": "1", "image": "a", "commands": [], "depends_on": ["0"]}], "dependency cycle: 0 -> 1 -> 0"),
    ([], "the provider created no jobs"),
])
def test_provider_jobs_that_are_refused(h: Harness, jobs: list[dict[str, Any]], fragment: str) -> None:
    def create(spec: ContainerSpec) -> None:
        (provider_io(spec) / "jobs.json").write_text(json.dumps({"jobs": jobs}))

    finished = h.run(h.provider(Script(on_start=create)))
    assert finished.status == Status.FAILED and fragment in finished.reason and finished.jobs is None


# ----------------------------------------------------------------------------- artifacts


def test_artifacts_are_uploaded_under_their_keys_and_the_manifest_last(h: Harness) -> None:
    script = Script(on_start=write_files({"out/a.txt": "aa", "out/sub/b.txt": "bbb", "elsewhere.txt": "x"}))
    finished = h.run(h.job(script=script, artifacts=["out"]))
    assert finished.status == Status.DONE
    uploads = [key for key in h.storage.written if "/logs/" not in key and "snapshots/" not in key
               and "blobs/" not in key]
    assert uploads == [artifact_key(RUN, "train.0", "out/a.txt"), artifact_key(RUN, "train.0", "out/sub/b.txt"),
                       artifacts_manifest_key(RUN, "train.0")]
    assert h.storage.get_bytes(artifact_key(RUN, "train.0", "out/sub/b.txt")) == b"bbb"
    stored = h.storage.get_bytes(artifacts_manifest_key(RUN, "train.0"))
    sha_a, sha_b = hashlib.sha256(b"aa").hexdigest(), hashlib.sha256(b"bbb").hexdigest()
    # the stored form: JSON with these keys, in this order; the end of the job makes it complete
    assert stored == json.dumps({"job_id": "train.0", "artifacts": ["out"], "files": [
        {"path": "out/a.txt", "size": 2, "sha256": sha_a}, {"path": "out/sub/b.txt", "size": 3, "sha256": sha_b}],
        "complete": True}).encode()
    assert ArtifactManifest.from_json(stored) == ArtifactManifest(
        job_id="train.0", artifacts=["out"], files=[ArtifactFile("out/a.txt", 2, sha_a),
                                                    ArtifactFile("out/sub/b.txt", 3, sha_b)])
    assert finished.artifacts_size == 5


def test_artifact_folders_exist_before_the_job_starts(h: Harness) -> None:
    seen: list[bool] = []
    h.run(h.job(script=Script(on_start=lambda spec: seen.append((workdir(spec) / "out/deep").is_dir())),
                artifacts=["out/deep"]))
    assert seen == [True]


def test_a_failed_job_uploads_its_artifacts_too(h: Harness) -> None:
    finished = h.run(h.job(script=Script(exit_code=1, on_start=write_files({"out/log.txt": "x"})), artifacts=["out"]))
    assert finished.status == Status.FAILED and finished.reason.startswith("exit code 1")
    assert h.storage.exists(artifacts_manifest_key(RUN, "train.0"))


def test_an_upload_failure_turns_done_into_failed(h: Harness) -> None:
    h.storage.fail_uploads = OSError("the disk is gone")
    finished = h.run(h.job(script=Script(on_start=write_files({"out/a.txt": "a"})), artifacts=["out"]))
    assert (finished.status, finished.reason) == (Status.FAILED, "uploading artifacts failed: the disk is gone")
    assert not h.storage.exists(artifacts_manifest_key(RUN, "train.0"))  # no manifest: not complete
    assert h.log_lines("train.0")[-1] == "dstack: train.0 failed: uploading artifacts failed: the disk is gone"


def test_an_aborted_job_uploads_nothing(h: Harness) -> None:
    finished = h.run(h.job(script=Script(until_stopped=True, on_start=write_files({"out/a.txt": "a"})),
                           artifacts=["out"]), lambda e: e.stop(abort=True))
    assert finished.status == Status.STOPPED
    assert not h.storage.exists(artifacts_manifest_key(RUN, "train.0"))


def test_inputs_are_in_place_before_the_container_starts(h: Harness, tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    (earlier / "data").mkdir(parents=True)
    (earlier / "data" / "x.csv").write_text("1,2\n")
    upload_artifacts(h.storage, "calm-heron-2", "prepare.0", ["data"], earlier)
    seen: list[str] = []
    task = h.job(script=Script(on_start=lambda spec: seen.append((workdir(spec) / "data/x.csv").read_text())))
    task.inputs = [ArtifactRef(run_name="calm-heron-2", job_id="prepare.0")]
    assert h.run(task).status == Status.DONE
    assert seen == ["1,2\n"]


def test_a_missing_input_stops_the_start(h: Harness) -> None:
    task = h.job()
    task.inputs = [ArtifactRef(run_name="calm-heron-2", job_id="prepare.0")]
    execution = Execution.for_task(task, h.context)
    with pytest.raises(StorageError, match="the artifacts of prepare.0 of run calm-heron-2 are not stored in file:"):
        execution.start()
    assert not h.runtime.started


# ----------------------------------------------------------------------------- a job's environment


def started_env(h: Harness, task: Any) -> dict[str, str]:
    """The environment of the container ``task`` ran in."""
    h.run(task)
    return h.runtime.started[next(iter(h.runtime.started))].spec.env


def test_ports_reach_the_job_as_job_port_and_port(h: Harness) -> None:
    env = started_env(h, h.job(ports=[6006, 0]))
    chosen = env["JOB_PORT_1"]
    assert env["JOB_PORT_0"] == env["PORT_0"] == "6006"
    assert env["PORT_1"] == chosen and int(chosen) > 0  # any free port: the same one under both names
    assert "PORT_2" not in env and "JOB_PORT_2" not in env


def test_hostname_is_the_jobs_reachable_host_name(h: Harness) -> None:
    env = started_env(h, h.job())
    assert env["HOSTNAME"] == env["JOB_HOSTNAME"] == "host-a"


def test_a_provider_gets_hostname_too(h: Harness) -> None:
    env = started_env(h, h.provider())
    assert env["HOSTNAME"] == env["JOB_HOSTNAME"] == "host-a"


def test_a_follower_gets_its_masters_id_host_and_ports(h: Harness) -> None:
    from dstack.messages import Endpoint
    task = h.job("train.1", master="train.0")
    task.master = Endpoint(hostname="host-b", ports=[29500, 6006])
    env = started_env(h, task)
    assert env["MASTER_JOB_ID"] == "train.0" and env["MASTER_JOB_HOSTNAME"] == "host-b"
    assert (env["MASTER_JOB_PORT_0"], env["MASTER_JOB_PORT_1"]) == ("29500", "6006")


def test_a_job_without_a_master_gets_no_master_variables(h: Harness) -> None:
    env = started_env(h, h.job())
    assert not [name for name in env if name.startswith("MASTER_JOB_")]


def test_the_jobs_own_environment_wins_over_the_early_names(h: Harness) -> None:
    from dstack.messages import Endpoint
    task = h.job("train.1", master="train.0", ports=[8080],
                 env={"HOSTNAME": "mine", "PORT_0": "1", "MASTER_JOB_ID": "other"})
    task.master = Endpoint(hostname="host-b", ports=[])
    env = started_env(h, task)
    assert (env["HOSTNAME"], env["PORT_0"], env["MASTER_JOB_ID"]) == ("mine", "1", "other")
    assert (env["JOB_HOSTNAME"], env["JOB_PORT_0"]) == ("host-a", "8080")


def test_a_job_mounts_its_own_folder_only_and_the_workers_mounts(h: Harness, tmp_path: Path) -> None:
    h.context.container_mounts = [("/srv/wheels", "/wheels", True)]
    execution = h.started(h.job())
    spec = h.runtime.started[execution.container.name].spec  # type: ignore[union-attr]
    assert spec.mounts == [(str(execution.workdir), "/workflow", False), ("/srv/wheels", "/wheels", True)]
    assert spec.pids == 4096


def test_a_jobs_secrets_stay_out_of_its_task_folder(h: Harness) -> None:
    task = h.job(script=Script(output=[b"$TOKEN\n"]))
    task.secrets = {"TOKEN": "s3cret-in-memory"}  # as the worker sets them from its claim's answer
    execution = h.started(task)
    assert b"s3cret-in-memory" not in (execution.folder / TASK_FILE).read_bytes()
    assert Execution.load(execution.folder / TASK_FILE, h.context).task.secrets == {}
    assert h.runtime.started[execution.container.name].spec.env["TOKEN"] == "s3cret-in-memory"  # type: ignore[union-attr]


def test_a_job_that_could_not_fork_is_told_its_process_limit(h: Harness) -> None:
    output = [b"sh: 1: Cannot fork\n"]
    finished = h.run(h.job(script=Script(output=output, exit_code=2), resources=Resources(pids=50)))
    assert finished.reason.startswith("exit code 2 (it may have hit its process limit of 50: resources.pids)")
    h.events.clear()
    plain_failure = h.run(h.job(script=Script(output=[b"boom\n"], exit_code=2), run="other-run-2"))
    assert plain_failure.reason.startswith("exit code 2; last lines:")
