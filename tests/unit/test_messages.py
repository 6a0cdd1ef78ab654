"""dstack.messages: typed messages, their msgpack wire form, and what decode refuses."""
from __future__ import annotations

import dataclasses

import dramatiq
import msgpack
import pytest

from dstack import defaults
from dstack.broker import MsgpackEncoder
from dstack.errors import MessageError
from dstack.messages import (
    MESSAGE_TYPES,
    AddUser,
    Allocation,
    ArtifactRef,
    ClaimTask,
    DeleteRuns,
    DeleteSecret,
    Endpoint,
    GetRuns,
    GetSecrets,
    GetStorage,
    GetTags,
    GetUsers,
    GetWorkers,
    GpuInfo,
    Inventory,
    JobSpec,
    JobTask,
    PresignStorage,
    ProviderRepo,
    ProviderSpec,
    ProviderTask,
    QueueOpened,
    RecordUpload,
    RegistryAuth,
    RemoveUser,
    Resources,
    RestartRun,
    SetSecret,
    StopRun,
    StopTask,
    StorageOp,
    SubmitRun,
    TagRef,
    TagRun,
    TaskFinished,
    TaskPulling,
    TaskStarted,
    UntagRun,
    WorkerLeaving,
    WorkerReport,
    WorkflowSpec,
    decode,
    encode,
    from_dict,
    from_payload,
    pack,
    to_payload,
    unpack,
)
from dstack.states import Status

PROVIDER = ProviderSpec(name="curl", image="python:3.11-slim", commands=["python provider.py"])


def full_job(job_id: str = "train.0") -> JobSpec:
    return JobSpec(
        job_id=job_id, image="pytorch:2", commands=["pip install -r req.txt", "python train.py"],
        working_dir="src", ports=[8888, 6006], artifacts=["checkpoints", "logs"],
        resources=Resources(cpu=2.5, memory_mib=16384, shm_size_mib=1024, gpu_count=2, gpu_name="A100",
                            gpu_memory_mib=40960),
        depends_on=["prepare.0"], master="train.1", env={"EPOCHS": "3"}, pull_policy="always",
        registry_auth=RegistryAuth(username="ci", password="${{ secrets.REGISTRY_TOKEN }}"))


