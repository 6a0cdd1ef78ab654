"""A worker's ledger: what it has, what its tasks hold, and what is left for the next one."""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, Optional

from dstack.messages import Allocation, Inventory, Resources
from dstack.placement import fits


class Capacity:
    """Slots, CPUs, memory and GPUs of one worker, handed to tasks and taken back.

    Reserving is atomic, so however many tasks arrive at once, what runs never exceeds what
    the worker has, and no GPU is given to two tasks.

    Args:
        inventory: what the worker has.
        slots: how many tasks may run at once.
        on_release: called (outside the lock) whenever something is given back.
    """

    def __init__(self, inventory: Inventory, slots: int, on_release: Callable[[], None] = lambda: None) -> None:
        self.inventory = inventory
        self.slots = slots
        self._on_release = on_release
        self._held: dict[str, Allocation] = {}
        self._lock = threading.Lock()

    def free(self) -> Inventory:
        """What no task holds."""
        with self._lock:
            return self._free()

    def _free(self) -> Inventory:
        held = list(self._held.values())
        taken = {gpu_id for allocation in held for gpu_id in allocation.gpu_ids}
        return replace(
            self.inventory,
            cpu=self.inventory.cpu - sum(a.needs.cpu or 0 for a in held),
            memory_mib=self.inventory.memory_mib - sum(a.needs.memory_mib or 0 for a in held),
            gpus=[gpu for gpu in self.inventory.gpus if gpu.id not in taken])

    def can_take(self, needs: Resources) -> bool:
        """Whether a task needing ``needs`` would fit now."""
        with self._lock:
            return len(self._held) < self.slots and fits(needs, self._free()) is not None

    def reserve(self, run_name: str, task_id: str, attempt: int, needs: Resources) -> Optional[Allocation]:
        """Hold what a task needs (its GPUs chosen here), or return ``None`` if it does not fit now
        (or holds something already)."""
        with self._lock:
            if len(self._held) >= self.slots or f"{run_name}/{task_id}/{attempt}" in self._held:
                return None
            gpu_ids = fits(needs, self._free())
            if gpu_ids is None:
                return None
            allocation = Allocation(run_name=run_name, task_id=task_id, attempt=attempt, needs=needs,
                                    gpu_ids=gpu_ids)
            self._held[_key(allocation)] = allocation
            return allocation

    def release(self, allocation: Allocation) -> None:
        """Give back what a task held; giving it back twice is harmless."""
        with self._lock:
            released = self._held.pop(_key(allocation), None) is not None
        if released:
            self._on_release()

    def held(self) -> list[Allocation]:
        """What each task holds, in the order they took it."""
        with self._lock:
            return list(self._held.values())


def _key(allocation: Allocation) -> str:
    return f"{allocation.run_name}/{allocation.task_id}/{allocation.attempt}"
