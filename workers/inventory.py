"""What a worker has for tasks: its CPUs, memory and GPUs, detected and as its configuration declares them."""
from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from dstack.errors import ConfigError
from dstack.messages import GpuInfo, Inventory
from dstack.sdk.resources import parse_size_mib

log = logging.getLogger(__name__)

#: The command that lists GPUs (stable CSV output, one line per GPU)
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
NVIDIA_SMI_TIMEOUT_S = 30

# "0, NVIDIA H100 80GB HBM3, 81559", or "... 81559 MiB" when run without nounits
_GPU_LINE = re.compile(r"^\s*(\d+)\s*,\s*(.+?)\s*,\s*(\d+)(?:\s*MiB)?\s*$")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")
_MEMINFO = Path("/proc/meminfo")
_GPU_FORMS = "a number of GPUs (gpu: 2) or gpu: {count: 2, name: A100, memory: 40GB}"


def parse_nvidia_smi(output: str) -> list[GpuInfo]:
    """GPUs in the output of NVIDIA_SMI (index, name, memory.total in MiB). Raises ValueError on a line it
    cannot read, quoting it."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        match = _GPU_LINE.match(line)
        if not match:
            raise ValueError(f"cannot read nvidia-smi line {line!r}: expected 'index, name, memory.total in MiB'")
        index, name, memory = match.groups()
        gpus.append(GpuInfo(id=index, name=name, memory_mib=int(memory)))
    return gpus


def detect_gpus(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[GpuInfo]:
    """GPUs the NVIDIA driver reports; [] when nvidia-smi is not installed. A driver that is installed but fails
    (non-zero exit, a timeout, output it cannot read) logs a warning with its message and returns []."""
    try:
        result = run(NVIDIA_SMI, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return []
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("nvidia-smi could not run (%s); this worker offers no GPUs", e)
        return []
    if result.returncode != 0:
        message = " ".join(part.strip() for part in (result.stdout, result.stderr) if part and part.strip())
        log.warning("nvidia-smi failed (exit %d): %s; this worker offers no GPUs", result.returncode, message)
        return []
    try:
        return parse_nvidia_smi(result.stdout)
    except ValueError as e:
        log.warning("%s; this worker offers no GPUs", e)
        return []


def detect_cpus() -> float:
    """CPUs this process may use: os.sched_getaffinity count, lowered by a cgroup v2 `cpu.max` quota (or v1 cfs
    quota/period) when set."""
    limits = [float(len(os.sched_getaffinity(0)))]
    for folder in _cgroup_folders("cpu"):
        quota_period = _read(folder / "cpu.max").split()
        if len(quota_period) == 2 and quota_period[0] != "max":
            limits.append(int(quota_period[0]) / int(quota_period[1]))
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            limits.append(int(quota) / int(period))
    return min(limits)


def detect_memory_mib() -> int:
    """MemTotal from /proc/meminfo, lowered by a cgroup v2 `memory.max` (or v1 memory.limit_in_bytes) when set
    and smaller."""
    total = re.search(r"^MemTotal:\s+(\d+) kB", _read(_MEMINFO), re.MULTILINE)
    if not total:
        raise RuntimeError(f"{_MEMINFO} has no MemTotal line")
    limits = [int(total.group(1)) * 1024]
    for folder in _cgroup_folders("memory"):
        limits += [int(value) for value in (_read(folder / "memory.max"), _read(folder / "memory.limit_in_bytes"))
                   if value.isdigit()]
    return min(limits) // (1024 * 1024)


def worker_inventory(declared: Optional[Mapping[str, Any]] = None, *, source: str = "DSTACK_WORKER_RESOURCES",
                     gpus: Optional[list[GpuInfo]] = None, cpus: Optional[float] = None,
                     memory_mib: Optional[int] = None) -> tuple[Inventory, bool]:
    """What the worker offers, and whether its GPUs are real devices (to pass to containers through the NVIDIA
    runtime; False when it offers none).

    ``gpus``/``cpus``/``memory_mib`` default to detection. ``declared`` (keys cpu, memory, gpu) declares or
    restricts: ``cpu: 4`` and ``memory: 16GB`` replace what is detected; ``gpu: N`` offers the first N detected
    GPUs; ``gpu: {count, name, memory}`` declares GPUs, which are the first ``count`` detected devices when the
    driver reports that many, else declared only (ids "0".."count-1", flag False).

    Raises:
        ConfigError: a key or value of ``declared`` is wrong; its field is ``{source}.{key}``.
    """
    declared = declared or {}
    for key in declared:
        if key not in ("cpu", "memory", "gpu"):
            raise ConfigError(f"unknown key {key!r}; the keys are cpu, memory and gpu", field=f"{source}.{key}")
    if "cpu" in declared:
        cpus = declared["cpu"]
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
            raise ConfigError(f"cpu must be a number of CPUs like 4 or 0.5, not {cpus!r}", field=f"{source}.cpu")
    if "memory" in declared:
        memory_mib = _size(declared["memory"], "memory", f"{source}.memory")
    if "gpu" in declared:
        offered, devices = _declared_gpus(declared["gpu"], gpus, f"{source}.gpu")
    else:
        offered = detect_gpus() if gpus is None else gpus
        devices = bool(offered)
    inventory = Inventory(cpu=detect_cpus() if cpus is None else float(cpus),
                          memory_mib=detect_memory_mib() if memory_mib is None else memory_mib, gpus=list(offered))
    return inventory, devices


def _declared_gpus(value: Any, detected: Optional[list[GpuInfo]], field: str) -> tuple[list[GpuInfo], bool]:
    """The GPUs offered under ``gpu: value``, and whether they are detected devices."""
    if _is_whole(value) and value >= 0:
        if value == 0:
            return [], False
        detected = detect_gpus() if detected is None else detected
        if value > len(detected):
            raise ConfigError(f"gpu: {value} asks for more GPUs than the {len(detected)} nvidia-smi found; "
                              f"to declare GPUs the driver does not report, give their name and memory: "
                              f"gpu: {{count: {value}, name: ..., memory: ...}}", field=field)
        return detected[:value], True
    if not isinstance(value, dict):
        raise ConfigError(f"gpu must be {_GPU_FORMS}, not {value!r}", field=field)
    for key in value:
        if key not in ("count", "name", "memory"):
            raise ConfigError(f"unknown key {key!r}; gpu takes count, name and memory", field=f"{field}.{key}")
    count = value.get("count", 1)
    if not _is_whole(count) or count < 1:
        raise ConfigError(f"gpu.count must be a whole number >= 1, not {count!r}", field=f"{field}.count")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"gpu.name must be the GPU model, like A100 (gpu: {{count, name, memory}} needs it), "
                          f"not {name!r}", field=f"{field}.name")
    memory_mib = _size(value.get("memory"), "gpu.memory", f"{field}.memory")
    detected = detect_gpus() if detected is None else detected
    if len(detected) >= count:
        return [GpuInfo(id=gpu.id, name=name, memory_mib=memory_mib) for gpu in detected[:count]], True
    return [GpuInfo(id=str(i), name=name, memory_mib=memory_mib) for i in range(count)], False


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any, what: str, field: str) -> int:
    try:
        mib = parse_size_mib(value, what)
    except ValueError as e:
        raise ConfigError(str(e), field=field) from None
    if not mib:
        raise ConfigError(f"{what} must be a size like '16GB' or '512MB' (more than 0), not {value!r}", field=field)
    return mib


def _cgroup_folders(controller: str) -> list[Path]:
    """The cgroup folders whose limits apply to this process: its v2 group and its v1 ``controller`` group, each
    with its ancestors (a folder the mount does not show is skipped)."""
    folders = []
    for line in _read(_PROC_CGROUP).splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            base = _CGROUP_ROOT
        elif controller in controllers.split(","):
            base = _CGROUP_ROOT / controller
        else:
            continue
        folder = base / path.lstrip("/")
        folders += [f for f in (folder, *folder.parents) if f.is_relative_to(base) and f.is_dir()]
    return folders


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
