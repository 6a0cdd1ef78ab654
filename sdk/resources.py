"""What a job asks for: CPUs, memory, GPUs, shared memory."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|)\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"": 1.0, "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}
#: The most processes a job's ``pids`` may allow: the kernel's most (``pid_max`` on 64-bit Linux).
_MAX_PIDS = 4194304
#: Early dstack's ``MODEL/gpu: N`` key of ``resources`` (``K80/gpu: 4``).
_MODEL_GPU = re.compile(r"^([^/]+)/gpu$")


def parse_size_mib(value: Union[str, int, float, None], what: str = "size") -> Optional[int]:
    """Parse ``"16GB"``, ``"512MB"``, ``"1.5G"`` (binary units: 1GB = 1024MB) or a number of MB
    (``512`` or ``"512"``).

    Returns the size in MiB, or ``None`` for ``None``.

    Raises:
        ValueError: the text is not a size; the message names ``what``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size like '16GB' or '512MB', not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{what} must not be negative, not {value!r}")
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{what} must be a size like '16GB' or '512MB', not {value!r}")
    number, unit = match.groups()
    mib = float(number) * _MIB_PER_UNIT[unit[:1].upper()]
    return max(1, int(mib)) if mib else 0


class GPU:
    """GPUs a job needs: how many, optionally of which model and with how much memory each.

    Args:
        count: number of GPUs.
        name: GPU model, e.g. ``"A100"``.
        memory: memory of each GPU, e.g. ``"40GB"``.
    """

    def __init__(self, count: int = 1, name: Optional[str] = None, memory: Union[str, int, None] = None) -> None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"GPU count must be a whole number >= 0, not {count!r}")
        self.count = count
        self.name = name
        self.memory_mib = parse_size_mib(memory, "GPU memory")

    def __repr__(self) -> str:
        return f"GPU(count={self.count!r}, name={self.name!r}, memory_mib={self.memory_mib!r})"


class ResourceRequirements:
    """The resources a job needs; the worker enforces CPU and memory as container limits.

    Args:
        cpu: number of CPUs (fractions allowed).
        memory: memory limit, e.g. ``"16GB"`` or ``"512MB"``.
        gpu: a GPU count, or a :class:`GPU`.
        shm_size: size of ``/dev/shm``, e.g. ``"1GB"``.
        interruptible: the job may run on an interruptible (spot) machine; carried to the job and shown
            by ``dstack status``, it changes neither where nor how the job runs.
        pids: the most processes (and threads) the job may run at once (default 4,096); past it, a fork
            fails inside the job, and nothing outside it notices.
    """

    def __init__(self, cpu: Optional[float] = None, memory: Union[str, int, None] = None,
                 gpu: Union[int, GPU, None] = None, shm_size: Union[str, int, None] = None,
                 interruptible: bool = False, pids: Optional[int] = None) -> None:
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0):
            raise ValueError(f"cpu must be a positive number, not {cpu!r}")
        self.cpu = float(cpu) if cpu is not None else None
        self.memory_mib = parse_size_mib(memory, "memory")
        self.gpu = gpu if isinstance(gpu, GPU) or gpu is None else GPU(count=gpu)
        self.shm_size_mib = parse_size_mib(shm_size, "shm_size")
        if not isinstance(interruptible, bool):
            raise ValueError(f"interruptible must be true or false, not {interruptible!r}")
        self.interruptible = interruptible
        if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or not 1 <= pids <= _MAX_PIDS):
            raise ValueError(f"pids must be a whole number from 1 to {_MAX_PIDS}, not {pids!r}")
        self.pids = pids

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "resources") -> ResourceRequirements:
        """Build from workflow parameters: ``{cpu, memory, gpu: N | {count, name, memory}, shm_size,
        interruptible, pids}``; early dstack's ``MODEL/gpu: N`` is read as ``gpu: {count: N, name: MODEL}``
        (see :func:`current_resources`).

        Raises:
            ValueError: a key or value is wrong; the message starts with ``where`` (and the key).
        """
        data = current_resources(data, where)
        _check_keys(data, where, ("cpu", "memory", "gpu", "shm_size", "interruptible", "pids"))
        gpu = data.get("gpu")
        if isinstance(gpu, dict):
            _check_keys(gpu, f"{where}.gpu", ("count", "name", "memory"))
        try:
            return cls(cpu=data.get("cpu"), memory=data.get("memory"), shm_size=data.get("shm_size"),
                       gpu=GPU(**gpu) if isinstance(gpu, dict) else gpu,
                       interruptible=data.get("interruptible", False), pids=data.get("pids"))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> Dict[str, Any]:
        """The wire form (sizes in MiB); ``interruptible`` only when true, so that a job that does not ask
        for it reads the same to a worker that predates it."""
        wire: Dict[str, Any] = {
            "cpu": self.cpu,
            "memory_mib": self.memory_mib,
            "shm_size_mib": self.shm_size_mib,
            "gpu_count": self.gpu.count if self.gpu else 0,
            "gpu_name": self.gpu.name if self.gpu else None,
            "gpu_memory_mib": self.gpu.memory_mib if self.gpu else None,
        }
        if self.interruptible:
            wire["interruptible"] = True
        if self.pids is not None:
            wire["pids"] = self.pids
        return wire


def current_resources(data: Any, where: str = "resources") -> Any:
    """``data`` (the ``resources`` of a workflow) in today's spelling: early dstack's ``MODEL/gpu: N``
    (``{"K80/gpu": 4}``) becomes ``gpu: {count: N, name: MODEL}``; anything else is returned as given.

    Raises:
        ValueError: the GPUs are said twice (``MODEL/gpu`` beside ``gpu``, or two ``MODEL/gpu`` keys):
            which one is meant is not clear; the message names both and what to write.
    """
    if not isinstance(data, dict):
        return data
    models = [k for k in data if isinstance(k, str) and _MODEL_GPU.match(k)]
    if not models:
        return data
    first = models[0]
    other = models[1] if len(models) > 1 else ("gpu" if "gpu" in data else None)
    count = data[first]
    model = _MODEL_GPU.match(first).group(1)  # type: ignore[union-attr]  # matched above
    if other is not None:
        raise ValueError(f"{where}: '{first}' and '{other}' both say which GPUs the job needs; keep one, "
                         f"e.g. gpu: {{count: {count}, name: {model}}}")
    rest = {k: v for k, v in data.items() if k != first}
    return {**rest, "gpu": {"count": count, "name": model}}


def _check_keys(data: Any, where: str, keys: Tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping with keys among {', '.join(keys)}, not {data!r}")
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(keys)}")