SAMPLES = [
    ProviderTask(run_name="witty-otter-1234", task_id="train.provider", attempt=1, workflow="train",
                 provider=PROVIDER, data={"epochs": 3, "lr": 0.1, "nested": {"a": [1, "x", None, True]}},
                 snapshot_id="abc123", env={"TOKEN": "t"}),
    JobTask(run_name="r1", attempt=2, job=full_job(), snapshot_id="s1",
            master=Endpoint(hostname="host-a", ports=[30001, 30002])),
    JobTask(run_name="r1", attempt=1, job=JobSpec(job_id="j.0", image="alpine", commands=["true"]),
            snapshot_id="s1"),
    StopTask(run_name="r1", task_id="train.0", attempt=1, abort=True),
    TaskStarted(run_name="r1", task_id="train.0", attempt=1, worker_id="w1",
                endpoint=Endpoint(hostname="10.0.0.5", ports=[8080])),
    TaskFinished(run_name="r1", task_id="train.provider", attempt=1, status=Status.DONE, exit_code=0,
                 jobs=[full_job("a"), JobSpec(job_id="b", image="alpine", commands=["echo hi"])]),
    TaskFinished(run_name="r1", task_id="train.0", attempt=1, status=Status.FAILED, exit_code=137, reason="OOM"),
    SubmitRun(run_name="r1", workflow="train", snapshot_id="s1", submitted_at=1700000000.25, project="/home/me/proj",
              workflows=[WorkflowSpec(name="prepare", data={}, provider_repo=ProviderRepo(url="file:///r", name="p")),
                         WorkflowSpec(name="train", data={"x": 1}, provider=PROVIDER, depends_on=["prepare"],
                                      tagged=[TagRef(workflow="data", tag="v1")], variables={"epochs": "3"})]),
    RestartRun(run_name="r1", workflow="train"),
    TagRun(run_name="r1", tag="best"),
    UntagRun(tag="best"),
    GetTags(),
    RecordUpload(run_name="quiet-heron-1234", tag="dataset", artifacts=["data", "labels.csv"], size=1234,
                 submitted_at=1700000000.5, project="/home/me"),
    GetRuns(run_name="r1", limit=5),
    GetRuns(),
    GetRuns(limit=None),
    DeleteRuns(run_names=["r1", "r2"], force=True),
    StopRun(run_name="r1", abort=True),
    ClaimTask(run_name="r1", task_id="train.0", attempt=1, worker_id="w1"),
    # the parts a workflow DAG adds: a provider from another repository, inputs, the provider's commit
    ProviderTask(run_name="r1", task_id="train.provider", attempt=2, workflow="train", data={}, snapshot_id="s1",
                 provider_repo=ProviderRepo(url="https://github.com/x/y.git", name="p"),
                 env={"EPOCHS": "3"}, inputs=[ArtifactRef(run_name="r1", job_id="prepare.0"),
                                              ArtifactRef(run_name="tagged-run", job_id="data.1")]),
    JobTask(run_name="r1", attempt=1, job=full_job(), snapshot_id="s1",
            inputs=[ArtifactRef(run_name="r1", job_id="prepare.0")]),
    TaskStarted(run_name="r1", task_id="train.provider", attempt=1, worker_id="w1", endpoint=Endpoint("h"),
                provider_commit="0123456789abcdef0123456789abcdef01234567"),
    # workers and placement
    QueueOpened(queue="dstack.tasks.gpu2xa100", needs=Resources(gpu_count=2, gpu_name="A100")),
    WorkerReport(worker_id="w1", host="gpu-1", slots=4, started_at=1700000000.5,
                 resources=Inventory(cpu=32, memory_mib=256000, gpus=[
                     GpuInfo(id="0", name="NVIDIA A100-SXM4-40GB", memory_mib=40960),
                     GpuInfo(id="1", name="NVIDIA A100-SXM4-40GB", memory_mib=40960)]),
                 in_use=[Allocation(run_name="r1", task_id="train.0", attempt=1,
                                    needs=Resources(cpu=4, gpu_count=1), gpu_ids=["1"])]),
    WorkerLeaving(worker_id="w1"),
    GetWorkers(),
    # secrets
    SetSecret(name="HF_TOKEN", value="hf_abc"),
    DeleteSecret(name="HF_TOKEN"),
    GetSecrets(),
    AddUser(name="alice", role="admin"),
    RemoveUser(name="bob"),
    GetUsers(),
    GetStorage(),
    PresignStorage(ops=[StorageOp(action="get", key="runs/r1/logs/a/0000000000.msgpack"),
                        StorageOp(action="put", key="blobs/ab/abcd", sha256="abcd")]),
    TaskPulling(run_name="r1", task_id="train.0", attempt=1, worker_id="w1", image="registry.example.com/t:42"),
]


