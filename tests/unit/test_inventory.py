"""workers.inventory: reading nvidia-smi, detecting CPUs and memory, and what a worker's configuration declares."""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

from dstack.errors import ConfigError
from dstack.messages import GpuInfo, Inventory
from dstack.settings import load_settings, yaml_mapping
from dstack.workers import inventory
from dstack.workers.inventory import (
    NVIDIA_SMI,
    detect_cpus,
    detect_gpus,
    detect_memory_mib,
    parse_nvidia_smi,
    worker_inventory,
)

DATA = Path(__file__).parent / "data" / "nvidia-smi"
H100 = GpuInfo("0", "NVIDIA H100 80GB HBM3", 81559)
A5000 = [GpuInfo("0", "NVIDIA RTX A5000", 24564), GpuInfo("1", "NVIDIA RTX A5000", 24564)]
#: What nvidia-smi prints (on stdout, exit 9) on a host whose driver is installed but not loaded.
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n\n")


def smi_output(name: str) -> str:
    return (DATA / name).read_text()


# ----------------------------------------------------------------------------- parse_nvidia_smi


@pytest.mark.parametrize(("fixture", "expected"), [
    ("h100.csv", [H100]),
    ("h100-with-units.csv", [H100]),
    ("t4.csv", [GpuInfo("0", "Tesla T4", 15360)]),
    ("a100-sxm4-80gb.csv", [GpuInfo("0", "NVIDIA A100-SXM4-80GB", 81920)]),
    ("rtx-a5000-2x.csv", A5000),
    ("rtx-5090-3090ti-with-units.csv", [GpuInfo("0", "NVIDIA GeForce RTX 5090", 32607),
                                        GpuInfo("1", "NVIDIA GeForce RTX 3090 Ti", 24564)]),
])
def test_parse_nvidia_smi_reads_real_output(fixture: str, expected: list[GpuInfo]) -> None:
    assert parse_nvidia_smi(smi_output(fixture)) == expected


def test_parse_nvidia_smi_tolerates_blank_lines_spacing_and_crlf() -> None:
    text = smi_output("rtx-a5000-2x.csv").replace(", ", ",").replace("\n", "\r\n") + "\n\n  \n"
    assert parse_nvidia_smi(text) == A5000
    assert parse_nvidia_smi("") == []


def test_parse_nvidia_smi_refuses_memory_it_cannot_read() -> None:
    with pytest.raises(ValueError, match=r"'0, NVIDIA GB10, \[N/A\]'"):
        parse_nvidia_smi(smi_output("gb10-memory-na.csv"))


@pytest.mark.parametrize("line", [
    "index, name, memory.total [MiB]",  # the header, when run without noheader
    "0, NVIDIA H100 80GB HBM3",
    "0, NVIDIA H100 80GB HBM3, 80 GiB",
])
def test_parse_nvidia_smi_quotes_a_line_it_cannot_read(line: str) -> None:
    with pytest.raises(ValueError, match="cannot read nvidia-smi line") as error:
        parse_nvidia_smi(smi_output("h100.csv") + line + "\n")
    assert repr(line) in str(error.value)


# ----------------------------------------------------------------------------- detect_gpus


class FakeRun:
    """Stands for subprocess.run: records the call, then raises or answers."""

    def __init__(self, returncode: int = 0, stdout: str = "", stderr: str = "",
                 raises: Optional[Exception] = None) -> None:
        self.returncode, self.stdout, self.stderr, self.raises = returncode, stdout, stderr, raises
        self.calls: list[Any] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        self.calls.append((args, kwargs))
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(args, self.returncode, self.stdout, self.stderr)


def test_detect_gpus_runs_the_query_with_a_timeout() -> None:
    run = FakeRun(stdout=smi_output("rtx-a5000-2x.csv"))
    assert detect_gpus(run) == A5000
    (args, kwargs), = run.calls
    assert args == NVIDIA_SMI
    assert kwargs["timeout"] == 30
    assert kwargs["text"]
    assert kwargs["capture_output"]


def test_detect_gpus_without_nvidia_smi_is_quietly_empty(caplog: pytest.LogCaptureFixture) -> None:
    assert detect_gpus(FakeRun(raises=FileNotFoundError(2, "No such file or directory", "nvidia-smi"))) == []
    assert caplog.records == []


def test_detect_gpus_with_a_failing_driver_warns_with_its_message(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dstack.workers.inventory"):
        assert detect_gpus(FakeRun(returncode=9, stdout=NO_DRIVER)) == []
    assert "exit 9" in caplog.text
    assert "couldn't communicate with the NVIDIA driver" in caplog.text


@pytest.mark.parametrize("run", [
    FakeRun(raises=subprocess.TimeoutExpired(NVIDIA_SMI, 30)),
    FakeRun(raises=PermissionError(13, "Permission denied", "nvidia-smi")),
    FakeRun(stdout=smi_output("gb10-memory-na.csv")),
])
def test_detect_gpus_that_cannot_be_read_warns(run: FakeRun, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dstack.workers.inventory"):
        assert detect_gpus(run) == []
    assert "no GPUs" in caplog.text


# ----------------------------------------------------------------------------- CPUs and memory


def test_detect_cpus_and_memory_on_this_machine() -> None:
    meminfo = Path("/proc/meminfo").read_text()
    total_mib = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1]) // 1024
    assert 0 < detect_cpus() <= len(os.sched_getaffinity(0))
    assert 0 < detect_memory_mib() <= total_mib


