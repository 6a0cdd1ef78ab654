"""What a job asks for: CPUs, memory, GPUs, shared memory."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|)\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"": 1.0, "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


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
    """

    def __init__(self, cpu: Optional[float] = None, memory: Union[str, int, None] = None,
                 gpu: Union[int, GPU, None] = None, shm_size: Union[str, int, None] = None) -> None:
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0):
            raise ValueError(f"cpu must be a positive number, not {cpu!r}")
        self.cpu = float(cpu) if cpu is not None else None
        self.memory_mib = parse_size_mib(memory, "memory")
        self.gpu = gpu if isinstance(gpu, GPU) or gpu is None else GPU(count=gpu)
        self.shm_size_mib = parse_size_mib(shm_size, "shm_size")

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "resources") -> ResourceRequirements:
        """Build from workflow parameters: ``{cpu, memory, gpu: N | {count, name, memory}, shm_size}``.

        Raises:
            ValueError: a key or value is wrong; the message starts with ``where`` (and the key).
        """
        _check_keys(data, where, ("cpu", "memory", "gpu", "shm_size"))
        gpu = data.get("gpu")
        if isinstance(gpu, dict):
            _check_keys(gpu, f"{where}.gpu", ("count", "name", "memory"))
        try:
            return cls(cpu=data.get("cpu"), memory=data.get("memory"), shm_size=data.get("shm_size"),
                       gpu=GPU(**gpu) if isinstance(gpu, dict) else gpu)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> Dict[str, Any]:
        """The wire form (sizes in MiB)."""
        return {
            "cpu": self.cpu,
            "memory_mib": self.memory_mib,
            "shm_size_mib": self.shm_size_mib,
            "gpu_count": self.gpu.count if self.gpu else 0,
            "gpu_name": self.gpu.name if self.gpu else None,
            "gpu_memory_mib": self.gpu.memory_mib if self.gpu else None,
        }


def _check_keys(data: Any, where: str, keys: Tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping with keys among {', '.join(keys)}, not {data!r}")
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(keys)}")