def test_samples_cover_every_message_type() -> None:
    assert {type(m).__name__ for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(message)
    assert back == message
    assert decode(data, type(message)) == message


def test_round_trip_keeps_nested_types() -> None:
    back = decode(encode(SAMPLES[1]))
    assert isinstance(back.job, JobSpec)
    assert isinstance(back.job.resources, Resources)
    assert isinstance(back.master, Endpoint)
    assert back.task_id == "train.0"
    finished = decode(encode(SAMPLES[5]))
    assert all(isinstance(j, JobSpec) for j in finished.jobs)
    assert isinstance(finished.jobs[0].resources, Resources)


def test_payload_carries_type_and_version_and_no_field_at_its_default() -> None:
    payload = to_payload(StopRun(run_name="r1"))
    assert payload == {"run_name": "r1", "type": "StopRun", "v": defaults.PROTOCOL_VERSION}
    assert unpack(encode(StopRun(run_name="r1"))) == payload
    assert to_payload(StopRun(run_name="r1", abort=True))["abort"] is True


def test_a_field_added_later_reaches_older_receivers_only_where_it_is_used() -> None:
    """An older worker refuses fields it does not know: a job that uses no new feature carries none."""
    plain_job = to_payload(JobTask(run_name="r", attempt=1, job=JobSpec(job_id="j", image="i", commands=[]),
                                   snapshot_id="s"))
    assert plain_job["job"] == {"job_id": "j", "image": "i", "commands": []}  # commands has no default
    pulled = to_payload(JobTask(run_name="r", attempt=1, snapshot_id="s",
                                job=JobSpec(job_id="j", image="i", commands=[], pull_policy="always")))
    assert pulled["job"]["pull_policy"] == "always"
    assert decode(encode(from_payload(plain_job))) == from_payload(plain_job)


def test_int_accepted_for_float_field() -> None:
    payload = to_payload(SubmitRun(run_name="r", workflow="w", workflows=[WorkflowSpec(name="w", data={},
                                                                                       provider=PROVIDER)],
                                   snapshot_id="s", submitted_at=1.0))
    payload["submitted_at"] = 5
    message = from_payload(payload)
    assert message.submitted_at == 5.0 and isinstance(message.submitted_at, float)


def test_round_trip_keeps_dag_parts_typed() -> None:
    submit = decode(encode(SAMPLES[7]))
    assert all(isinstance(w, WorkflowSpec) for w in submit.workflows)
    assert isinstance(submit.workflows[0].provider_repo, ProviderRepo) and submit.workflows[0].provider is None
    assert isinstance(submit.workflows[1].provider, ProviderSpec) and submit.workflows[1].provider_repo is None
    assert submit.workflows[1].tagged == [TagRef(workflow="data", tag="v1")]
    provider = decode(encode(SAMPLES[-16]))
    assert all(isinstance(i, ArtifactRef) for i in provider.inputs)
    assert isinstance(provider.provider_repo, ProviderRepo)
    assert all(isinstance(i, ArtifactRef) for i in decode(encode(SAMPLES[-15])).inputs)


def test_round_trip_keeps_worker_parts_typed() -> None:
    report = decode(encode(next(m for m in SAMPLES if isinstance(m, WorkerReport))))
    assert all(isinstance(g, GpuInfo) for g in report.resources.gpus)
    assert isinstance(report.in_use[0], Allocation) and isinstance(report.in_use[0].needs, Resources)
    assert report.resources.cpu == 32.0 and isinstance(report.resources.cpu, float)


def test_new_fields_default_for_older_senders() -> None:
    payload = to_payload(SAMPLES[0])
    payload.pop("inputs", None), payload.pop("provider_repo", None)
    task = from_payload(payload)
    assert task.inputs == [] and task.provider_repo is None
    payload = to_payload(SAMPLES[4])
    payload.pop("provider_commit", None)
    assert from_payload(payload).provider_commit is None


def test_from_dict_builds_a_part() -> None:
    job = full_job()
    assert from_dict(JobSpec, dataclasses.asdict(job)) == job
    with pytest.raises(MessageError, match="unknown fields"):
        from_dict(Resources, {"cpus": 1})


# ----------------------------------------------------------------------------- refused


def test_wrong_version() -> None:
    payload = to_payload(StopRun(run_name="r1"))
    payload["v"] = defaults.PROTOCOL_VERSION + 1
    with pytest.raises(MessageError, match="version"):
        decode(pack(payload))
    del payload["v"]
    with pytest.raises(MessageError, match="version"):
        decode(pack(payload))


def test_unknown_type() -> None:
    payload = to_payload(StopRun(run_name="r1"))
    payload["type"] = "DropTables"
    with pytest.raises(MessageError, match="unknown message type 'DropTables'"):
        decode(pack(payload))
    del payload["type"]
    with pytest.raises(MessageError, match="unknown message type"):
        decode(pack(payload))


def test_unexpected_type() -> None:
    with pytest.raises(MessageError, match="expected a StopRun, got a GetRuns"):
        decode(encode(GetRuns()), StopRun)


def test_unknown_field() -> None:
    payload = to_payload(StopRun(run_name="r1"))
    payload["force"] = True
    with pytest.raises(MessageError, match=r"unknown fields \['force'\]"):
        decode(pack(payload))


def test_unknown_nested_field() -> None:
    payload = to_payload(SAMPLES[1])
    payload["job"]["resources"]["tpu_count"] = 1
    with pytest.raises(MessageError, match=r"JobTask\.job\.resources: unknown fields \['tpu_count'\]"):
        decode(pack(payload))


def test_missing_field() -> None:
    payload = to_payload(ClaimTask(run_name="r1", task_id="t", attempt=1, worker_id="w"))
    del payload["worker_id"]
    with pytest.raises(MessageError, match="ClaimTask"):
        decode(pack(payload))


@pytest.mark.parametrize("field,value,where", [
    ("attempt", "1", "ClaimTask.attempt: expected int, got str"),
    ("attempt", 1.5, "ClaimTask.attempt: expected int, got float"),
    ("worker_id", 7, "ClaimTask.worker_id: expected str, got int"),
    ("run_name", None, "ClaimTask.run_name: expected str, got NoneType"),
])
def test_wrong_field_type(field: str, value: object, where: str) -> None:
    payload = to_payload(ClaimTask(run_name="r1", task_id="t", attempt=1, worker_id="w"))
    payload[field] = value
    with pytest.raises(MessageError) as info:
        decode(pack(payload))
    assert where in str(info.value)


def test_wrong_nested_types() -> None:
    payload = to_payload(SAMPLES[1])
    payload["job"]["ports"] = [8888, "http"]
    with pytest.raises(MessageError, match=r"JobTask\.job\.ports\[1\]: expected int"):
        decode(pack(payload))
    payload = to_payload(SAMPLES[1])
    payload["job"]["commands"] = "python train.py"
    with pytest.raises(MessageError, match=r"JobTask\.job\.commands: expected a list"):
        decode(pack(payload))
    payload = to_payload(SAMPLES[1])
    payload["job"]["env"] = ["A=1"]
    with pytest.raises(MessageError, match=r"JobTask\.job\.env: expected a map"):
        decode(pack(payload))
    payload = to_payload(SAMPLES[1])
    payload["master"] = "host-a:30001"
    with pytest.raises(MessageError, match=r"JobTask\.master: expected a map"):
        decode(pack(payload))
    payload = to_payload(SAMPLES[5])
    payload["jobs"] = [{"job_id": "a"}]  # image and commands missing
    with pytest.raises(MessageError, match=r"TaskFinished\.jobs\[0\]"):
        decode(pack(payload))


@pytest.mark.parametrize("payload", [[1, 2], "StopRun", 42, None, b"\x00"])
def test_non_map_payload(payload: object) -> None:
    with pytest.raises(MessageError, match="must be a map"):
        decode(pack(payload))


def test_oversize_data_refused_before_decoding() -> None:
    data = b"\x00" * (defaults.MAX_MESSAGE_BYTES + 1)
    with pytest.raises(MessageError, match="over the limit"):
        unpack(data)
    with pytest.raises(MessageError, match="over the limit"):
        decode(data)


def test_oversize_limit_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(SAMPLES[0])
    monkeypatch.setattr(defaults, "MAX_MESSAGE_BYTES", len(data) - 1)
    with pytest.raises(MessageError, match="over the limit"):
        decode(data)
    monkeypatch.setattr(defaults, "MAX_MESSAGE_BYTES", len(data))
    assert decode(data) == SAMPLES[0]


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"", b"\x01\x02"])
def test_garbage_is_a_message_error(garbage: bytes) -> None:
    with pytest.raises(MessageError, match="not a msgpack message"):
        decode(garbage)


