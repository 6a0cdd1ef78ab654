"""Built-in providers run as a process of the worker (``workers/provider_process.py``): the real SDK bundle
and the real provider code, no container; a clean environment; the provider chosen by its name only."""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.messages import ProviderSpec, ProviderTask
from dstack.states import Status
from dstack.workers.provider_process import runs_as_process
from dstack.workers.sdk_bundle import build_sdk_bundle
from tests.worker_harness import RUN, WorkerHarness

#: What the worker's own environment holds and a provider must never see.
SECRET = {"AWS_SECRET_ACCESS_KEY": "worker-only-secret", "DSTACK_BROKER_URL": "amqp://worker:secret@127.0.0.1/"}


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerHarness]:
    for name, value in SECRET.items():
        monkeypatch.setenv(name, value)
    h = WorkerHarness(tmp_path)
    build_sdk_bundle(h.context.sdk_bundle)
    yield h
    assert h.context.provider_host is not None
    h.context.provider_host.close()


def builtin_task(h: WorkerHarness, name: str, data: dict, commands: list[str] = ()) -> ProviderTask:
    provider = ProviderSpec(name=name, image="python:3.11", builtin=True, commands=list(commands) or ["unused"])
    return ProviderTask(run_name=RUN, task_id="train.provider", attempt=1, workflow="train", data=data,
                        snapshot_id=h.snapshot_id, provider=provider)


def run_to_end(h: WorkerHarness, task: ProviderTask) -> None:
    h.started(task).follow()


def test_a_builtin_provider_creates_its_jobs_without_a_container(harness: WorkerHarness) -> None:
    run_to_end(harness, builtin_task(harness, "docker", {"image": "python:3.9", "commands": ["echo hi"]}))
    finished = harness.finished()
    assert finished.status is Status.DONE, finished.reason
    assert [(j.job_id, j.image, j.commands) for j in finished.jobs] == [("0", "python:3.9", ["echo hi"])]
    assert harness.runtime.started == {}  # the fake runtime started no container
    assert "dstack: train: created 1 job(s)" in harness.log_lines("train.provider")


def test_a_builtin_providers_refusal_is_the_tasks_reason(harness: WorkerHarness) -> None:
    run_to_end(harness, builtin_task(harness, "docker", {"commands": ["echo hi"]}))  # no image
    finished = harness.finished()
    assert finished.status is Status.FAILED
    assert "image" in (finished.reason or "")


def test_the_process_sees_none_of_the_workers_environment(harness: WorkerHarness, tmp_path: Path) -> None:
    # the worker's copy of the bash provider, replaced by one that writes out what it sees
    seen_file = tmp_path / "seen.json"
    main = harness.context.sdk_bundle / "site" / "dstack" / "providers" / "bash" / "main.py"
    main.write_text("import json, os, sys\n"
                    "if __name__ == '__main__':\n"
                    "    seen = {'env': dict(os.environ), 'cwd': os.getcwd(), 'path': sys.path}\n"
                    f"    json.dump(seen, open({str(seen_file)!r}, 'w'))\n"
                    "    import dstack\n"
                    "    print('sdk from', dstack.__file__)\n")
    run_to_end(harness, builtin_task(harness, "bash", {"commands": ["true"]}))
    seen = json.loads(seen_file.read_text())
    assert not set(SECRET) & set(seen["env"])
    assert seen["env"]["RUN_NAME"] == RUN and seen["env"]["WORKFLOW_NAME"] == "train"
    assert seen["env"]["DSTACK_PROJECT_DIR"] == seen["cwd"]  # the task's project folder
    assert not any("site-packages" in entry for entry in seen["path"])  # the worker's installed packages: out of reach
    sdk_line = next(line for line in harness.log_lines("train.provider") if line.startswith("sdk from"))
    assert str(harness.context.sdk_bundle) in sdk_line  # the worker's bundle, as mounted into containers


def test_the_provider_is_chosen_by_name_and_its_commands_are_never_run(harness: WorkerHarness,
                                                                        tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    task = builtin_task(harness, "docker", {"image": "python:3.9"}, commands=[f"touch {marker}"])
    run_to_end(harness, task)
    assert harness.finished().status is Status.DONE
    assert not marker.exists()


def test_only_the_workers_own_builtin_providers_run_as_processes() -> None:
    assert runs_as_process("docker", builtin=True, from_repository=False)
    assert not runs_as_process("docker", builtin=False, from_repository=False)  # the project's own "docker"
    assert not runs_as_process("docker", builtin=True, from_repository=True)
    assert not runs_as_process("mine", builtin=True, from_repository=False)  # no such built-in one


def test_a_stopped_provider_process_ends_stopped(harness: WorkerHarness) -> None:
    main = harness.context.sdk_bundle / "site" / "dstack" / "providers" / "bash" / "main.py"
    main.write_text("import time\nif __name__ == '__main__':\n    print('waiting', flush=True)\n    time.sleep(60)\n")
    execution = harness.started(builtin_task(harness, "bash", {"commands": ["true"]}))
    execution.stop(abort=False)
    execution.follow()
    assert harness.finished().status is Status.STOPPED


def replace_provider(h: WorkerHarness, name: str, body: str) -> None:
    """The worker's copy of built-in provider ``name`` becomes ``body`` (run as ``__main__`` only)."""
    main = h.context.sdk_bundle / "site" / "dstack" / "providers" / name / "main.py"
    main.write_text("import os, sys, time\nif __name__ == '__main__':\n"
                    + "".join(f"    {line}\n" for line in body.splitlines()))


def test_providers_run_at_once_and_a_large_output_reaches_the_log_whole(harness: WorkerHarness) -> None:
    replace_provider(harness, "bash", "for i in range(20000): print('line', i)\ntime.sleep(0.3)\nsys.exit(4)")
    ends: list[int] = []

    def one(run: str) -> None:
        task = builtin_task(harness, "bash", {"commands": ["true"]})
        task.run_name = run
        run_to_end(harness, task)
        ends.append(next(e.exit_code for e in harness.events if getattr(e, "run_name", "") == run
                         and type(e).__name__ == "TaskFinished"))

    threads = [threading.Thread(target=one, args=(f"run-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert ends == [4, 4, 4]
    lines = harness.log_lines("train.provider", run="run-0")
    assert lines[:2] == ["line 0", "line 1"] and "line 19999" in lines  # ~200 KB through the FIFO


def test_a_provider_host_that_died_is_started_again(harness: WorkerHarness) -> None:
    host = harness.context.provider_host
    assert host is not None
    replace_provider(harness, "bash", "print('started', flush=True)\ntime.sleep(60)")
    execution = harness.started(builtin_task(harness, "bash", {"commands": ["true"]}))
    os.kill(host._process.pid, 9)  # type: ignore[union-attr]  # the host, not the provider
    execution.follow()
    assert harness.finished().status is Status.FAILED  # what it ran can no longer be followed
    run_to_end(harness, builtin_task(harness, "docker", {"image": "python:3.9"}))
    assert harness.finished().status is Status.DONE
