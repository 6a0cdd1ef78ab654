"""Artifacts as inputs, through the real services (scheduler, worker, Docker, S3 on moto, RabbitMQ), in
projects written as for early dstack: a custom provider whose third job finds the artifacts of the two
jobs it depends on, and TensorBoard over two earlier runs (`dstack run tensorboard RUN WORKFLOW:TAG`)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.services import Cluster, http_get, run_name_of, wait_for, write_project
from tests.wheels import pip_from, wheelhouse

pytestmark = pytest.mark.integration

# A provider as early dstack's documentation wrote them: jobs with `image_name`, the third one
# depending on the other two, whose artifacts (the folder `out`, written by both) it lists.
FAN_IN_PROVIDER = '''\
from dstack import Job, Provider


class FanInProvider(Provider):
    def create_jobs(self):
        first = Job(image_name="python:3.9", artifacts=["out"],
                    commands=["echo a > out/a.txt", "echo from-first > out/same.txt"])
        second = Job(image_name="python:3.9", artifacts=["out"],
                     commands=["echo b > out/b.txt", "echo from-second > out/same.txt"])
        third = Job(image_name="python:3.9", depends_on=[first, second],
                    commands=["find out -type f | sort", "echo same: $(cat out/same.txt)"])
        return [first, second, third]


if __name__ == "__main__":
    FanInProvider().start()
'''

# A TensorBoard event file of one scalar curve, written with the standard library only (the
# TFRecord framing with masked CRC-32C, and the Event protocol buffer by hand).
WRITE_EVENTS = '''\
import os
import struct
import sys
import time

_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def varint(n):
    out = b""
    while True:
        bits, n = n & 0x7F, n >> 7
        out += bytes([bits | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire, payload):
    return varint(number << 3 | wire) + payload


def text(number, data):
    return field(number, 2, varint(len(data)) + data)


def event(step, extra):
    return field(1, 1, struct.pack("<d", time.time())) + field(2, 0, varint(step)) + extra


def record(data):
    length = struct.pack("<Q", len(data))
    return length + masked(length) + data + masked(data)


def main(folder, tag, values):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"events.out.tfevents.{int(time.time())}.dstack")
    with open(path, "wb") as f:
        f.write(record(event(0, text(3, b"brain.Event:2"))))
        for step, value in enumerate(values):
            summary = text(1, text(1, tag.encode()) + field(2, 5, struct.pack("<f", value)))
            f.write(record(event(step, text(5, summary))))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3:]])
'''


def test_a_job_finds_the_artifacts_of_the_jobs_it_depends_on(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": """\
providers:
  - name: fan-in
    image: python:3.9
    commands:
      - python3 providers/fan_in.py
""",
        ".dstack/workflows.yaml": "workflows:\n  - name: gather\n    provider: fan-in\n",
        "providers/fan_in.py": FAN_IN_PROVIDER,
    })

    result = cluster.dstack("run", "gather", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    logs = cluster.job_lines(run_name_of(result), "gather.2")
    # both folders merged; of the file both wrote, the one of the job named later in depends_on
    assert logs[:4] == ["out/a.txt", "out/b.txt", "out/same.txt", "same: from-second"], logs
    job = cluster.status(run_name_of(result))["jobs"][3]
    assert job["job_id"] == "gather.2" and job["depends_on"] == ["gather.0", "gather.1"]


def test_tensorboard_compares_two_earlier_runs(fleet: Cluster, tmp_path: Path) -> None:
    fleet.start_worker(**pip_from(wheelhouse("tensorboard", ["tensorboard"])))
    tag = f"best-{uuid.uuid4().hex[:8]}"
    project = write_project(tmp_path / "project", {
        ".dstack/workflows.yaml": """\
workflows:
  - name: train
    provider: bash
    commands:
      - python3 write_events.py logs loss 1.0 0.5 0.25
    artifacts: [logs]
  - name: board
    provider: tensorboard
    runs: [no-such-run-1]
""",
        "write_events.py": WRITE_EVENTS,
        "logs/.keep": "",
    })
    first = fleet.dstack("run", "train", cwd=project)
    second = fleet.dstack("run", "train", cwd=project)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_run, second_run = run_name_of(first), run_name_of(second)
    assert fleet.dstack("tag", second_run, tag).returncode == 0

    unknown = fleet.dstack("run", "board", cwd=project)  # refused at submission: nothing runs
    assert unknown.returncode == 1
    assert "workflow 'board' names run 'no-such-run-1' in runs, but there is no run named 'no-such-run-1'" \
        in unknown.stderr

    board = fleet.dstack("run", "-d", "tensorboard", first_run, f"train:{tag}", cwd=project)  # names, not folders
    assert board.returncode == 0, board.stdout + board.stderr
    run_name = run_name_of(board)
    try:
        job = wait_for(lambda: _running_job(fleet, run_name), 240, "tensorboard to run")
        url = f"http://127.0.0.1:{job['ports'][0]}"
        expected = {f"{first_run}/logs", f"train@{tag}/logs"}
        runs = wait_for(lambda: _runs(url) if expected <= set(_runs(url) or []) else None, 240,
                        "TensorBoard to list both runs", interval=2)
        assert set(runs) == expected
        tags = json.loads(http_get(f"{url}/data/plugin/scalars/tags") or "{}")
        assert all(tags[name]["loss"] for name in expected)
    finally:
        fleet.dstack("stop", run_name)
    assert fleet.wait_status(run_name, ("stopped", "failed", "done"), timeout=60)["status"] == "stopped"


def _running_job(cluster: Cluster, run_name: str) -> Optional[dict[str, Any]]:
    run = cluster.status(run_name)
    assert run["status"] not in ("done", "failed", "stopped"), run
    job = next((j for j in run["jobs"] if j["job_id"] == "tensorboard.0"), None)
    return job if job and job["status"] == "running" and job["ports"] else None


def _runs(url: str) -> Optional[list[str]]:
    text = http_get(f"{url}/data/runs")
    return json.loads(text) if text else None

