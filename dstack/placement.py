"""Whether a task fits a worker, and which of its GPUs it gets: the one rule the scheduler and
the workers both apply.

GPU models are matched by their model name, so ``A100`` matches "NVIDIA A100-SXM4-40GB" and
``A6000`` or ``RTX A6000`` match "NVIDIA RTX A6000". GPU memory is matched the way GPUs are
sold: ``40GB`` means 40 * 10^9 bytes, so a T4 (15360 MiB) has ``16GB`` and an H100 (81559 MiB)
has ``80GB``. CPUs and memory count only what tasks ask for: a task that asks for nothing
takes a slot of its worker and no CPU or memory.
"""
from __future__ import annotations

import re
from typing import Optional

from dstack.messages import GpuInfo, Inventory, Resources

#: MiB in a GB as GPU makers count it (10^9 bytes).
_MIB_PER_SOLD_GB = 1e9 / 2**20
#: Words in GPU names that say nothing about the model.
_NOISE = re.compile(r"^(nvidia|tesla|geforce|quadro|sxm\d*|pcie|hbm\d*e?|nvl|\d+gb)$")


def gpu_model(name: str) -> str:
    """The model in a GPU name, lower case: "NVIDIA A100-SXM4-40GB" -> ``a100``, "Tesla T4" -> ``t4``."""
    words = [w for w in re.split(r"[\s_-]+", name.lower()) if w and not _NOISE.match(w)]
    return re.sub(r"[^a-z0-9]", "", "".join(words)) or re.sub(r"[^a-z0-9]", "", name.lower())


def _aliases(name: str) -> set[str]:
    """The names a GPU answers to: its model, and each part of it that holds a digit
    ("NVIDIA RTX A6000" -> ``rtxa6000``, ``a6000``)."""
    words = [re.sub(r"[^a-z0-9]", "", w) for w in re.split(r"[\s_-]+", name.lower()) if not _NOISE.match(w)]
    return {gpu_model(name)} | {w for w in words if re.search(r"\d", w)}


def gpu_matches(gpu: GpuInfo, needs: Resources) -> bool:
    """Whether ``gpu`` is of the model and has the memory ``needs`` asks of each GPU."""
    if needs.gpu_name and gpu_model(needs.gpu_name) not in _aliases(gpu.name):
        return False
    return not needs.gpu_memory_mib or gpu.memory_mib >= needs.gpu_memory_mib / 1024 * _MIB_PER_SOLD_GB


def pick_gpus(needs: Resources, gpus: list[GpuInfo]) -> Optional[list[str]]:
    """The ids of the GPUs to give a task (the first that match), or ``None`` if too few match."""
    matching = [g.id for g in gpus if gpu_matches(g, needs)]
    return matching[:needs.gpu_count] if len(matching) >= needs.gpu_count else None


def fits(needs: Resources, available: Inventory) -> Optional[list[str]]:
    """The GPU ids a task needing ``needs`` would get from ``available``, or ``None`` if it does
    not fit (too few CPUs, too little memory or too few matching GPUs)."""
    if needs.cpu and needs.cpu > available.cpu + 1e-9:
        return None
    if needs.memory_mib and needs.memory_mib > available.memory_mib:
        return None
    return pick_gpus(needs, available.gpus)


def _size(mib: float) -> str:
    gib = mib / 1024
    return f"{gib:.3g}GB" if gib >= 1 else f"{int(mib)}MB"


def asks_for_anything(needs: Resources) -> bool:
    """Whether ``needs`` asks for something a worker counts (GPUs, CPUs, memory)."""
    return bool(needs.gpu_count or needs.cpu or needs.memory_mib)


def describe_needs(needs: Resources) -> str:
    """``2xA100 (40GB each), 4 CPUs, 16GB memory``; ``nothing in particular`` for no needs."""
    parts = []
    if needs.gpu_count:
        gpu = f"{needs.gpu_count}x{needs.gpu_name or 'GPU'}"
        parts.append(gpu + (f" ({_size(needs.gpu_memory_mib)} each)" if needs.gpu_memory_mib else ""))
    if needs.cpu:
        parts.append(f"{needs.cpu:g} CPU{'s' if needs.cpu != 1 else ''}")
    if needs.memory_mib:
        parts.append(f"{_size(needs.memory_mib)} memory")
    return ", ".join(parts) if asks_for_anything(needs) else "nothing in particular"


def describe_inventory(inventory: Inventory) -> str:
    """``8 CPUs, 31GB memory, 2xNVIDIA A100-SXM4-40GB (40960 MiB)``."""
    parts = [f"{inventory.cpu:g} CPU{'s' if inventory.cpu != 1 else ''}", f"{_size(inventory.memory_mib)} memory"]
    models: dict = {}
    for gpu in inventory.gpus:
        models.setdefault((gpu.name, gpu.memory_mib), []).append(gpu.id)
    parts += [f"{len(ids)}x{name} ({mib} MiB)" for (name, mib), ids in models.items()]  # as the driver says
    return ", ".join(parts)
