"""Artifacts as inputs: where a worker puts them (below an input's target folder; a later input wins a
path), the tensorboard provider over earlier runs (its job, its command line), and the planning that
passes a built-in provider's ``runs`` to the scheduler."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dstack.errors import ConfigError, UnsafePath
from dstack.messages import (
    RUN_INPUTS_FOLDER,
    ArtifactRef,
    SubmitRun,
    WorkflowSpec,
    decode,
    encode,
    from_dict,
    run_input_folder,
)
from dstack.names import new_run_name
from dstack.planning import plan_builtin_run, plan_run
from dstack.project import load_project
from dstack.providers.tensorboard import main as tensorboard
from dstack.storage.local import LocalStorage
from dstack.workers.artifacts import fetch_inputs, upload_artifacts
from tests.unit.test_builtin_provider_jobs import create_jobs


def stored(storage: LocalStorage, tmp_path: Path, run: str, job: str, files: dict[str, str]) -> None:
    """Store ``files`` (path -> text) as the artifacts of ``job`` of ``run``."""
    folder = tmp_path / "jobs" / run / job
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    upload_artifacts(storage, run, job, sorted({path.split("/")[0] for path in files}), folder)


def test_inputs_merge_folders_and_a_later_one_wins_a_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    stored(storage, tmp_path, "r", "a.0", {"out/a.txt": "a", "out/same.txt": "from a"})
    stored(storage, tmp_path, "r", "b.0", {"out/b.txt": "b", "out/same.txt": "from b"})
    work = tmp_path / "work"
    fetch_inputs(storage, [ArtifactRef("r", "a.0"), ArtifactRef("r", "b.0")], work)
    assert {p.name: p.read_text() for p in (work / "out").iterdir()} == {
        "a.txt": "a", "b.txt": "b", "same.txt": "from b"}


def test_an_input_with_a_target_goes_below_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    stored(storage, tmp_path, "r1", "train.0", {"logs/events": "1"})
    stored(storage, tmp_path, "r2", "train.0", {"logs/events": "2"})
    work = tmp_path / "work"
    fetch_inputs(storage, [ArtifactRef("r1", "train.0", ".dstack/runs/r1"),
                           ArtifactRef("r2", "train.0", ".dstack/runs/r2")], work)
    assert (work / ".dstack/runs/r1/logs/events").read_text() == "1"
    assert (work / ".dstack/runs/r2/logs/events").read_text() == "2"
    assert not (work / "logs").exists()


def test_a_target_that_leaves_the_folder_is_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    stored(storage, tmp_path, "r", "a.0", {"out/a.txt": "a"})
    with pytest.raises(UnsafePath, match="leaves the project root"):
        fetch_inputs(storage, [ArtifactRef("r", "a.0", "../elsewhere")], tmp_path / "work")


def test_an_artifact_ref_without_a_target_decodes_as_before() -> None:
    assert from_dict(ArtifactRef, {"run_name": "r", "job_id": "a.0"}) == ArtifactRef("r", "a.0", "")
    spec = WorkflowSpec(name="w", data={})
    assert spec.runs == [] and from_dict(WorkflowSpec, {"name": "w", "data": {}}) == spec


def test_the_provider_and_the_scheduler_agree_on_the_folders_of_runs() -> None:
    assert tensorboard.RUNS_FOLDER == RUN_INPUTS_FOLDER
    for entry in ("witty-otter-1", "train:best"):
        assert tensorboard.run_folder(entry) == run_input_folder(entry)
    assert run_input_folder("train:best") == ".dstack/runs/train@best"


def test_a_run_name_has_the_form_the_provider_takes_for_a_run() -> None:
    assert all(tensorboard.RUN_NAME.match(new_run_name()) for _ in range(50))
    assert tensorboard.is_run("witty-otter-1") and tensorboard.is_run("train:best")
    assert not tensorboard.is_run("runs") and not tensorboard.is_run("my-run")
    assert not tensorboard.is_run("s3://bucket/x") and not tensorboard.is_run("logs/a:b")


def test_tensorboard_over_runs_names_each_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = create_jobs("tensorboard", {"runs": ["witty-otter-1", "train:best"], "logdir": "runs"},
                        tmp_path, monkeypatch)
    assert job["ports"] == [0] and job["apps"][0]["name"] == "tensorboard"
    serve = shlex.split(job["commands"][-1])
    assert serve[:4] == ["mkdir", "-p", ".dstack/runs/witty-otter-1/runs", ".dstack/runs/train@best/runs"]
    spec = serve[serve.index("--logdir_spec") + 1]
    assert spec == "witty-otter-1:.dstack/runs/witty-otter-1/runs,train@best:.dstack/runs/train@best/runs"
    # from a working directory, the folders are named from there; without logdir, all of the artifacts
    [job] = create_jobs("tensorboard", {"runs": ["r1"], "working_dir": "src"}, tmp_path / "w", monkeypatch)
    assert "--logdir_spec r1:../.dstack/runs/r1 " in job["commands"][-1]


def test_tensorboard_needs_a_folder_or_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        create_jobs("tensorboard", {}, tmp_path, monkeypatch)
    assert "logdir" in (tmp_path / "error.json").read_text()


@pytest.mark.parametrize("argv, data", [
    (["logs"], {"logdir": "logs"}),                                  # an existing folder: today's form
    (["witty-otter-1", "train:best"], {"runs": ["witty-otter-1", "train:best"]}),
    (["--logdir", "runs", "witty-otter-1"], {"runs": ["witty-otter-1"], "logdir": "runs"}),
    (["--run", "logs"], {"runs": ["logs"]}),                         # a run that has the name of a folder
    (["--logdir", "elsewhere"], {"logdir": "elsewhere"}),            # a folder that does not exist yet
    (["elsewhere"], {"logdir": "elsewhere"}),                        # not a run's name: a folder, as before
    (["witty-otter-1"], {"runs": ["witty-otter-1"]}),                # the form of a run's name, no such folder
])
def test_tensorboard_command_line(argv: list[str], data: dict, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "logs").mkdir()
    monkeypatch.chdir(tmp_path)
    [spec] = plan_builtin_run("tensorboard", argv)
    assert spec.data == data
    assert spec.runs == data.get("runs", [])


@pytest.mark.parametrize("argv, message", [
    ([], "name a folder of logs, or runs to compare"),
    (["logs", "witty-otter-1"], "logs is a folder: serve either a folder or runs (witty-otter-1), not both; "
                                "to name a run whose name is taken for a folder, write --run NAME"),
    (["logs", "more"], "one folder of logs at most, not logs, more"),
    (["--run", "bad name"], "parameter 'runs[0]'"),
])
def test_tensorboard_command_line_refused(argv: list[str], message: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "more").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        plan_builtin_run("tensorboard", argv)
    assert message in str(info.value)


def test_runs_reach_the_scheduler_as_the_message_says() -> None:
    spec = WorkflowSpec(name="w", data={"runs": ["a"]}, runs=["a", "t:b"])
    submit = SubmitRun(run_name="r", workflow="w", workflows=[spec], snapshot_id="s", submitted_at=0.0)
    assert decode(encode(submit), SubmitRun).workflows[0].runs == ["a", "t:b"]


def test_a_tensorboard_workflow_names_its_runs_for_the_scheduler(tmp_path: Path) -> None:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack/workflows.yaml").write_text("""\
workflows:
  - name: board
    provider: tensorboard
    runs: [witty-otter-1, "train:best"]
  - name: mine
    provider: custom
    runs: [not-for-the-scheduler]
""")
    (tmp_path / ".dstack/providers.yaml").write_text("providers:\n  - name: custom\n    image: python:3.11\n"
                                                     "    commands: [python3 p.py]\n")
    project = load_project(tmp_path)
    [board] = plan_run(project, "board")
    assert board.runs == ["witty-otter-1", "train:best"] and board.data == {"runs": ["witty-otter-1", "train:best"]}
    [mine] = plan_run(project, "mine")
    assert mine.runs == [] and mine.data == {"runs": ["not-for-the-scheduler"]}  # a custom provider's own parameter
