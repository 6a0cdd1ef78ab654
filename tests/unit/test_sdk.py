"""The provider SDK: Job, ResourceRequirements, GPU, sizes, jobs_to_dicts, and Provider end to end."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import dstack
from dstack.messages import AppSpec, JobSpec, Resources, RetryPolicy, from_dict
from dstack.sdk import GPU, App, Job, Provider, ResourceRequirements, Retry, Workflow
from dstack.sdk.job import jobs_to_dicts
from dstack.sdk.provider import INVALID_EXIT_CODE, OUTPUT_DIR_ENV
from dstack.sdk.resources import parse_size_mib
from dstack.sdk.workflow import WORKFLOW_FILE_ENV


def test_dstack_reexports_the_sdk() -> None:
    assert dstack.Job is Job and dstack.Provider is Provider and dstack.GPU is GPU
    assert dstack.ResourceRequirements is ResourceRequirements and dstack.Workflow is Workflow


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text,mib", [
    ("16GB", 16384), ("512MB", 512), ("1.5G", 1536), ("2GiB", 2048), ("16 gb", 16384), ("512mb", 512),
    ("1T", 1024 * 1024), ("1024KB", 1), ("2048K", 2), (" 8G ", 8192), ("1M", 1), ("1MiB", 1),
    ("0GB", 0), ("1KB", 1),  # below one MiB rounds up to 1, never to 0
])
def test_parse_size_mib(text: str, mib: int) -> None:
    assert parse_size_mib(text) == mib


def test_parse_size_numbers_are_mib() -> None:
    assert parse_size_mib(512) == 512
    assert parse_size_mib(1.5) == 1
    assert parse_size_mib(None) is None


@pytest.mark.parametrize("bad", ["", "GB", "16 XB", "-1GB", "sixteen", "16GBB", "1.2.3G", "16 G B", True, False])
def test_parse_size_bad(bad: Any) -> None:
    with pytest.raises(ValueError, match="memory must be a size like '16GB' or '512MB'"):
        parse_size_mib(bad, "memory")


def test_parse_size_bare_string_same_as_number() -> None:
    assert parse_size_mib("512") == parse_size_mib(512) == 512


def test_parse_size_negative_number_refused() -> None:
    with pytest.raises(ValueError):
        parse_size_mib(-5, "memory")


# ----------------------------------------------------------------------------- resources


def test_resource_requirements() -> None:
    r = ResourceRequirements(cpu=2, memory="16GB", gpu=GPU(2, name="A100", memory="40GB"), shm_size="1GB")
    assert r.cpu == 2.0 and isinstance(r.cpu, float)
    assert r.to_dict() == {"cpu": 2.0, "memory_mib": 16384, "shm_size_mib": 1024, "gpu_count": 2,
                           "gpu_name": "A100", "gpu_memory_mib": 40960}


def test_resource_requirements_defaults() -> None:
    assert ResourceRequirements().to_dict() == {"cpu": None, "memory_mib": None, "shm_size_mib": None,
                                                "gpu_count": 0, "gpu_name": None, "gpu_memory_mib": None}


def test_gpu_as_count() -> None:
    r = ResourceRequirements(gpu=3)
    assert isinstance(r.gpu, GPU) and r.gpu.count == 3
    assert r.to_dict()["gpu_count"] == 3


@pytest.mark.parametrize("cpu", [0, -1, "2", True, [1]])
def test_bad_cpu(cpu: Any) -> None:
    with pytest.raises(ValueError, match="cpu must be a positive number"):
        ResourceRequirements(cpu=cpu)


def test_fractional_cpu() -> None:
    assert ResourceRequirements(cpu=0.5).cpu == 0.5


def test_bad_memory_names_the_field() -> None:
    with pytest.raises(ValueError, match="^memory must be"):
        ResourceRequirements(memory="lots")
    with pytest.raises(ValueError, match="^shm_size must be"):
        ResourceRequirements(shm_size="big")
    with pytest.raises(ValueError, match="^GPU memory must be"):
        GPU(memory="huge")


@pytest.mark.parametrize("count", [-1, 1.5, "2", True, None])
def test_bad_gpu_count(count: Any) -> None:
    with pytest.raises(ValueError, match="GPU count must be a whole number"):
        GPU(count=count)


def test_gpu_defaults() -> None:
    gpu = GPU()
    assert (gpu.count, gpu.name, gpu.memory_mib) == (1, None, None)
    assert GPU(0).count == 0


def test_from_dict() -> None:
    r = ResourceRequirements.from_dict({"cpu": 4, "memory": "8GB", "gpu": {"count": 1, "name": "T4",
                                                                         "memory": "16GB"}, "shm_size": "512MB"})
    assert r.to_dict() == {"cpu": 4.0, "memory_mib": 8192, "shm_size_mib": 512, "gpu_count": 1,
                           "gpu_name": "T4", "gpu_memory_mib": 16384}
    assert ResourceRequirements.from_dict({"gpu": 2}).to_dict()["gpu_count"] == 2
    assert ResourceRequirements.from_dict({}).to_dict()["gpu_count"] == 0
    with pytest.raises(ValueError, match=r"^resources.gpu: unknown key\(s\) cnt; the keys are count, name, memory$"):
        ResourceRequirements.from_dict({"gpu": {"cnt": 1}})
    with pytest.raises(ValueError,
                       match=r"^resources: unknown key\(s\) gpus; the keys are cpu, memory, gpu, shm_size$"):
        ResourceRequirements.from_dict({"gpus": 1})
    with pytest.raises(ValueError, match=r"^jobs\[0\].resources: memory must be a size like '16GB'"):
        ResourceRequirements.from_dict({"memory": "lots"}, where="jobs[0].resources")


# ----------------------------------------------------------------------------- Job


def test_job_defaults() -> None:
    job = Job("alpine", ["echo hi"])
    assert (job.image, job.commands, job.ports, job.working_dir, job.artifacts) == ("alpine", ["echo hi"], [], "",
                                                                                    [])
    assert job.depends_on == [] and job.master is None and job.environment == {}
    assert isinstance(job.resources, ResourceRequirements)


def test_job_normalises_values() -> None:
    job = Job("alpine", ("a", "b"), ports=["8080", 22], environment={"N": 3, 1: True})  # type: ignore[arg-type]
    assert job.commands == ["a", "b"]
    assert job.ports == [8080, 22]
    assert job.environment == {"N": "3", "1": "True"}


@pytest.mark.parametrize("image", ["", None, 3])
def test_job_bad_image(image: Any) -> None:
    with pytest.raises(ValueError, match="image"):
        Job(image, ["true"])


@pytest.mark.parametrize("commands", ["echo hi", ["ok", 3], [None]])
def test_job_bad_commands(commands: Any) -> None:
    with pytest.raises(ValueError, match="commands"):
        Job("alpine", commands)


def test_job_bad_port() -> None:
    with pytest.raises(ValueError):
        Job("alpine", ["true"], ports=["http"])


# ----------------------------------------------------------------------------- jobs_to_dicts


def test_jobs_to_dicts_references_are_indexes() -> None:
    prepare = Job("alpine", ["prep"], artifacts=["data"])
    master = Job("pytorch", ["serve"], ports=[29500], resources=ResourceRequirements(gpu=1))
    worker = Job("pytorch", ["train"], depends_on=[prepare], master=master, working_dir="src",
                 environment={"RANK": "1"})
    final = Job("alpine", ["report"], depends_on=[worker, prepare])
    dicts = jobs_to_dicts([prepare, master, worker, final])
    assert [d["job_id"] for d in dicts] == ["0", "1", "2", "3"]
    assert [d["depends_on"] for d in dicts] == [[], [], ["0"], ["2", "0"]]
    assert [d["master"] for d in dicts] == [None, None, "1", None]
    assert dicts[2] == {"job_id": "2", "image": "pytorch", "commands": ["train"], "ports": [], "working_dir": "src",
                        "artifacts": [], "resources": ResourceRequirements().to_dict(), "depends_on": ["0"],
                        "master": "1", "env": {"RANK": "1"}, "retry": None, "max_duration_s": None,
                        "apps": []}
    assert dicts[1]["resources"]["gpu_count"] == 1
    assert dicts[0]["artifacts"] == ["data"]
    json.dumps(dicts)  # plain JSON


def test_jobs_to_dicts_identity_not_equality() -> None:
    a, twin = Job("alpine", ["x"]), Job("alpine", ["x"])
    b = Job("alpine", ["y"], depends_on=[twin])
    with pytest.raises(ValueError, match="depends_on names a job that create_jobs\\(\\) did not return"):
        jobs_to_dicts([a, b])


def test_jobs_to_dicts_unknown_dependency() -> None:
    outsider = Job("alpine", ["o"])
    with pytest.raises(ValueError, match=r"job 1 .*its depends_on names a job"):
        jobs_to_dicts([Job("alpine", ["a"]), Job("alpine", ["b"], depends_on=[outsider])])


def test_jobs_to_dicts_unknown_master() -> None:
    with pytest.raises(ValueError, match=r"job 0 .*its master names a job"):
        jobs_to_dicts([Job("alpine", ["a"], master=Job("alpine", ["m"]))])


def test_jobs_to_dicts_empty() -> None:
    assert jobs_to_dicts([]) == []


# ----------------------------------------------------------------------------- jobs.json is JobSpec's wire form


def full_job() -> Any:
    """Three jobs, the last with every field set to something other than its default."""
    upstream, master = Job("alpine", ["prep"]), Job("alpine", ["serve"], ports=[29500])
    job = Job(image="pytorch:2", commands=["pip install -r r.txt", "python train.py"], ports=[0, 6006],
              working_dir="src", artifacts=["out", "ckpt"],
              resources=ResourceRequirements(cpu=1.5, memory="2GB", gpu=GPU(2, name="A100", memory="40GB"),
                                             shm_size="1GB"),
              depends_on=[upstream], master=master, environment={"A": "1", "B": "two"}, retry=Retry(4, "1m"),
              max_duration="2h", apps=[App("board", port_index=1, url_path="/lab", url_query_params={"t": "x"})])
    return [upstream, master, job]


def test_every_job_field_reaches_the_worker_as_a_jobspec() -> None:
    """The worker reads jobs.json with the generic decoder: what the SDK writes is JobSpec's wire form."""
    wire = jobs_to_dicts(full_job())[2]
    spec = from_dict(JobSpec, json.loads(json.dumps(wire)))  # through JSON, as jobs.json
    assert spec == JobSpec(
        job_id="2", image="pytorch:2", commands=["pip install -r r.txt", "python train.py"], working_dir="src",
        ports=[0, 6006], artifacts=["out", "ckpt"],
        resources=Resources(cpu=1.5, memory_mib=2048, shm_size_mib=1024, gpu_count=2, gpu_name="A100",
                            gpu_memory_mib=40960),
        depends_on=["0"], master="1", env={"A": "1", "B": "two"}, retry=RetryPolicy(limit=4, backoff_s=60.0),
        max_duration_s=7200.0, apps=[AppSpec(name="board", port_index=1, url_path="/lab", url_query_params={"t": "x"})])
    # every field was set to something else than its default, so none can be dropped unnoticed
    for part, default in ((spec, JobSpec(job_id="", image="", commands=[])), (spec.resources, Resources()),
                          (spec.retry, RetryPolicy()), (spec.apps[0], AppSpec(name=""))):
        for f in dataclasses.fields(part):  # type: ignore[arg-type]
            assert getattr(part, f.name) != getattr(default, f.name), f"{type(part).__name__}.{f.name}"


