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
from dstack.messages import AppSpec, JobSpec, RegistryAuth, Resources, RetryPolicy, from_dict
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
    with pytest.raises(ValueError, match=r"^resources: unknown key\(s\) gpus; "
                                         r"the keys are cpu, memory, gpu, shm_size, interruptible, pids$"):
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
                        "apps": [], "registry_auth": None, "pull_policy": None}
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
                                             shm_size="1GB", interruptible=True, pids=512),
              depends_on=[upstream], master=master, environment={"A": "1", "B": "two"}, retry=Retry(4, "1m"),
              max_duration="2h", apps=[App("board", port_index=1, url_path="/lab", url_query_params={"t": "x"})],
              registry_auth={"username": "ci", "password": "${{ secrets.TOKEN }}"}, pull_policy="always")
    return [upstream, master, job]


def test_every_job_field_reaches_the_worker_as_a_jobspec() -> None:
    """The worker reads jobs.json with the generic decoder: what the SDK writes is JobSpec's wire form."""
    wire = jobs_to_dicts(full_job())[2]
    spec = from_dict(JobSpec, json.loads(json.dumps(wire)))  # through JSON, as jobs.json
    assert spec == JobSpec(
        job_id="2", image="pytorch:2", commands=["pip install -r r.txt", "python train.py"], working_dir="src",
        ports=[0, 6006], artifacts=["out", "ckpt"],
        resources=Resources(cpu=1.5, memory_mib=2048, shm_size_mib=1024, gpu_count=2, gpu_name="A100",
                            gpu_memory_mib=40960, interruptible=True, pids=512),
        depends_on=["0"], master="1", env={"A": "1", "B": "two"}, retry=RetryPolicy(limit=4, backoff_s=60.0),
        max_duration_s=7200.0, apps=[AppSpec(name="board", port_index=1, url_path="/lab", url_query_params={"t": "x"})],
        registry_auth=RegistryAuth(username="ci", password="${{ secrets.TOKEN }}"), pull_policy="always")
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
                       "env": {}, "retry": None, "max_duration_s": None, "apps": [],
                       "registry_auth": None, "pull_policy": None}
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


# ----------------------------------------------------------------------------- early dstack's spellings


def test_early_names_are_exported_by_dstack_and_the_sdk() -> None:
    from dstack import Gpu, GpuResourceRequirements, Resources
    assert Resources is ResourceRequirements and dstack.sdk.Resources is ResourceRequirements
    assert GpuResourceRequirements is Gpu and issubclass(Gpu, GPU)
    assert {"Resources", "Gpu", "GpuResourceRequirements"} <= set(dstack.__all__) & set(dstack.sdk.__all__)


def test_gpu_takes_early_dstacks_order_count_memory_name() -> None:
    gpu = dstack.Gpu(2, "16GB", "V100")
    assert isinstance(gpu, GPU) and (gpu.count, gpu.memory_mib, gpu.name) == (2, 16384, "V100")
    resources = dstack.Resources(cpu=4, memory="8GB", gpu=dstack.Gpu(1, name="K80"))
    assert resources.to_dict() == ResourceRequirements(cpu=4, memory="8GB", gpu=GPU(1, name="K80")).to_dict()
    assert dstack.GpuResourceRequirements(3).count == 3


def test_gpu_with_a_model_second_says_the_order() -> None:
    with pytest.raises(ValueError, match=r"Gpu\(count, memory, name\) takes the memory second.*"
                                         r"write Gpu\(1, name='A100'\)"):
        dstack.Gpu(1, "A100")


def test_job_image_name_is_image() -> None:
    assert Job(image_name="alpine", commands=["true"]).image == "alpine"
    assert Job(image="alpine", image_name="alpine").image == "alpine"  # the same twice is no conflict


def test_job_image_and_a_different_image_name_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Job\(image='alpine', image_name='ubuntu'\): image_name is the older "
                                         r"name of image and the two differ; give image only"):
        Job(image="alpine", image_name="ubuntu")


def test_job_without_image_nor_image_name() -> None:
    with pytest.raises(ValueError, match="non-empty image name"):
        Job(commands=["true"])


