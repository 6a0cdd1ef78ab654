"""Images on a worker, with a fake runtime: pulls (policy, progress in the log, one pull shared by the tasks that
wait for it, retries of an unreachable registry, credentials and their secrets), Docker's pull errors typed,
and the removal of unused pulled images when the disk runs low."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from dstack.errors import (
    DiskFull,
    DstackError,
    ImageNotFound,
    ImageNotInRegistry,
    PullFailed,
    RegistryUnauthorized,
    RegistryUnreachable,
)
from dstack.messages import RegistryAuth, TaskFinished, TaskPulling, TaskStarted
from dstack.settings import load_settings
from dstack.states import Status
from dstack.workers.execution import Execution, JobExecution
from dstack.workers.images import ImageJanitor, ImagePuller, PullCancelled, PullProgress, UsageRecord
from dstack.workers.runtime import pull_failure
from tests.fakes import FakeRuntime, Script
from tests.worker_harness import WorkerHarness

IMAGE = "registry.example.com/team/trainer:42"

#: A pull as Docker reports it: two layers, one already on the machine, one downloaded in three steps.
EVENTS: list[dict[str, Any]] = [
    {"status": "Pulling from team/trainer", "id": "42"},
    {"status": "Already exists", "id": "base", "progressDetail": {}},
    {"status": "Pulling fs layer", "id": "top", "progressDetail": {}},
    {"status": "Downloading", "id": "top", "progressDetail": {"current": 10_000_000, "total": 30_000_000}},
    {"status": "Downloading", "id": "top", "progressDetail": {"current": 20_000_000, "total": 30_000_000}},
    {"status": "Download complete", "id": "top", "progressDetail": {}},
    {"status": "Extracting", "id": "top", "progressDetail": {"current": 1, "total": 30_000_000}},
    {"status": "Pull complete", "id": "top", "progressDetail": {}},
    {"status": "Digest: sha256:abc"},
    {"status": f"Status: Downloaded newer image for {IMAGE}"},
]


# ----------------------------------------------------------------------------- progress


def test_progress_counts_layers_and_megabytes() -> None:
    progress = PullProgress()
    for event in EVENTS[:4]:
        progress.feed(event)
    assert progress.line(IMAGE) == f"pulling {IMAGE}: 1/2 layers, 10.0/30.0 MB"
    for event in EVENTS[4:]:
        progress.feed(event)
    assert progress.line(IMAGE) == f"pulling {IMAGE}: 2/2 layers, 30.0/30.0 MB"
    assert progress.summary(IMAGE).startswith(f"pulled {IMAGE}: 2 layers (1 already here), 30.0 MB in ")


# ----------------------------------------------------------------------------- Docker's errors, typed


@pytest.mark.parametrize(("message", "error", "text"), [
    ("manifest for r/app:nope not found: manifest unknown: manifest unknown", ImageNotInRegistry, "not found"),
    ("pull access denied for nothing, repository does not exist or may require 'docker login'",
     ImageNotInRegistry, "not found"),
    ('Head "http://127.0.0.1:5101/v2/team/app/manifests/1": no basic auth credentials', RegistryUnauthorized,
     "unauthorized"),
    ("unauthorized: authentication required", RegistryUnauthorized, "unauthorized"),
    ('Get "http://127.0.0.1:5199/v2/": dial tcp 127.0.0.1:5199: connect: connection refused', RegistryUnreachable,
     "registry unreachable"),
    ("write /var/lib/docker/tmp/x: no space left on device", DiskFull, "disk full"),
    ("something else", PullFailed, "pulling image"),
])
def test_docker_pull_errors_are_typed(message: str, error: type, text: str) -> None:
    failure = pull_failure("r/app:1", message, with_credentials=False)
    assert type(failure) is error and text in str(failure) and message in str(failure)


def test_an_image_the_registry_lacks_is_both_not_found_and_a_failed_pull() -> None:
    failure = pull_failure("r/app:1", "manifest unknown", with_credentials=False)
    assert isinstance(failure, ImageNotFound) and isinstance(failure, PullFailed)


def test_unauthorized_says_whether_credentials_were_given() -> None:
    assert "refused the credentials given" in str(pull_failure("r", "unauthorized", with_credentials=True))
    assert "got none" in str(pull_failure("r", "unauthorized", with_credentials=False))


# ----------------------------------------------------------------------------- the puller


def puller(tmp_path: Path, runtime: FakeRuntime, **options: Any) -> ImagePuller:
    return ImagePuller(runtime, UsageRecord(tmp_path / "images.json"), **options)


def test_a_pull_with_nothing_new_says_the_image_is_up_to_date() -> None:
    progress = PullProgress()
    for event in ({"status": "Pulling from team/trainer", "id": "42"}, {"status": "Digest: sha256:abc"},
                  {"status": f"Status: Image is up to date for {IMAGE}"}):
        progress.feed(event)
    assert progress.summary(IMAGE).startswith(f"{IMAGE} is up to date (checked in ")


def test_a_task_that_joins_a_pull_hears_what_is_pulled_first(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    release = threading.Event()
    runtime.on_pull_event = lambda event: release.wait(5) if event is EVENTS[4] else None
    images = puller(tmp_path, runtime, progress_interval=0)
    first = threading.Thread(target=images.pull, args=(IMAGE, None, lambda line: None, lambda: False))
    first.start()
    time.sleep(0.2)
    late: list[str] = []
    joined = threading.Thread(target=images.pull, args=(IMAGE, None, late.append, lambda: False))
    joined.start()
    time.sleep(0.1)
    release.set()
    first.join(5)
    joined.join(5)
    assert late[0] == f"pulling {IMAGE}" and late[1].startswith(f"pulling {IMAGE}: ")


def test_one_pull_serves_every_task_waiting_for_it(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    release = threading.Event()
    runtime.on_pull_event = lambda event: release.wait(5) if event is EVENTS[-1] else None
    images = puller(tmp_path, runtime, progress_interval=0)
    heard: dict[int, list[str]] = {0: [], 1: [], 2: []}
    threads = [threading.Thread(target=images.pull, args=(IMAGE, None, heard[i].append, lambda: False))
               for i in heard]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    assert images.pulling() == {IMAGE}
    release.set()
    for thread in threads:
        thread.join(5)
    assert runtime.pulls == [(IMAGE, None)]
    assert all(lines[-1].startswith(f"pulled {IMAGE}: 2 layers") for lines in heard.values())
    assert images.pulling() == set() and images.record.unused_since(time.time() + 1) == [IMAGE]


def test_progress_lines_are_throttled(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    lines: list[str] = []
    puller(tmp_path, runtime, progress_interval=60).pull(IMAGE, None, lines.append, lambda: False)
    assert lines[0] == f"pulling {IMAGE}" and lines[-1].startswith(f"pulled {IMAGE}") and len(lines) == 2


def test_an_unreachable_registry_is_retried_with_backoff_then_fails(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.pull_errors[IMAGE] = RegistryUnreachable("registry unreachable for image: connection refused")
    slept: list[float] = []
    images = puller(tmp_path, runtime, retry_timeout=0.5, sleep=slept.append)
    lines: list[str] = []
    with pytest.raises(RegistryUnreachable, match=r"connection refused \(tried for 0.5 s\)"):
        images.pull(IMAGE, None, lines.append, lambda: False)
    assert len(runtime.pulls) == 1 and slept == []  # 1 s of backoff would pass the 0.5 s bound

    slept.clear()
    runtime.pulls.clear()
    images = puller(tmp_path, runtime, retry_timeout=3600, sleep=slept.append)

    def heal(delay: float) -> None:
        slept.append(delay)
        if len(slept) == 3:
            del runtime.pull_errors[IMAGE]
            runtime.registry[IMAGE] = EVENTS
    images._sleep = heal
    images.pull(IMAGE, None, lines.append, lambda: False)
    assert slept == [1.0, 2.0, 4.0] and len(runtime.pulls) == 4
    assert any(line.startswith("registry unreachable, trying again in 2 s") for line in lines)


def test_other_failures_are_not_retried(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.pull_errors[IMAGE] = RegistryUnauthorized("unauthorized")
    with pytest.raises(RegistryUnauthorized):
        puller(tmp_path, runtime).pull(IMAGE, None, lambda line: None, lambda: False)
    assert len(runtime.pulls) == 1


def test_a_stopped_task_leaves_the_pull_to_the_others(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    release = threading.Event()
    runtime.on_pull_event = lambda event: release.wait(5) if event is EVENTS[-1] else None
    images = puller(tmp_path, runtime)
    other = threading.Thread(target=images.pull, args=(IMAGE, None, lambda line: None, lambda: False))
    other.start()
    time.sleep(0.1)
    with pytest.raises(PullCancelled):
        images.pull(IMAGE, None, lambda line: None, lambda: True, wait_step=0.01)
    assert images.pulling() == {IMAGE}  # the other task still waits for it
    release.set()
    other.join(5)
    assert runtime.pulls == [(IMAGE, None)] and images.record.unused_since(time.time() + 1) == [IMAGE]


def test_a_pull_no_task_waits_for_stops(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    release = threading.Event()
    seen: list[dict[str, Any]] = []
    runtime.on_pull_event = lambda event: (seen.append(event), release.wait(5) if event is EVENTS[3] else None)
    images = puller(tmp_path, runtime)
    with pytest.raises(PullCancelled):
        images.pull(IMAGE, None, lambda line: None, lambda: True, wait_step=0.01)
    assert images.pulling() == set()  # a later task starts a pull of its own
    release.set()
    time.sleep(0.2)
    assert len(seen) < len(EVENTS) and images.record.unused_since(time.time() + 1) == []  # stopped, not pulled
    images.pull(IMAGE, None, lambda line: None, lambda: False)
    assert len(runtime.pulls) == 2


def test_different_credentials_pull_apart(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.registry[IMAGE] = EVENTS
    images = puller(tmp_path, runtime)
    images.pull(IMAGE, ("a", "1"), lambda line: None, lambda: False)
    images.pull(IMAGE, ("b", "2"), lambda line: None, lambda: False)
    assert runtime.pulls == [(IMAGE, ("a", "1")), (IMAGE, ("b", "2"))]


# ----------------------------------------------------------------------------- a task's image


class Harness(WorkerHarness):
    def run(self, task: Any) -> TaskFinished:
        execution = Execution.for_task(task, self.context)
        execution.save()
        execution.start()
        execution.follow()
        finished = self.events[-1]
        assert isinstance(finished, TaskFinished)
        return finished


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.runtime.registry[IMAGE] = EVENTS
    return harness


def test_a_missing_image_is_pulled_the_task_pulling_and_the_progress_in_its_log(h: Harness) -> None:
    h.runtime.missing_images.add(IMAGE)
    finished = h.run(h.job(image=IMAGE, script=Script(output=[b"trained\n"])))
    assert finished.status is Status.DONE
    assert [type(e) for e in h.events] == [TaskPulling, TaskStarted, TaskFinished]
    assert h.events[0].image == IMAGE
    lines = h.log_lines()
    assert lines[0] == f"dstack: pulling {IMAGE}" and lines[-2].startswith(f"dstack: pulled {IMAGE}: 2 layers")
    assert lines[-1] == "trained"


def test_a_present_image_is_not_pulled_nor_asked_about(h: Harness) -> None:
    assert h.run(h.job(image=IMAGE)).status is Status.DONE
    assert h.runtime.pulls == [] and [type(e) for e in h.events] == [TaskStarted, TaskFinished]


def test_always_pulls_a_present_image_once(h: Harness) -> None:
    assert h.run(h.job(image=IMAGE, pull_policy="always")).status is Status.DONE
    assert h.runtime.pulls == [(IMAGE, None)]


def test_the_workers_policy_applies_to_jobs_that_do_not_say(h: Harness) -> None:
    h.context.pull_policy = "always"
    h.run(h.job(image=IMAGE))
    h.run(h.job(image=IMAGE, pull_policy="if-not-present", run="other-run-2"))
    assert h.runtime.pulls == [(IMAGE, None)]


def test_never_fails_a_missing_image_without_pulling(h: Harness) -> None:
    h.runtime.missing_images.add(IMAGE)
    execution = Execution.for_task(h.job(image=IMAGE, pull_policy="never"), h.context)
    with pytest.raises(ImageNotFound, match="pull policy is never"):
        execution.start()
    assert h.runtime.pulls == []


def test_a_failed_pull_fails_the_start_with_its_reason(h: Harness) -> None:
    h.runtime.missing_images.add(IMAGE)
    h.runtime.pull_errors[IMAGE] = pull_failure(IMAGE, "unauthorized: authentication required", False)
    execution = Execution.for_task(h.job(image=IMAGE), h.context)
    with pytest.raises(RegistryUnauthorized, match="unauthorized"):
        execution.start()
    assert h.runtime.started == {}


def test_registry_auth_takes_its_secrets_which_stay_out_of_the_job(h: Harness) -> None:
    h.runtime.missing_images.add(IMAGE)
    task = h.job(image=IMAGE, registry_auth=RegistryAuth(username="ci", password="${{ secrets.REGISTRY_TOKEN }}"),
                 script=Script(output=[b"token is tok-123\n"]))
    task.secrets = {"REGISTRY_TOKEN": "tok-123", "HF_TOKEN": "hf-1"}
    execution = Execution.for_task(task, h.context)
    execution.save()
    execution.start()
    execution.follow()
    assert h.runtime.pulls == [(IMAGE, ("ci", "tok-123"))]
    env = next(iter(h.runtime.started.values())).spec.env
    assert "REGISTRY_TOKEN" not in env and env["HF_TOKEN"] == "hf-1"
    assert "tok-123" not in "\n".join(h.log_lines()) and "token is ***" in h.log_lines()


def test_a_literal_registry_password_is_hidden_from_the_log(h: Harness) -> None:
    task = h.job(image=IMAGE, registry_auth=RegistryAuth(username="ci", password="pa55word"),
                 script=Script(output=[b"echo pa55word\n"]))
    h.run(task)
    assert h.log_lines() == ["echo ***"]


def test_registry_auth_naming_a_missing_secret_fails_with_what_to_do(h: Harness) -> None:
    h.runtime.missing_images.add(IMAGE)
    task = h.job(image=IMAGE, registry_auth=RegistryAuth(username="ci", password="${{ secrets.NOPE }}"))
    execution = Execution.for_task(task, h.context)
    with pytest.raises(DstackError, match="secrets set NOPE"):
        execution.start()


def test_a_stop_while_pulling_ends_the_task_stopped(h: Harness) -> None:
    from dstack.workers.service import Worker  # noqa: F401 - the worker turns PullCancelled into a stopped end

    h.runtime.missing_images.add(IMAGE)
    hold = threading.Event()
    h.runtime.on_pull_event = lambda event: hold.wait(5)
    execution = Execution.for_task(h.job(image=IMAGE), h.context)
    assert isinstance(execution, JobExecution)
    execution.stop_requested = True
    with pytest.raises(PullCancelled):
        execution.start()
    hold.set()
    execution.abandon("stopped by request while its image was pulled", status=Status.STOPPED)
    assert h.events[-1].status is Status.STOPPED
    assert h.log_lines()[-1] == "dstack: train.0 stopped: stopped by request while its image was pulled"


# ----------------------------------------------------------------------------- removal of unused images


class Disk:
    """A disk whose free space grows by ``per_image`` with each image removed."""

    def __init__(self, runtime: FakeRuntime, free: int, per_image: int) -> None:
        self.runtime, self.free, self.per_image = runtime, free, per_image
        runtime.disk_free = self.read  # type: ignore[method-assign]

    def read(self) -> Optional[int]:
        return self.free + self.per_image * len(self.runtime.removed_images)


def janitor(tmp_path: Path, runtime: FakeRuntime, needed: set[str], min_free_mib: int = 100,
            max_age: float = 3600) -> ImageJanitor:
    images = puller(tmp_path, runtime)
    now = time.time()
    for image, last_used in (("old-a", now - 7200), ("old-b", now - 5000), ("busy", now - 9000),
                             ("recent", now - 60)):
        images.record.pulled(image, last_used)
    return ImageJanitor(runtime, images, min_free_mib, max_age, needed=lambda: needed)


def test_unused_pulled_images_go_when_the_disk_runs_low_longest_unused_first(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    Disk(runtime, free=10 * 2**20, per_image=60 * 2**20)
    removed = janitor(tmp_path, runtime, needed={"busy"}).check()
    assert removed == ["old-a", "old-b"]  # "busy" is needed, "recent" was used within the max age


def test_removal_stops_once_enough_is_free(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    Disk(runtime, free=10 * 2**20, per_image=200 * 2**20)
    assert janitor(tmp_path, runtime, needed=set()).check() == ["busy"]  # the longest unused


def test_nothing_goes_while_the_disk_has_room_or_cannot_be_seen(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    Disk(runtime, free=500 * 2**20, per_image=0)
    assert janitor(tmp_path, runtime, needed=set()).check() == []
    runtime = FakeRuntime()  # disk_free() is None
    assert janitor(tmp_path, runtime, needed=set()).check() == []


def test_images_the_worker_did_not_pull_are_never_removed(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    Disk(runtime, free=0, per_image=0)
    images = puller(tmp_path, runtime)
    images.record.used("built-by-hand:1", time.time() - 10**6)  # a use of an image it did not pull: not recorded
    assert ImageJanitor(runtime, images, 100, 1, needed=lambda: set()).check() == []


def test_the_record_survives_a_restart(tmp_path: Path) -> None:
    record = UsageRecord(tmp_path / "w" / "images.json")
    record.pulled("a", 100.0)
    record.used("a", 200.0)
    assert UsageRecord(tmp_path / "w" / "images.json").unused_since(201.0) == ["a"]
    assert UsageRecord(tmp_path / "w" / "images.json").unused_since(200.0) == []


# ----------------------------------------------------------------------------- settings


def test_settings_of_pulls_and_images() -> None:
    settings = load_settings({"DSTACK_PULL_POLICY": "always", "DSTACK_IMAGE_MAX_AGE": "2d",
                              "DSTACK_IMAGE_MIN_FREE": "50GB", "DSTACK_PULL_RETRY_TIMEOUT": "30s",
                              "DSTACK_REGISTRY_AUTH": "{registry.example.com: {username: ci, password: s3cret}}"})
    assert (settings.pull_policy, settings.image_max_age, settings.image_min_free_mib, settings.pull_retry_timeout) \
        == ("always", 2 * 86400, 50 * 1024, 30)
    assert settings.registry_auth == {"registry.example.com": ("ci", "s3cret")}


@pytest.mark.parametrize(("variable", "value", "text"), [
    ("DSTACK_PULL_POLICY", "sometimes", "if-not-present, always, never"),
    ("DSTACK_REGISTRY_AUTH", "{r: {username: ci}}", "expected {username: ..., password: ...}"),
    ("DSTACK_IMAGE_MIN_FREE", "lots", "a size like"),
    ("DSTACK_IMAGE_MAX_AGE", "forever", "positive number of seconds"),
])
def test_wrong_settings_name_their_variable(variable: str, value: str, text: str) -> None:
    with pytest.raises(DstackError, match=variable) as info:
        load_settings({variable: value})
    assert text in str(info.value)