@pytest.fixture
def fake_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty /sys/fs/cgroup, /proc/self/cgroup and a /proc/meminfo of 16 GiB."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       16777216 kB\nMemFree:         1000 kB\n")
    monkeypatch.setattr(inventory, "_CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(inventory, "_PROC_CGROUP", tmp_path / "proc" / "cgroup")
    monkeypatch.setattr(inventory, "_MEMINFO", tmp_path / "proc" / "meminfo")
    monkeypatch.setattr(inventory.os, "sched_getaffinity", lambda pid: set(range(8)))
    return tmp_path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits_in_the_group_or_an_ancestor(fake_cgroups: Path) -> None:
    write(fake_cgroups / "proc" / "cgroup", "0::/system.slice/dstack-worker.service\n")
    group = fake_cgroups / "cgroup" / "system.slice" / "dstack-worker.service"
    write(group / "cpu.max", "max 100000\n")
    write(group / "memory.max", "max\n")
    assert (detect_cpus(), detect_memory_mib()) == (8.0, 16384)
    write(group / "cpu.max", "250000 100000\n")
    write(group.parent / "memory.max", "4294967296\n")
    assert (detect_cpus(), detect_memory_mib()) == (2.5, 4096)


def test_cgroup_v1_limits(fake_cgroups: Path) -> None:
    write(fake_cgroups / "proc" / "cgroup",
          "4:memory:/docker/0123abcd\n3:cpu,cpuacct:/docker/0123abcd\n1:name=systemd:/docker/0123abcd\n0::/\n")
    # Docker shows the container's own groups at the mount points, not under /docker/<id>.
    write(fake_cgroups / "cgroup" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(fake_cgroups / "cgroup" / "cpu" / "cpu.cfs_period_us", "100000\n")
    write(fake_cgroups / "cgroup" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert (detect_cpus(), detect_memory_mib()) == (8.0, 16384)
    write(fake_cgroups / "cgroup" / "cpu" / "cpu.cfs_quota_us", "50000\n")
    write(fake_cgroups / "cgroup" / "memory" / "memory.limit_in_bytes", "536870912\n")
    assert (detect_cpus(), detect_memory_mib()) == (0.5, 512)


def test_no_cgroup_information_means_no_limit(fake_cgroups: Path) -> None:
    assert (detect_cpus(), detect_memory_mib()) == (8.0, 16384)


# ----------------------------------------------------------------------------- worker_inventory


def offer(declared: Any = None, gpus: list[GpuInfo] = A5000) -> tuple:
    return worker_inventory(declared, gpus=gpus, cpus=16.0, memory_mib=64000)


def config_error(declared: Any, gpus: list[GpuInfo] = A5000, source: str = "DSTACK_WORKER_RESOURCES") -> ConfigError:
    with pytest.raises(ConfigError) as error:
        worker_inventory(declared, source=source, gpus=gpus, cpus=16.0, memory_mib=64000)
    return error.value


def test_nothing_declared_offers_what_is_detected() -> None:
    assert offer() == (Inventory(cpu=16.0, memory_mib=64000, gpus=A5000), True)
    assert offer({}, gpus=[]) == (Inventory(cpu=16.0, memory_mib=64000, gpus=[]), False)


def test_worker_inventory_detects_what_it_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "detect_gpus", lambda: [H100])
    monkeypatch.setattr(inventory, "detect_cpus", lambda: 3.0)
    monkeypatch.setattr(inventory, "detect_memory_mib", lambda: 2048)
    assert worker_inventory() == (Inventory(cpu=3.0, memory_mib=2048, gpus=[H100]), True)


def test_cpu_and_memory_replace_what_is_detected() -> None:
    offered, _ = offer({"cpu": 2, "memory": "4GB"})
    assert (offered.cpu, offered.memory_mib) == (2.0, 4096)
    offered, _ = offer({"cpu": 0.5, "memory": 512})
    assert (offered.cpu, offered.memory_mib) == (0.5, 512)


def test_gpu_count_restricts_to_the_first_detected() -> None:
    assert offer({"gpu": 1}) == (Inventory(cpu=16.0, memory_mib=64000, gpus=A5000[:1]), True)
    assert offer({"gpu": 2})[0].gpus == A5000


def test_gpu_zero_offers_none_without_asking_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "detect_gpus", lambda: pytest.fail("nvidia-smi was run"))
    assert worker_inventory({"gpu": 0}, cpus=1.0, memory_mib=1) == (Inventory(cpu=1.0, memory_mib=1), False)


def test_gpu_count_above_detected_says_how_to_declare() -> None:
    error = config_error({"gpu": 3})
    assert error.field == "DSTACK_WORKER_RESOURCES.gpu"
    assert "the 2 nvidia-smi found" in error.message
    assert "gpu: {count: 3, name: ..., memory: ...}" in error.message
    assert "the 0 nvidia-smi found" in config_error({"gpu": 1}, gpus=[]).message


def test_declared_gpus_on_detected_devices_take_their_ids() -> None:
    offered, devices = offer({"gpu": {"count": 1, "name": "A5000", "memory": "24GB"}},
                             gpus=[A5000[1], A5000[0]])
    assert (offered.gpus, devices) == ([GpuInfo("1", "A5000", 24576)], True)


def test_declared_gpus_the_driver_does_not_report_are_declared_only() -> None:
    offered, devices = offer({"gpu": {"count": 3, "name": "A100", "memory": "40GB"}})
    assert offered.gpus == [GpuInfo(str(i), "A100", 40960) for i in range(3)]
    assert devices is False
    offered, devices = offer({"gpu": {"name": "T4", "memory": 15360}}, gpus=[])
    assert (offered.gpus, devices) == ([GpuInfo("0", "T4", 15360)], False)


@pytest.mark.parametrize(("declared", "field", "says"), [
    ({"cpus": 2}, "cpus", "unknown key 'cpus'"),
    ({"cpu": 0}, "cpu", "cpu must be a number of CPUs like 4 or 0.5, not 0"),
    ({"cpu": -1}, "cpu", "not -1"),
    ({"cpu": "2"}, "cpu", "not '2'"),
    ({"cpu": True}, "cpu", "not True"),
    ({"memory": "lots"}, "memory", "memory must be a size like '16GB' or '512MB', not 'lots'"),
    ({"memory": 0}, "memory", "more than 0"),
    ({"memory": None}, "memory", "not None"),
    ({"gpu": -1}, "gpu", "gpu must be a number of GPUs (gpu: 2) or gpu: {count"),
    ({"gpu": "A100"}, "gpu", "not 'A100'"),
    ({"gpu": True}, "gpu", "not True"),
    ({"gpu": {"count": 2, "name": "A100", "memory": "40GB", "vendor": "nvidia"}}, "gpu.vendor", "unknown key"),
    ({"gpu": {"count": 0, "name": "A100", "memory": "40GB"}}, "gpu.count", "whole number >= 1, not 0"),
    ({"gpu": {"count": 1.5, "name": "A100", "memory": "40GB"}}, "gpu.count", "not 1.5"),
    ({"gpu": {"count": 2, "memory": "40GB"}}, "gpu.name", "gpu.name must be the GPU model"),
    ({"gpu": {"count": 2, "name": " ", "memory": "40GB"}}, "gpu.name", "not ' '"),
    ({"gpu": {"count": 2, "name": "A100"}}, "gpu.memory", "gpu.memory must be a size like '16GB'"),
    ({"gpu": {"count": 2, "name": "A100", "memory": "big"}}, "gpu.memory", "not 'big'"),
])
def test_wrong_declarations_name_the_field(declared: dict, field: str, says: str) -> None:
    error = config_error(declared, source="worker.yaml")
    assert error.field == f"worker.yaml.{field}"
    assert says in error.message


# ----------------------------------------------------------------------------- from the environment


def test_declared_text_feeds_worker_inventory() -> None:
    text = "{cpu: 2, memory: 4GB, gpu: {count: 2, name: A100, memory: 40GB}}"
    declared = load_settings({"DSTACK_WORKER_RESOURCES": text}).worker_resources
    assert declared == {"cpu": 2, "memory": "4GB", "gpu": {"count": 2, "name": "A100", "memory": "40GB"}}
    offered, devices = worker_inventory(declared, gpus=[], cpus=8.0, memory_mib=1)
    assert offered == Inventory(cpu=2.0, memory_mib=4096, gpus=[GpuInfo(str(i), "A100", 40960) for i in range(2)])
    assert devices is False
    assert yaml_mapping('{"cpu": 1.5, "gpu": 0}', "x") == {"cpu": 1.5, "gpu": 0}
    assert yaml_mapping("  \n", "x") == {}


@pytest.mark.parametrize(("text", "says"), [
    ("{cpu: 2", "not valid YAML"),
    ("[1, 2]", "expected a mapping"),
    ("4GB", "not '4GB'"),
])
def test_declared_text_that_is_not_a_mapping_is_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"DSTACK_WORKER_RESOURCES": text})
    assert error.value.field == "DSTACK_WORKER_RESOURCES"
    assert says in error.value.message
    assert str(error.value).startswith("DSTACK_WORKER_RESOURCES: ")
