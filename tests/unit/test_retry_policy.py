"""Retry policies and time limits as the user writes them: sdk.retry (durations, Retry), the SDK's
Job and its wire form, and the workflow keys ``retry`` and ``max_duration`` of .dstack/workflows.yaml
(parsed by dstack.project, carried by dstack.planning into the WorkflowSpec)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import dstack
from dstack.errors import ConfigError
from dstack.messages import JobSpec, RetryPolicy, TaskFinished, WorkflowSpec, decode, encode, from_dict
from dstack.planning import plan_run
from dstack.project import SYSTEM_KEYS, Project, load_project
from dstack.sdk.job import Job, jobs_to_dicts
from dstack.sdk.retry import Retry, parse_duration_s

PROVIDERS = """\
providers:
  - name: python
    image: python:3.11-slim
    commands: [python3 providers/python/main.py]
"""

WORKFLOWS_FILE = ".dstack/workflows.yaml"


def project_of(root: Path, workflows: str) -> Project:
    folder = root / ".dstack"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workflows.yaml").write_text(workflows)
    (folder / "providers.yaml").write_text(PROVIDERS)
    return load_project(root)


def second_workflow_with(extra: str) -> str:
    """Two workflows; the second (on line 4) gets ``extra`` from line 6 on."""
    return ("workflows:\n"
            "  - name: prepare\n"
            "    provider: python\n"
            "  - name: train\n"
            "    provider: python\n"
            + "".join(f"    {line}\n" for line in extra.splitlines()))


def load_error(root: Path, workflows: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        project_of(root, workflows)
    return info.value


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value,seconds", [
    ("30s", 30.0), ("30sec", 30.0), ("5m", 300.0), ("5min", 300.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1.5h", 5400.0), ("0.5m", 30.0), ("90", 90.0), (90, 90.0), (1.5, 1.5), (0, 0.0), ("0s", 0.0),
    ("  10m  ", 600.0), ("10 m", 600.0), ("2H", 7200.0), ("1D", 86400.0),
])
def test_durations(value: Any, seconds: float) -> None:
    parsed = parse_duration_s(value)
    assert parsed == seconds and isinstance(parsed, float)


def test_no_duration_is_none() -> None:
    assert parse_duration_s(None) is None
    assert parse_duration_s(None, "max_duration") is None


@pytest.mark.parametrize("value", [
    "", "   ", "soon", "10x", "5ms", "1w", "h", "-5", "-5s", "1e3", "1,5h", "5m30s", "s5", "+5s",
    -1, -0.5, float("nan"), True, False, [30], {"s": 30},
])
def test_bad_durations_are_refused_naming_what(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration_s(value, "the frobnicator's timeout")
    message = str(info.value)
    assert message.startswith("the frobnicator's timeout must be a duration like '30s', '5m', '2h' or '1d'")
    assert message.endswith(f"not {value!r}")


def test_bad_duration_default_name() -> None:
    with pytest.raises(ValueError, match=r"^duration must be a duration like"):
        parse_duration_s("forever")


def test_infinite_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_duration must be a duration"):
        parse_duration_s(float("inf"), "max_duration")


# ----------------------------------------------------------------------------- Retry


def test_retry_defaults() -> None:
    retry = Retry()
    assert (retry.limit, retry.backoff_s) == (3, 10.0)
    assert retry.to_dict() == {"limit": 3, "backoff_s": 10.0}
    assert repr(retry) == "Retry(limit=3, backoff_s=10.0)"


@pytest.mark.parametrize("backoff,seconds", [("30s", 30.0), ("5m", 300.0), (0, 0.0), (2.5, 2.5), ("1.5h", 5400.0)])
def test_retry_backoff_is_a_duration(backoff: Any, seconds: float) -> None:
    assert Retry(limit=2, backoff=backoff).to_dict() == {"limit": 2, "backoff_s": seconds}


def test_retry_limit_zero_is_allowed() -> None:
    assert Retry(0).to_dict() == {"limit": 0, "backoff_s": 10.0}


@pytest.mark.parametrize("limit", [-1, -100, 1.5, 2.0, "3", None, True, False, [3]])
def test_retry_limit_must_be_a_whole_number(limit: Any) -> None:
    with pytest.raises(ValueError) as info:
        Retry(limit=limit)
    assert str(info.value) == f"retry limit must be a whole number >= 0, not {limit!r}"


@pytest.mark.parametrize("backoff", ["soon", "-1s", -3, ""])
def test_retry_backoff_must_be_a_duration(backoff: Any) -> None:
    with pytest.raises(ValueError, match=r"^retry backoff must be a duration like"):
        Retry(limit=1, backoff=backoff)


def test_retry_backoff_none_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^retry backoff must be a duration like"):
        Retry(limit=1, backoff=None)  # type: ignore[arg-type]


def test_retry_wire_form_decodes_as_a_retry_policy() -> None:
    """What a provider hands over travels in TaskFinished.jobs[i].retry as a RetryPolicy."""
    retry = Retry(limit=2, backoff="1m")
    event = TaskFinished(run_name="r", task_id="train.provider", attempt=1, status="done",
                         jobs=[JobSpec(job_id="0", image="alpine", commands=[], retry=RetryPolicy(**retry.to_dict()),
                                       max_duration_s=parse_duration_s("2h"))])
    decoded = decode(encode(event))
    assert decoded.jobs[0].retry == RetryPolicy(limit=2, backoff_s=60.0)
    assert decoded.jobs[0].max_duration_s == 7200.0


@pytest.mark.parametrize("value,expected", [
    (3, {"limit": 3, "backoff_s": 10.0}),
    (0, {"limit": 0, "backoff_s": 10.0}),
    ({"limit": 2, "backoff": "30s"}, {"limit": 2, "backoff_s": 30.0}),
    ({"limit": 5}, {"limit": 5, "backoff_s": 10.0}),
    ({"backoff": "1m"}, {"limit": 3, "backoff_s": 60.0}),
    ({"backoff": 7}, {"limit": 3, "backoff_s": 7.0}),
    ({}, {"limit": 3, "backoff_s": 10.0}),
])
def test_retry_from_value(value: Any, expected: dict) -> None:
    assert Retry.from_value(value).to_dict() == expected


@pytest.mark.parametrize("value,unknown", [
    ({"limit": 2, "tries": 3}, "tries"),
    ({"limit": 2, "backoff_s": 3, "attempts": 1}, "attempts, backoff_s"),  # sorted, all of them
    ({"max": 1}, "max"),
])
def test_retry_from_value_refuses_unknown_keys(value: dict, unknown: str) -> None:
    with pytest.raises(ValueError) as info:
        Retry.from_value(value)
    assert str(info.value) == f"retry: unknown key(s) {unknown}; the keys are limit and backoff"


@pytest.mark.parametrize("value,message", [
    (-1, "retry limit must be a whole number >= 0, not -1"),
    ({"limit": -2}, "retry limit must be a whole number >= 0, not -2"),
    ("3", "retry limit must be a whole number >= 0, not '3'"),
    (None, "retry limit must be a whole number >= 0, not None"),
    (True, "retry limit must be a whole number >= 0, not True"),
    ({"limit": 1, "backoff": "later"}, "retry backoff must be a duration like '30s', '5m', '2h' or '1d', "
                                       "not 'later'"),
])
def test_retry_from_value_refuses_bad_values(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Retry.from_value(value)
    assert str(info.value) == message


def test_retry_is_exported_by_the_sdk() -> None:
    assert dstack.Retry is Retry
    assert "Retry" in dstack.__all__


# ----------------------------------------------------------------------------- Job and its wire form


def test_job_without_retry_or_time_limit() -> None:
    job = Job(image="alpine", commands=["true"])
    assert job.retry is None and job.max_duration_s is None
    (wire,) = jobs_to_dicts([job])
    assert wire["retry"] is None and wire["max_duration_s"] is None


@pytest.mark.parametrize("max_duration,seconds", [("2h", 7200.0), ("30s", 30.0), (90, 90.0), ("1.5h", 5400.0),
                                                  ("1d", 86400.0)])
def test_job_wire_form_carries_retry_and_max_duration(max_duration: Any, seconds: float) -> None:
    job = Job(image="alpine", commands=["true"], retry=Retry(2, "30s"), max_duration=max_duration)
    assert job.max_duration_s == seconds
    (wire,) = jobs_to_dicts([job])
    assert wire["retry"] == {"limit": 2, "backoff_s": 30.0}
    assert wire["max_duration_s"] == seconds


def test_job_wire_form_rebuilds_the_jobspec() -> None:
    """What the worker reads from jobs.json: RetryPolicy(**raw["retry"]) and max_duration_s."""
    jobs = [Job(image="alpine", commands=["a"], retry=Retry(limit=4, backoff="1m"), max_duration="5m"),
            Job(image="alpine", commands=["b"])]
    first, second = jobs_to_dicts(jobs)
    assert RetryPolicy(**first["retry"]) == RetryPolicy(limit=4, backoff_s=60.0)
    spec = JobSpec(job_id="0", image="alpine", commands=["a"], retry=RetryPolicy(**first["retry"]),
                   max_duration_s=first["max_duration_s"])
    assert from_dict(JobSpec, {"job_id": "0", "image": "alpine", "commands": ["a"], "retry": first["retry"],
                               "max_duration_s": first["max_duration_s"]}) == spec
    assert second["retry"] is None and second["max_duration_s"] is None


def test_job_retry_must_be_a_retry() -> None:
    for bad in (3, {"limit": 3}, "3", RetryPolicy(3, 10.0)):
        with pytest.raises(ValueError, match=r"^Job\(retry=\.\.\.\) must be a dstack\.Retry$"):
            Job(image="alpine", commands=["true"], retry=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["forever", "-1h", -5, "2 hours", True])
def test_job_max_duration_must_be_a_duration(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        Job(image="alpine", commands=["true"], max_duration=bad)
    assert str(info.value).startswith("Job(max_duration=...) must be a duration like '30s'")
    assert str(info.value).endswith(f"not {bad!r}")


# ----------------------------------------------------------------------------- workflows.yaml


def test_retry_and_max_duration_are_system_keys() -> None:
    assert "retry" in SYSTEM_KEYS and "max_duration" in SYSTEM_KEYS


def test_workflow_without_retry_or_max_duration(tmp_path: Path) -> None:
    project = project_of(tmp_path, second_workflow_with("epochs: 3"))
    train = project.workflows["train"]
    assert train.retry is None and train.max_duration_s is None
    assert train.data == {"epochs": 3}


@pytest.mark.parametrize("text,retry", [
    ("retry: 3", RetryPolicy(limit=3, backoff_s=10.0)),
    ("retry: 0", RetryPolicy(limit=0, backoff_s=10.0)),
    ("retry: {limit: 2, backoff: 1m}", RetryPolicy(limit=2, backoff_s=60.0)),
    ("retry: {limit: 2, backoff: 45}", RetryPolicy(limit=2, backoff_s=45.0)),
    ("retry:\n  limit: 5\n  backoff: 1.5h", RetryPolicy(limit=5, backoff_s=5400.0)),
    ("retry: {backoff: 30s}", RetryPolicy(limit=3, backoff_s=30.0)),
    ("retry: {}", RetryPolicy(limit=3, backoff_s=10.0)),
])
def test_workflow_retry(tmp_path: Path, text: str, retry: RetryPolicy) -> None:
    project = project_of(tmp_path, second_workflow_with(text))
    assert project.workflows["train"].retry == retry
    assert project.workflows["prepare"].retry is None  # only the workflow that says so


@pytest.mark.parametrize("text,seconds", [
    ("max_duration: 2h", 7200.0), ("max_duration: 30s", 30.0), ("max_duration: 1.5h", 5400.0),
    ("max_duration: 1d", 86400.0), ("max_duration: 90", 90.0), ("max_duration: '90'", 90.0),
    ("max_duration: 2.5", 2.5),
])
def test_workflow_max_duration(tmp_path: Path, text: str, seconds: float) -> None:
    project = project_of(tmp_path, second_workflow_with(text))
    assert project.workflows["train"].max_duration_s == seconds
    assert project.workflows["prepare"].max_duration_s is None


def test_retry_and_max_duration_are_not_the_providers_data(tmp_path: Path) -> None:
    project = project_of(tmp_path, second_workflow_with(
        "retry: {limit: 2, backoff: 5s}\nmax_duration: 1h\nepochs: 3\nresources: {gpu: 1}"))
    train = project.workflows["train"]
    assert train.data == {"epochs": 3, "resources": {"gpu": 1}}
    assert (train.retry, train.max_duration_s) == (RetryPolicy(2, 5.0), 3600.0)


# The schema refuses the wrong shapes: the line and field of the key.
@pytest.mark.parametrize("text,field,message", [
    ("retry: -1", "workflows[1].retry", "-1 is less than the minimum of 0"),
    ("retry: three", "workflows[1].retry", "'three' is not valid under any of the given schemas"),
    ("retry: true", "workflows[1].retry", "True is not valid under any of the given schemas"),
    ("retry: {limit: 2, tries: 3}", "workflows[1].retry",
     "Additional properties are not allowed ('tries' was unexpected); remove it or check its spelling"),
    ("retry: {limit: 1.5}", "workflows[1].retry.limit", "1.5 is not of type 'integer'"),
    ("max_duration: true", "workflows[1].max_duration", "True is not of type 'string', 'number'"),
    ("max_duration: [1h]", "workflows[1].max_duration", "['1h'] is not of type 'string', 'number'"),
])
def test_wrong_shapes_name_file_line_and_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    error = load_error(tmp_path, second_workflow_with(text))
    assert (error.file, error.line, error.field) == (WORKFLOWS_FILE, 6, field)
    assert error.message == message
    assert str(error).startswith(f"{WORKFLOWS_FILE}:6 ({field}): ")


def test_a_negative_limit_inside_the_mapping_names_the_limit(tmp_path: Path) -> None:
    error = load_error(tmp_path, second_workflow_with("retry:\n  limit: -3\n  backoff: 1s"))
    assert (error.file, error.field) == (WORKFLOWS_FILE, "workflows[1].retry.limit")
    assert error.line == 7  # the line of limit
    assert "-3 is less than the minimum of 0" in error.message


# Values of the right shape that are no duration: the workflow's line and the field.
@pytest.mark.parametrize("text,field,message", [
    ("retry: {limit: 2, backoff: soon}", "workflows[1].retry",
     "retry backoff must be a duration like '30s', '5m', '2h' or '1d', not 'soon'"),
    ("retry: {backoff: -5}", "workflows[1].retry",
     "retry backoff must be a duration like '30s', '5m', '2h' or '1d', not -5"),
    ("max_duration: forever", "workflows[1].max_duration",
     "max_duration must be a duration like '30s', '5m', '2h' or '1d', not 'forever'"),
    ("max_duration: -5", "workflows[1].max_duration",
     "max_duration must be a duration like '30s', '5m', '2h' or '1d', not -5"),
    ("max_duration: 2 hours", "workflows[1].max_duration",
     "max_duration must be a duration like '30s', '5m', '2h' or '1d', not '2 hours'"),
])
def test_bad_durations_name_file_line_and_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    error = load_error(tmp_path, second_workflow_with(text))
    assert (error.file, error.field, error.message) == (WORKFLOWS_FILE, field, message)
    assert error.line == 6  # the key's line
    assert str(error) == f"{WORKFLOWS_FILE}:{error.line} ({field}): {message}"


@pytest.mark.parametrize("text", ["retry: {limit: 2, backoff: soon}", "max_duration: forever"])
def test_bad_durations_name_the_line_of_their_key(tmp_path: Path, text: str) -> None:
    error = load_error(tmp_path, second_workflow_with(text))
    assert error.line == 6


def test_infinite_max_duration_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, second_workflow_with("max_duration: .inf"))
    assert error.field == "workflows[1].max_duration"


def test_the_first_workflow_is_named_by_index_zero(tmp_path: Path) -> None:
    error = load_error(tmp_path, "workflows:\n  - name: train\n    provider: python\n    max_duration: soon\n")
    assert (error.line, error.field) == (4, "workflows[0].max_duration")  # the line of the key


# ----------------------------------------------------------------------------- planning


def plan(tmp_path: Path, workflows: str, target: str = "train") -> dict[str, WorkflowSpec]:
    return {spec.name: spec for spec in plan_run(project_of(tmp_path, workflows), target)}


def test_planning_carries_retry_and_max_duration(tmp_path: Path) -> None:
    specs = plan(tmp_path, """\
workflows:
  - name: prepare
    provider: python
    max_duration: 10m
  - name: train
    provider: python
    depends-on: [prepare]
    retry: {limit: 2, backoff: 30s}
    max_duration: 2h
    epochs: 3
""")
    assert list(specs) == ["prepare", "train"]
    prepare, train = specs["prepare"], specs["train"]
    assert (prepare.retry, prepare.max_duration_s) == (None, 600.0)
    assert (train.retry, train.max_duration_s) == (RetryPolicy(limit=2, backoff_s=30.0), 7200.0)
    assert train.data == {"epochs": 3}  # not the provider's data
    assert prepare.data == {}


def test_planned_policy_survives_the_wire(tmp_path: Path) -> None:
    specs = plan(tmp_path, second_workflow_with("retry: 1\nmax_duration: 45s"))
    train = specs["train"]
    rebuilt = from_dict(WorkflowSpec, dataclasses.asdict(train))
    assert rebuilt.retry == RetryPolicy(limit=1, backoff_s=10.0) and rebuilt.max_duration_s == 45.0


def test_planning_without_policy(tmp_path: Path) -> None:
    specs = plan(tmp_path, second_workflow_with("epochs: 1"))
    assert specs["train"].retry is None and specs["train"].max_duration_s is None