def test_job_commands_may_be_left_out() -> None:
    job = Job(image_name="nginx")
    assert job.commands == [] and jobs_to_dicts([job])[0]["commands"] == []  # the image's own command runs
    assert Job(image="nginx", commands=None).commands == []


@pytest.mark.parametrize("ports,port_count,expected", [
    (None, 2, [0, 0]), ([], 1, [0]), (None, 0, []), ([8080, 0], 2, [8080, 0]), ([6006], None, [6006]),
    (None, None, []),
])
def test_job_port_count_asks_for_free_ports(ports: Any, port_count: Any, expected: list) -> None:
    job = Job(image="alpine", ports=ports, port_count=port_count)
    assert job.ports == expected and jobs_to_dicts([job])[0]["ports"] == expected


def test_job_ports_and_a_different_port_count_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Job\(ports=\[8080\], port_count=2\): ports lists 1 port\(s\), "
                                         r"port_count asks for 2; give ports only \(0 for any free port, e.g. "
                                         r"ports=\[0, 0\]\) or port_count only"):
        Job(image="alpine", ports=[8080], port_count=2)


@pytest.mark.parametrize("bad", [-1, "2", 1.5, True])
def test_job_bad_port_count(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"Job\(port_count=...\) must be a whole number >= 0"):
        Job(image="alpine", port_count=bad)


def test_job_with_port_count_serves_apps() -> None:
    job = Job(image="python:3.11", port_count=1, apps=[App(port_index=0, app_name="lab", url_path="lab")])
    assert jobs_to_dicts([job])[0]["apps"] == [{"name": "lab", "port_index": 0, "url_path": "/lab",
                                                "url_query_params": {}}]


@pytest.mark.parametrize("app", [
    App(0, "tensorboard"), App(0, "tensorboard", "", None), App(port_index=0, app_name="tensorboard"),
    App("tensorboard", 0), App("tensorboard"), App(name="tensorboard", port_index=0), App(0, app_name="tensorboard"),
    App(name="tensorboard", app_name="tensorboard"),
], ids=["old-positional", "old-positional-all", "old-keywords", "new-positional", "new-default-port",
        "new-keywords", "old-port-keyword-name", "both-names-equal"])
def test_app_early_and_current_signatures(app: App) -> None:
    assert (app.name, app.port_index) == ("tensorboard", 0)


def test_app_early_order_with_all_arguments() -> None:
    app = App(1, "lab", "lab", {"token": "t"})
    assert app.to_dict() == {"name": "lab", "port_index": 1, "url_path": "/lab", "url_query_params": {"token": "t"}}
    assert App("lab", 1, "lab", {"token": "t"}).to_dict() == app.to_dict()


def test_app_name_and_a_different_app_name_are_refused() -> None:
    with pytest.raises(ValueError, match=r"App\(name='a', app_name='b'\): app_name is the older name of name and "
                                         r"the two differ; give name only"):
        App(name="a", app_name="b")


@pytest.mark.parametrize("args,kwargs", [((0,), {}), ((), {}), ((0, 1), {})])
def test_app_without_a_name_is_refused(args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="App"):
        App(*args, **kwargs)


OLD_PROVIDER_MODULE = '''
from dstack import App, Gpu, Job, Provider, Resources


class OldProvider(Provider):
    def __init__(self):
        super().__init__(schema="providers/old/schema.yaml")

    def create_jobs(self):
        resources = self._resources() or Resources()
        return [Job(image_name="python:3.11", commands=["serve"], port_count=1, resources=resources,
                    apps=[App(0, "board")]),
                Job(image_name="python:3.11", resources=Resources(gpu=Gpu(1, "8GB")))]
'''


