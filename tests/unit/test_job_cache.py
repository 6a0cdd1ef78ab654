"""Job caching: the cache key and its ingredients, hits, misses and stale entries on a worker (fake
runtime, local storage), the scheduler's part (which jobs may be cached, a cached end), the
workflow's ``cache:`` key, and how a cached job is shown."""
from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from rich.console import Console

from dstack.cli.follow import _show_changes
from dstack.cli.render import runs_table
from dstack.errors import ConfigError, ImageNotFound, ImageNotInRegistry, ObjectNotFound
from dstack.logs import LogChunk, LogWriter
from dstack.messages import (
    ArtifactFile,
    ArtifactManifest,
    ArtifactRef,
    GetRuns,
    JobSpec,
    JobTask,
    Resources,
    SubmitRun,
    TaskFinished,
    TaskStarted,
    WorkflowSpec,
)
from dstack.names import (
    LOGS_EXCHANGE,
    artifact_key,
    artifacts_manifest_key,
    cache_entry_key,
    cache_record_key,
    live_routing_key,
    log_chunk_key,
)
from dstack.planning import plan_run
from dstack.project import load_project
from dstack.states import Status
from dstack.views import JobView, RunView
from dstack.workers.cache import CacheEntry, JobCache, cache_ingredients, cache_key, project_digest
from dstack.workers.execution import Execution, JobExecution
from dstack.workers.runtime import ContainerSpec
from tests.fakes import Script, workdir
from tests.scheduler_harness import PROVIDER, Harness, spec
from tests.worker_harness import RUN, WorkerHarness

OTHER = "calm-heron-2"

# ----------------------------------------------------------------------------- the key


def base_task(**job: Any) -> JobTask:
    options: dict[str, Any] = {"image": "python:3.11", "commands": ["python train.py"], "env": {"EPOCHS": "3"},
                               "artifacts": ["model"], **job}
    return JobTask(run_name=RUN, attempt=1, job=JobSpec(job_id="train.0", **options), snapshot_id="snap-1",
                   inputs=[ArtifactRef("r0", "prepare.0", "")], secrets={"TOKEN": "s3cret"}, cache=True)


def base_inputs(sha: str = "aa", target: str = "") -> list[tuple[ArtifactRef, ArtifactManifest]]:
    manifest = ArtifactManifest(job_id="prepare.0", artifacts=["data"], files=[ArtifactFile("data/x.csv", 10, sha)])
    return [(ArtifactRef("r0", "prepare.0", target), manifest)]


def key_of(task: Optional[JobTask] = None, image_id: str = "sha256:1", inputs: Optional[list[Any]] = None,
           project: str = "p1") -> str:
    return cache_key(task or base_task(), image_id, project, base_inputs() if inputs is None else inputs)


def changed(**job: Any) -> JobTask:
    task = base_task()
    task.job = dataclasses.replace(task.job, **job)
    return task


def test_the_same_ingredients_give_the_same_key() -> None:
    assert key_of() == key_of(base_task(), "sha256:1", base_inputs(), "p1")
    assert len(key_of()) == 64
    # the run, the attempt, the snapshot's id and what only decides where it runs change nothing
    task = base_task(resources=Resources(cpu=4, memory_mib=2048, shm_size_mib=64, interruptible=True),
                     max_duration_s=60.0)
    task.run_name, task.attempt, task.snapshot_id = OTHER, 3, "snap-2"
    assert key_of(task) == key_of()
    # an input of another run with the same content (checksums) is the same input
    moved = [(ArtifactRef("r9", "prepare.0", ""), base_inputs()[0][1])]
    assert key_of(inputs=moved) == key_of()


@pytest.mark.parametrize("what, task, image_id, inputs", [
    ("image", None, "sha256:2", None),
    ("commands", changed(commands=["python train.py --fast"]), "sha256:1", None),
    ("environment", changed(env={"EPOCHS": "4"}), "sha256:1", None),
    ("working directory", changed(working_dir="src"), "sha256:1", None),
    ("artifact folders", changed(artifacts=["model", "logs"]), "sha256:1", None),
    ("ports", changed(ports=[8080]), "sha256:1", None),
    ("GPUs", changed(resources=Resources(gpu_count=1)), "sha256:1", None),
    ("job", changed(job_id="train.1"), "sha256:1", None),
    ("input content", None, "sha256:1", base_inputs(sha="bb")),
    ("input folder", None, "sha256:1", base_inputs(target="data")),
    ("no input", None, "sha256:1", []),
])
def test_each_ingredient_changes_the_key(what: str, task: Optional[JobTask], image_id: str,
                                         inputs: Optional[list[Any]]) -> None:
    assert key_of(task, image_id, inputs) != key_of(), what