def test_the_sdk_writes_every_field_of_jobspec() -> None:
    """Fails when JobSpec (or a part of it) gains a field that the SDK does not write."""
    wire = jobs_to_dicts(full_job())[2]

    def names(cls: Any) -> set:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(wire) == names(JobSpec)
    assert set(wire["resources"]) == names(Resources)
    assert set(wire["retry"]) == names(RetryPolicy)
    assert set(wire["apps"][0]) == names(AppSpec)


# ----------------------------------------------------------------------------- Provider, in process


PROVIDER_MODULE = '''
from typing import List

from dstack import GPU, Job, Provider, ResourceRequirements


class TwoStepProvider(Provider):
    def __init__(self):
        super().__init__(schema="schema.yaml")

    def create_jobs(self) -> List[Job]:
        data = self.workflow.data
        if data.get("mode") == "none":
            return []
        if data.get("mode") == "outsider":
            return [Job(image="alpine", commands=["x"], depends_on=[Job(image="alpine", commands=["y"])])]
        fetch = Job(image="curlimages/curl", commands=[f"curl -o {data['output']}/f {data['url']}"],
                    artifacts=[data["output"]])
        train = Job(image="pytorch", commands=["python train.py"], depends_on=[fetch], ports=[6006],
                    resources=ResourceRequirements(cpu=2, memory=data.get("memory", "1GB"), gpu=GPU(1, "A100")),
                    environment={"RUN": self.workflow.run_name})
        return [fetch, train]


class NoSchemaProvider(Provider):
    def create_jobs(self):
        return [Job(image="alpine", commands=["true"])]


class NotJobsProvider(Provider):
    def create_jobs(self):
        return ["not a job"]
'''