def load_module(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def old_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with early dstack's provider layout; the provider runs from elsewhere, as in its container."""
    project = tmp_path / "project"
    (project / "providers" / "old").mkdir(parents=True)
    (project / "providers" / "old" / "main.py").write_text(OLD_PROVIDER_MODULE)
    (project / "providers" / "old" / "schema.yaml").write_text(
        "type: object\nadditionalProperties: false\nproperties:\n  resources: {type: object}\n  n: {type: integer}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DSTACK_PROJECT_DIR", str(project))
    return project


def test_schema_relative_to_the_project_root(old_project: Path, output_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_module(old_project / "providers" / "old" / "main.py", "dstack_test_old_provider", monkeypatch)
    set_workflow(tmp_path, monkeypatch, {"n": 1, "resources": {"cpu": 2, "memory": "1GB"}})
    module.OldProvider().start()
    first, second = json.loads((output_dir / "jobs.json").read_text())["jobs"]
    assert (first["image"], first["ports"], first["apps"][0]["name"]) == ("python:3.11", [0], "board")
    assert (first["resources"]["cpu"], first["resources"]["memory_mib"]) == (2.0, 1024)
    assert (second["commands"], second["resources"]["gpu_count"], second["resources"]["gpu_memory_mib"]) == (
        [], 1, 8192)
    (output_dir / "jobs.json").unlink()
    set_workflow(tmp_path, monkeypatch, {"n": "one"})
    with pytest.raises(SystemExit):
        module.OldProvider()
    reason = read_error(output_dir)
    assert "does not match the schema" in reason and "field 'n'" in reason
    assert str(Path("providers") / "old" / "schema.yaml") in reason


def test_schema_relative_to_the_working_folder(old_project: Path, output_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSTACK_PROJECT_DIR")
    monkeypatch.chdir(old_project)  # a provider of another repository runs in its checkout
    module = load_module(old_project / "providers" / "old" / "main.py", "dstack_test_old_provider", monkeypatch)
    set_workflow(tmp_path, monkeypatch, {"n": 2})
    module.OldProvider().start()
    assert len(json.loads((output_dir / "jobs.json").read_text())["jobs"]) == 2


def test_schema_next_to_the_module_wins(old_project: Path, output_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    beside = old_project / "providers" / "old" / "providers" / "old"
    beside.mkdir(parents=True)
    (beside / "schema.yaml").write_text("type: object\nrequired: [beside]\n")
    module = load_module(old_project / "providers" / "old" / "main.py", "dstack_test_old_provider", monkeypatch)
    set_workflow(tmp_path, monkeypatch, {"n": 1})
    with pytest.raises(SystemExit):
        module.OldProvider()
    assert "beside" in read_error(output_dir)


def test_schema_found_nowhere(old_project: Path, output_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {})
    with pytest.raises(SystemExit):
        Provider(schema="providers/nope/schema.yaml")
    reason = read_error(output_dir)
    assert "cannot read the provider's schema" in reason and "nope" in reason


def test_an_invalid_schema_is_reported_as_the_providers_fault(provider_module: ModuleType, output_dir: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = tmp_path / "bad_schema.yaml"
    schema.write_text("type: object\nproperties:\n  n: {type: integer, requird: true}\n")
    set_workflow(tmp_path, monkeypatch, {"n": 1})
    with pytest.raises(SystemExit) as info:
        provider_module.NoSchemaProvider(schema=str(schema))
    assert info.value.code == INVALID_EXIT_CODE
    reason = read_error(output_dir)
    assert reason.startswith("the provider's schema ") and "bad_schema.yaml is invalid: " in reason
    assert "requird" in reason and "does not match" not in reason


def test_provider_resources_of_a_workflow_without_them(provider_module: ModuleType, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {})
    assert provider_module.NoSchemaProvider()._resources() is None


def test_provider_resources_that_are_wrong_end_the_provider(provider_module: ModuleType, output_dir: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_workflow(tmp_path, monkeypatch, {"resources": {"memory": "lots"}})
    with pytest.raises(SystemExit):
        provider_module.NoSchemaProvider()._resources()
    assert "workflow 'download': resources: memory must be a size" in read_error(output_dir)


@pytest.mark.parametrize("pids", [0, -5, 4194305, True, 1.5, "50"])
def test_a_process_limit_out_of_range_is_refused(pids: Any) -> None:
    with pytest.raises(ValueError, match="pids must be a whole number from 1 to 4194304"):
        ResourceRequirements(pids=pids)
    assert ResourceRequirements(pids=4194304).to_dict()["pids"] == 4194304