def test_the_project_and_secrets_change_the_key_and_secrets_are_only_hashed() -> None:
    other_secret = base_task()
    other_secret.secrets = {"TOKEN": "another"}
    assert len({key_of(), key_of(project="p2"), key_of(other_secret)}) == 3
    assert "s3cret" not in repr(cache_ingredients(base_task(), "sha256:1", "p1", base_inputs()))


def test_the_project_digest_is_its_files_content_but_the_files_the_cli_reads() -> None:
    files = [["train.py", "d1", 10, False], [".dstack/workflows.yaml", "d2", 5, False], ["run.sh", "d3", 3, True]]
    digest = project_digest(files)
    assert project_digest(list(reversed(files))) == digest
    assert project_digest([*files[:1], [".dstack/workflows.yaml", "d9", 7, False], files[2]]) == digest
    assert project_digest([*files[:2], [".dstack/variables.yaml", "d4", 1, False], files[2]]) == digest
    assert project_digest([["train.py", "d5", 10, False], *files[1:]]) != digest  # content
    assert project_digest([["src/train.py", "d1", 10, False], *files[1:]]) != digest  # path
    assert project_digest([*files[:2], ["run.sh", "d3", 3, False]]) != digest  # mode
    assert project_digest([*files, [".dstack/data.csv", "d6", 1, False]]) != digest  # other files in .dstack


def test_an_input_without_checksums_is_known_by_where_it_is_stored() -> None:
    unhashed = base_inputs(sha="")
    moved = [(ArtifactRef("r9", "prepare.0", ""), unhashed[0][1])]
    assert key_of(inputs=unhashed) == key_of(inputs=base_inputs(sha=""))
    assert key_of(inputs=moved) != key_of(inputs=unhashed)


# ----------------------------------------------------------------------------- on a worker


class Worker(WorkerHarness):
    """The worker harness, running a task as the worker does: reused from the cache, else started."""

    def task(self, run: str = RUN, attempt: int = 1, cache: bool = True, **job: Any) -> JobTask:
        options: dict[str, Any] = {"image": "python:3.11", "artifacts": ["model"], **job}
        return self.job(run=run, attempt=attempt, cache=cache, snapshot_id=self.snapshot(), **options)

    def run(self, task: JobTask, output: str = "", exit_code: int = 0) -> TaskFinished:
        """What the worker does with a task (as ``Worker._run``): reuse, else start and follow."""
        self.runtime.scripts["train.0"] = Script(output=[output.encode()], exit_code=exit_code,
                                                 on_start=lambda spec: write_model(spec, output))
        self.events.clear()
        self.announced.clear()
        execution = Execution.for_task(task, self.context)
        execution.save()
        if not execution.reuse():
            execution.start()
            execution.follow()
        assert not execution.folder.exists()  # cleaned up either way
        return self.finished()

    def ran(self, task: JobTask) -> bool:
        """Whether the task's container was started."""
        return any(c.spec.env.get("RUN_NAME") == task.run_name and c.spec.env.get("JOB_ATTEMPT") == str(task.attempt)
                   for c in self.runtime.started.values())


def write_model(spec: ContainerSpec, text: str) -> None:
    model = workdir(spec) / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "weights.txt").write_text(f"weights of {text}")


@pytest.fixture
def w(tmp_path: Path) -> Worker:
    return Worker(tmp_path)


def test_a_miss_runs_the_job_and_stores_its_entry(w: Worker) -> None:
    task = w.task()
    finished = w.run(task, "epoch 1\n")
    assert w.ran(task) and finished.status is Status.DONE and finished.cached_from == ""
    assert isinstance(w.events[0], TaskStarted)
    key = JobCache(w.storage, w.runtime).key(task)[0]
    entry = CacheEntry.from_json(w.storage.get_bytes(cache_entry_key(key)))
    assert (entry.run_name, entry.job_id, entry.first_chunk, entry.end_chunk) == (RUN, "train.0", 0, 1)
    assert entry.image_id == "sha256:python:3.11" and entry.key == key
    assert w.storage.get_bytes(cache_record_key(RUN, "train.0")) == w.storage.get_bytes(cache_entry_key(key))