# ----------------------------------------------------------------------------- dramatiq encoder


def test_msgpack_encoder_round_trip() -> None:
    encoder = MsgpackEncoder()
    envelope = {"queue_name": "dstack.tasks.cpu", "actor_name": "run_task", "args": [b"\x81\xa1a\x01"],
                "kwargs": {}, "options": {}, "message_id": "id-1", "message_timestamp": 1700000000000}
    data = encoder.encode(envelope)
    assert data == msgpack.packb(envelope, use_bin_type=True)
    assert encoder.decode(data) == envelope


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x01\x02"])
def test_msgpack_encoder_decode_garbage(garbage: bytes) -> None:
    with pytest.raises(dramatiq.DecodeError) as info:
        MsgpackEncoder().decode(garbage)
    assert isinstance(info.value.error, MessageError)
    assert info.value.data == garbage


def test_msgpack_encoder_decode_oversize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "MAX_MESSAGE_BYTES", 8)
    with pytest.raises(dramatiq.DecodeError, match="over the limit"):
        MsgpackEncoder().decode(pack({"a": "0123456789"}))


def test_a_secret_value_is_never_in_its_repr() -> None:
    assert "hf_abc" not in repr(SetSecret(name="HF_TOKEN", value="hf_abc"))


# ----------------------------------------------------------------------------- enums


def test_a_status_goes_on_the_wire_as_its_value_and_comes_back_as_a_status() -> None:
    message = TaskFinished(run_name="r", task_id="t", attempt=1, status=Status.STOPPED)
    payload = to_payload(message)
    assert payload["status"] == "stopped" and type(payload["status"]) is str
    decoded = decode(encode(message))
    assert decoded.status is Status.STOPPED


def test_a_status_sent_as_text_by_an_older_worker_decodes() -> None:
    payload = to_payload(TaskFinished(run_name="r", task_id="t", attempt=1, status=Status.DONE))
    payload["status"] = "failed"
    assert from_payload(payload).status is Status.FAILED


@pytest.mark.parametrize("value", ["finished", "DONE", 3, None])
def test_an_unknown_status_is_a_message_error(value: object) -> None:
    payload = to_payload(TaskFinished(run_name="r", task_id="t", attempt=1, status=Status.DONE))
    payload["status"] = value
    with pytest.raises(MessageError, match="TaskFinished.status: .* is not one of"):
        from_payload(payload)