PROVIDER_SCHEMA = '''
type: object
additionalProperties: false
required: [url, output]
properties:
  url: {type: string, pattern: "^https?://"}
  output: {type: string}
  memory: {type: string}
  mode: {enum: [normal, none, outsider]}
'''


@pytest.fixture
def provider_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The provider module, loaded from a file, so ``schema="schema.yaml"`` resolves beside it."""
    folder = tmp_path / "providers" / "two_step"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(PROVIDER_MODULE)
    (folder / "schema.yaml").write_text(PROVIDER_SCHEMA)
    name = "dstack_test_two_step_provider"
    spec = importlib.util.spec_from_file_location(name, folder / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    # Run from elsewhere: the schema must be found next to the module, not in the cwd.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return module


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv(OUTPUT_DIR_ENV, str(out))
    return out


def set_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"name": "download", "provider": "two-step", "run_name": "witty-otter-1234",
                                "data": data}))
    monkeypatch.setenv(WORKFLOW_FILE_ENV, str(path))


def test_workflow_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "http://x"})
    workflow = Workflow.from_environment()
    assert (workflow.name, workflow.provider, workflow.run_name) == ("download", "two-step", "witty-otter-1234")
    assert workflow.data == {"url": "http://x"}


def test_workflow_needs_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKFLOW_FILE_ENV, raising=False)
    with pytest.raises(RuntimeError, match=WORKFLOW_FILE_ENV):
        Workflow.from_environment()


def test_provider_end_to_end(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "https://example.com/a.csv", "output": "data", "memory": "2GB"})
    provider = provider_module.TwoStepProvider()
    assert provider.workflow.name == "download"
    provider.start()
    assert sorted(p.name for p in output_dir.iterdir()) == ["jobs.json"]  # no temporary file left, no error
    jobs = json.loads((output_dir / "jobs.json").read_text())["jobs"]
    assert len(jobs) == 2
    assert jobs[0] == {"job_id": "0", "image": "curlimages/curl",
                       "commands": ["curl -o data/f https://example.com/a.csv"],
                       "ports": [], "working_dir": "", "artifacts": ["data"],
                       "resources": ResourceRequirements().to_dict(), "depends_on": [], "master": None,
                       "env": {}, "retry": None, "max_duration_s": None, "apps": []}
    assert jobs[1]["depends_on"] == ["0"]
    assert jobs[1]["ports"] == [6006]
    assert jobs[1]["resources"] == {"cpu": 2.0, "memory_mib": 2048, "shm_size_mib": None, "gpu_count": 1,
                                    "gpu_name": "A100", "gpu_memory_mib": None}
    assert jobs[1]["env"] == {"RUN": "witty-otter-1234"}
    assert "created 2 job(s)" in capsys.readouterr().out


def test_provider_without_output_dir_prints_jobs(provider_module: ModuleType, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv(OUTPUT_DIR_ENV, raising=False)
    set_workflow(tmp_path, monkeypatch, {})
    provider_module.NoSchemaProvider().start()
    out = capsys.readouterr().out
    assert '"jobs"' in out and '"alpine"' in out


def read_error(output_dir: Path) -> str:
    assert not (output_dir / "jobs.json").exists()
    reason = json.loads((output_dir / "error.json").read_text())["reason"]
    assert isinstance(reason, str)
    return reason


def test_schema_violation(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": 5, "output": "data"})
    with pytest.raises(SystemExit) as info:
        provider_module.TwoStepProvider()
    assert info.value.code == INVALID_EXIT_CODE == 2
    reason = read_error(output_dir)
    assert "workflow 'download' does not match the schema of provider 'two-step'" in reason
    assert "schema.yaml" in reason
    assert "field 'url'" in reason
    assert "(rule: type)" in reason
    assert reason in capsys.readouterr().err


def test_schema_missing_field(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "https://x"})
    with pytest.raises(SystemExit, match="2"):
        provider_module.TwoStepProvider()
    reason = read_error(output_dir)
    assert "output" in reason and "(rule: required)" in reason


def test_schema_extra_field(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "https://x", "output": "o", "ouptut": "typo"})
    with pytest.raises(SystemExit):
        provider_module.TwoStepProvider()
    reason = read_error(output_dir)
    assert "ouptut" in reason and "(rule: additionalProperties)" in reason


def test_schema_pattern(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "ftp://x", "output": "o"})
    with pytest.raises(SystemExit):
        provider_module.TwoStepProvider()
    reason = read_error(output_dir)
    assert "field 'url'" in reason and "(rule: pattern)" in reason


def test_missing_schema_file(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {})
    with pytest.raises(SystemExit) as info:
        provider_module.NoSchemaProvider(schema="nope.yaml")
    assert info.value.code == 2
    assert "cannot read the provider's schema" in read_error(output_dir)


def test_absolute_schema_path(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tmp_path / "abs_schema.yaml"
    schema.write_text("type: object\nrequired: [must]\n")
    set_workflow(tmp_path, monkeypatch, {})
    with pytest.raises(SystemExit):
        provider_module.NoSchemaProvider(schema=str(schema))
    assert "must" in read_error(output_dir)


def test_create_jobs_returning_nothing(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "https://x", "output": "o", "mode": "none"})
    provider = provider_module.TwoStepProvider()
    with pytest.raises(SystemExit) as info:
        provider.start()
    assert info.value.code == 2
    assert "create_jobs() must return a non-empty list" in read_error(output_dir)


def test_create_jobs_returning_non_jobs(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {})
    with pytest.raises(SystemExit) as info:
        provider_module.NotJobsProvider().start()
    assert info.value.code == 2
    assert "non-empty list of dstack.Job" in read_error(output_dir)


def test_create_jobs_with_outsider_dependency(provider_module: ModuleType, output_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"url": "https://x", "output": "o", "mode": "outsider"})
    with pytest.raises(SystemExit) as info:
        provider_module.TwoStepProvider().start()
    assert info.value.code == 2
    assert "did not return" in read_error(output_dir)


def test_base_create_jobs_not_implemented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {})
    with pytest.raises(NotImplementedError, match="must implement create_jobs"):
        Provider().create_jobs()


def test_schema_file_written_in_a_subfolder_of_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          output_dir: Path) -> None:
    folder = tmp_path / "p2"
    (folder / "schemas").mkdir(parents=True)
    (folder / "schemas" / "s.yaml").write_text("type: object\nproperties: {n: {type: integer}}\n")
    (folder / "mod.py").write_text(textwrap.dedent('''
        from dstack import Job, Provider
        class P(Provider):
            def __init__(self):
                super().__init__(schema="schemas/s.yaml")
            def create_jobs(self):
                return [Job(image="alpine", commands=["echo"])]
    '''))
    name = "dstack_test_p2_provider"
    spec = importlib.util.spec_from_file_location(name, folder / "mod.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    set_workflow(tmp_path, monkeypatch, {"n": 1})
    module.P().start()
    assert len(json.loads((output_dir / "jobs.json").read_text())["jobs"]) == 1
    set_workflow(tmp_path, monkeypatch, {"n": "one"})
    with pytest.raises(SystemExit):
        module.P()
    assert "field 'n'" in json.loads((output_dir / "error.json").read_text())["reason"]