def test_a_hit_reuses_artifacts_and_logs_and_starts_nothing(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    second = w.task(run=OTHER)
    finished = w.run(second, "never printed\n")
    assert not w.ran(second)
    assert finished == TaskFinished(run_name=OTHER, task_id="train.0", attempt=1, status=Status.DONE,
                                    artifacts_size=len("weights of epoch 1\n"), cached_from=f"{RUN}/train.0",
                                    worker_id="w1")
    assert len(w.events) == 1  # no TaskStarted: nothing ran
    assert w.storage.get_bytes(artifact_key(OTHER, "train.0", "model/weights.txt")) == b"weights of epoch 1\n"
    manifest = ArtifactManifest.from_json(w.storage.get_bytes(artifacts_manifest_key(OTHER, "train.0")))
    assert [f.path for f in manifest.files] == ["model/weights.txt"]
    assert w.log_lines(run=OTHER) == w.log_lines(run=RUN) == ["epoch 1"]
    assert [(exchange, run) for exchange, run, _ in w.announced] == [(LOGS_EXCHANGE, live_routing_key("", OTHER))]


def test_a_hit_after_earlier_attempts_numbers_the_reused_logs_after_theirs(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    writer = LogWriter(w.storage, OTHER, "train.0")  # attempt 1 of the other run failed
    writer.add_lines(["attempt 1 failed"])
    writer.close()
    finished = w.run(w.task(run=OTHER, attempt=2))
    assert finished.cached_from == f"{RUN}/train.0" and finished.attempt == 2
    assert w.log_lines(run=OTHER) == ["attempt 1 failed", "epoch 1"]
    assert LogChunk.decode(w.storage.get_bytes(log_chunk_key(OTHER, "train.0", 1))).number == 1
    # and a job reused from OTHER would get only the lines of its successful attempt
    entry = CacheEntry.from_json(w.storage.get_bytes(cache_entry_key(JobCache(w.storage, w.runtime).key(
        w.task())[0])))
    assert entry.run_name == RUN  # a hit stores no entry of its own


@pytest.mark.parametrize("change", ["image", "commands", "env", "working_dir", "project file", "no cache"])
def test_a_changed_ingredient_runs_the_job(w: Worker, change: str) -> None:
    w.run(w.task(), "epoch 1\n")
    changes: dict[str, dict[str, Any]] = {"commands": {"commands": ["python train.py --fast"]},
                                          "env": {"env": {"A": "1"}}, "working_dir": {"working_dir": "src"},
                                          "no cache": {"cache": False}}
    options = changes.get(change, {})
    if change == "image":
        w.runtime.image_ids["python:3.11"] = "sha256:rebuilt"
    if change == "project file":
        (w.project / "train.py").write_text("print('changed')\n")
    second = w.task(run=OTHER, **options)
    finished = w.run(second, "epoch 2\n")
    assert w.ran(second) and finished.cached_from == "" and w.log_lines(run=OTHER) == ["epoch 2"]


def test_editing_the_files_the_cli_reads_keeps_a_hit(w: Worker) -> None:
    (w.project / ".dstack").mkdir()
    (w.project / ".dstack" / "workflows.yaml").write_text("workflows: []\n")
    w.run(w.task(), "epoch 1\n")
    (w.project / ".dstack" / "workflows.yaml").write_text("workflows: []  # another workflow added\n")
    second = w.task(run=OTHER)
    assert w.run(second).cached_from == f"{RUN}/train.0" and not w.ran(second)


def test_an_input_with_other_content_runs_the_job(w: Worker) -> None:
    def upstream(run: str, sha: str) -> ArtifactRef:
        manifest = ArtifactManifest(job_id="prepare.0", artifacts=["data"], files=[ArtifactFile("data/x", 1, sha)])
        w.storage.put_bytes(artifact_key(run, "prepare.0", "data/x"), b"1")
        w.storage.put_bytes(artifacts_manifest_key(run, "prepare.0"), manifest.to_json())
        return ArtifactRef(run, "prepare.0")

    first = w.task()
    first.inputs = [upstream(RUN, "aa")]
    w.run(first, "epoch 1\n")
    same = w.task(run=OTHER)
    same.inputs = [upstream(OTHER, "aa")]  # the same content, written by another run
    assert w.run(same).cached_from == f"{RUN}/train.0"
    other = w.task(run="third-run-3")
    other.inputs = [upstream("third-run-3", "bb")]
    assert w.run(other, "epoch 3\n").cached_from == "" and w.ran(other)


@pytest.mark.parametrize("loss", ["the run", "an artifact", "a log chunk", "the record"])
def test_a_stale_entry_is_a_miss(w: Worker, loss: str) -> None:
    w.run(w.task(), "epoch 1\n")
    if loss == "the run":
        w.storage.delete_prefix(f"runs/{RUN}/")
    elif loss == "an artifact":
        w.storage.delete([artifact_key(RUN, "train.0", "model/weights.txt")])
    elif loss == "a log chunk":
        w.storage.delete([log_chunk_key(RUN, "train.0", 0)])
    else:
        w.storage.delete([cache_record_key(RUN, "train.0")])
    second = w.task(run=OTHER)
    finished = w.run(second, "epoch 2\n")
    assert w.ran(second) and finished.status is Status.DONE and finished.cached_from == ""
    assert w.log_lines(run=OTHER) == ["epoch 2"]
    # and its result is the entry now
    assert w.run(w.task(run="third-run-3")).cached_from == f"{OTHER}/train.0"


def test_a_source_deleted_while_it_is_copied_is_a_miss_and_leaves_nothing_copied(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    copy = w.storage.copy

    def copy_then_lose_the_manifest(source: str, target: str) -> None:
        if source == artifacts_manifest_key(RUN, "train.0"):
            raise ObjectNotFound(f"{source} is gone")
        copy(source, target)

    w.storage.copy = copy_then_lose_the_manifest  # type: ignore[method-assign]
    second = w.task(run=OTHER)
    execution = Execution.for_task(second, w.context)
    assert execution.reuse() is False and not list(w.storage.list(f"runs/{OTHER}/"))
    assert not w.ran(second)  # the caller starts it now


def test_a_failed_job_leaves_no_entry(w: Worker) -> None:
    w.run(w.task(), "boom\n", exit_code=1)
    assert list(w.storage.list("cache/")) == []
    second = w.task(run=OTHER)
    assert w.run(second, "ok\n").status is Status.DONE and w.ran(second)


def test_without_caching_nothing_is_looked_up_or_stored(w: Worker) -> None:
    w.run(w.task(cache=False), "epoch 1\n")
    assert list(w.storage.list("cache/")) == [] and list(w.storage.list(f"runs/{RUN}/cache/")) == []


def test_a_missing_image_is_pulled_before_the_lookup(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    w.runtime.missing_images.add("python:3.11")
    w.runtime.registry["python:3.11"] = [{"id": "a", "status": "Pull complete"}]
    execution = Execution.for_task(w.task(run=OTHER), w.context)
    assert isinstance(execution, JobExecution)
    assert execution.reuse() is True and [image for image, _ in w.runtime.pulls] == ["python:3.11"]


def test_a_missing_image_the_registry_lacks_fails_the_job(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    w.runtime.missing_images.add("python:3.11")
    execution = Execution.for_task(w.task(run=OTHER), w.context)
    with pytest.raises(ImageNotInRegistry, match="not found in its registry"):
        execution.reuse()


def test_a_missing_image_under_never_is_no_hit_and_the_start_says_why(w: Worker) -> None:
    w.run(w.task(), "epoch 1\n")
    w.runtime.missing_images.add("python:3.11")
    w.context.pull_policy = "never"
    execution = Execution.for_task(w.task(run=OTHER), w.context)
    assert isinstance(execution, JobExecution)
    assert execution.reuse() is False and execution.cache is None
    with pytest.raises(ImageNotFound, match="pull policy is never"):
        execution.start()


def test_a_job_without_artifacts_or_output_is_reused_too(w: Worker) -> None:
    w.run(w.task(artifacts=[]))
    finished = w.run(w.task(run=OTHER, artifacts=[]))
    assert finished.cached_from == f"{RUN}/train.0" and finished.artifacts_size is None
    w.storage.delete_prefix(f"runs/{RUN}/")
    assert w.run(w.task(run="third-run-3", artifacts=[])).cached_from == ""  # the record went with the run


# ----------------------------------------------------------------------------- the scheduler


@pytest.fixture
def s(tmp_path: Path) -> Any:
    harness = Harness(tmp_path / "scheduler" / "state.db")
    yield harness
    harness.store.close()


def submit(h: Harness, cache: bool) -> None:
    h.scheduler.handle_request(SubmitRun(
        run_name="r1", workflow="train", snapshot_id="snap", submitted_at=time.time(), project="/p",
        workflows=[WorkflowSpec(name="train", data={}, provider=PROVIDER, cache=cache)]))


@pytest.mark.parametrize("cache", [True, False])
def test_jobs_of_a_cached_workflow_are_enqueued_with_cache_but_masters_and_followers_never(s: Harness,
                                                                                        cache: bool) -> None:
    submit(s, cache)
    s.start("train.provider", run="r1")
    s.finish("train.provider", run="r1", jobs=[spec("a"), spec("m"), spec("f", master="m")])
    s.start("train.1", run="r1")  # the master runs: its follower is enqueued
    assert {t.job.job_id: t.cache for t in s.job_tasks()} == {"train.0": cache, "train.1": False, "train.2": False}


def test_a_cached_end_without_a_start_is_done_and_shown(s: Harness) -> None:
    submit(s, True)
    s.start("train.provider", run="r1")
    s.finish("train.provider", run="r1", jobs=[spec("a")])
    assert s.claim("train.0", run="r1")["granted"]
    s.scheduler.handle_event(TaskFinished(run_name="r1", task_id="train.0", attempt=1, status=Status.DONE,
                                          artifacts_size=5, cached_from="r0/train.0"))
    view = s.scheduler.handle_request(GetRuns(run_name="r1"))[0]
    job = next(j for j in view["jobs"] if j["job_id"] == "train.0")
    assert (view["status"], job["status"], job["cached_from"], job["artifacts_size"]) == (
        "done", "done", "r0/train.0", 5)


# ----------------------------------------------------------------------------- the workflow and the CLI


def write_workflows(root: Path, text: str) -> Path:
    (root / ".dstack").mkdir(parents=True)
    (root / ".dstack" / "workflows.yaml").write_text(text)
    return root


def test_cache_true_on_a_workflow_reaches_its_spec_and_not_its_provider(tmp_path: Path) -> None:
    root = write_workflows(tmp_path, "workflows:\n  - name: a\n    provider: bash\n    commands: [echo]\n"
                                     "    cache: true\n  - name: b\n    provider: bash\n    commands: [echo]\n"
                                     "    depends-on: [a]\n")
    specs = {s.name: s for s in plan_run(load_project(root), "b")}
    assert (specs["a"].cache, specs["b"].cache) == (True, False)
    assert "cache" not in specs["a"].data


def test_cache_must_be_true_or_false(tmp_path: Path) -> None:
    root = write_workflows(tmp_path, "workflows:\n  - name: a\n    provider: bash\n    commands: [echo]\n"
                                     "    cache: sometimes\n")
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert "cache" in str(info.value)


def job_view(job_id: str = "train.0", **fields: Any) -> JobView:
    return JobView(job_id=job_id, kind="job", workflow="train", status=Status.DONE, **fields)


def test_status_and_the_follower_show_where_a_cached_job_comes_from() -> None:
    run = RunView(run_name="r1", workflow="train", status=Status.DONE, submitted_at=time.time(),
                  jobs=[job_view(cached_from="r0/train.0")])
    console = Console(file=io.StringIO(), width=300)
    console.print(runs_table([run]))
    assert "done (cached from r0/train.0)" in console.file.getvalue()  # type: ignore[attr-defined]
    err = Console(file=io.StringIO(), width=300)
    _show_changes([job_view(cached_from="r0/train.0"), job_view(job_id="train.1", exit_code=0)], {}, err)
    shown = err.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert shown == ["train.0 done (cached from r0/train.0)", "train.1 done (exit code 0)"]
