"""workers.capacity.Capacity: a worker's ledger of slots, CPUs, memory and GPUs, handed to tasks
and taken back, including under many threads reserving at once."""
from __future__ import annotations

import random
import sys
import threading

from dstack.messages import Allocation, GpuInfo, Inventory, Resources
from dstack.workers.capacity import Capacity

GB = 1024  # MiB


def a100s(count: int) -> list[GpuInfo]:
    return [GpuInfo(id=str(i), name="NVIDIA A100-SXM4-40GB", memory_mib=40960) for i in range(count)]


def make_capacity(gpus: int = 4, cpu: float = 8, memory_mib: int = 32 * GB, slots: int = 10) -> Capacity:
    return Capacity(Inventory(cpu=cpu, memory_mib=memory_mib, gpus=a100s(gpus)), slots)


class Counter:
    """An ``on_release`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


# ----------------------------------------------------------------------------- bookkeeping


def test_free_shrinks_and_grows_back() -> None:
    capacity = make_capacity(gpus=4, cpu=8, memory_mib=32 * GB)
    first = capacity.reserve("run", "job.0", 0, Resources(cpu=2, memory_mib=8 * GB, gpu_count=1))
    assert first is not None and first.gpu_ids == ["0"]
    free = capacity.free()
    assert (free.cpu, free.memory_mib, [g.id for g in free.gpus]) == (6, 24 * GB, ["1", "2", "3"])

    second = capacity.reserve("run", "job.1", 0, Resources(cpu=0.5, memory_mib=GB, gpu_count=2))
    assert second is not None and second.gpu_ids == ["1", "2"]
    free = capacity.free()
    assert (free.cpu, free.memory_mib, [g.id for g in free.gpus]) == (5.5, 23 * GB, ["3"])

    capacity.release(first)
    free = capacity.free()
    assert (free.cpu, free.memory_mib, [g.id for g in free.gpus]) == (7.5, 31 * GB, ["0", "3"])

    capacity.release(second)
    assert capacity.free() == capacity.inventory
    assert capacity.held() == []


def test_free_does_not_change_the_inventory() -> None:
    capacity = make_capacity(gpus=2)
    before = Inventory(cpu=capacity.inventory.cpu, memory_mib=capacity.inventory.memory_mib,
                       gpus=list(capacity.inventory.gpus))
    capacity.reserve("run", "job", 0, Resources(cpu=4, memory_mib=GB, gpu_count=2))
    capacity.free()
    assert capacity.inventory == before


def test_gpu_ids_given_are_disjoint_and_reused_after_release() -> None:
    capacity = make_capacity(gpus=4)
    taken = [capacity.reserve("run", f"job.{i}", 0, Resources(gpu_count=1)) for i in range(4)]
    assert all(a is not None for a in taken)
    ids = [a.gpu_ids[0] for a in taken if a is not None]
    assert sorted(ids) == ["0", "1", "2", "3"]
    assert capacity.reserve("run", "job.4", 0, Resources(gpu_count=1)) is None

    assert taken[2] is not None
    capacity.release(taken[2])
    again = capacity.reserve("run", "job.4", 0, Resources(gpu_count=1))
    assert again is not None and again.gpu_ids == [ids[2]]


def test_what_a_task_gets_is_recorded_in_its_allocation() -> None:
    capacity = make_capacity(gpus=2)
    needs = Resources(cpu=1, memory_mib=GB, gpu_count=1, gpu_name="A100")
    allocation = capacity.reserve("witty-otter-1234", "train.0", 3, needs)
    assert allocation == Allocation(run_name="witty-otter-1234", task_id="train.0", attempt=3, needs=needs,
                                    gpu_ids=["0"])
    assert capacity.held() == [allocation]


def test_held_is_in_the_order_tasks_reserved() -> None:
    capacity = make_capacity()
    names = ["c", "a", "b"]
    for name in names:
        capacity.reserve("run", name, 0, Resources())
    assert [a.task_id for a in capacity.held()] == names


def test_slots_limit_tasks_that_need_nothing() -> None:
    capacity = make_capacity(slots=2)
    first = capacity.reserve("run", "a", 0, Resources())
    second = capacity.reserve("run", "b", 0, Resources())
    assert first is not None and second is not None
    assert not capacity.can_take(Resources())
    assert capacity.reserve("run", "c", 0, Resources()) is None
    capacity.release(first)
    assert capacity.can_take(Resources())
    assert capacity.reserve("run", "c", 0, Resources()) is not None


def test_zero_slots_take_nothing() -> None:
    capacity = make_capacity(slots=0)
    assert not capacity.can_take(Resources())
    assert capacity.reserve("run", "a", 0, Resources()) is None


def test_cpu_and_memory_limits() -> None:
    capacity = make_capacity(gpus=0, cpu=2, memory_mib=4 * GB)
    assert capacity.reserve("run", "a", 0, Resources(cpu=1.5)) is not None
    assert capacity.reserve("run", "b", 0, Resources(cpu=1)) is None
    assert capacity.reserve("run", "b", 0, Resources(cpu=0.5, memory_mib=3 * GB)) is not None
    assert capacity.reserve("run", "c", 0, Resources(memory_mib=2 * GB)) is None
    assert capacity.reserve("run", "c", 0, Resources(memory_mib=GB)) is not None
    # CPU and memory are all taken; a task needing neither still gets a slot
    assert capacity.reserve("run", "d", 0, Resources()) is not None


def test_release_twice_is_harmless_and_notifies_once() -> None:
    counter = Counter()
    capacity = Capacity(Inventory(cpu=4, memory_mib=8 * GB, gpus=a100s(2)), slots=4, on_release=counter)
    allocation = capacity.reserve("run", "job", 0, Resources(cpu=2, gpu_count=1))
    other = capacity.reserve("run", "other", 0, Resources(cpu=1, gpu_count=1))
    assert allocation is not None and other is not None

    capacity.release(allocation)
    capacity.release(allocation)
    assert counter.calls == 1
    assert capacity.held() == [other]
    free = capacity.free()
    assert (free.cpu, [g.id for g in free.gpus]) == (3, ["0"])


def test_release_of_an_unknown_allocation_does_nothing() -> None:
    counter = Counter()
    capacity = Capacity(Inventory(cpu=4, memory_mib=8 * GB), slots=4, on_release=counter)
    held = capacity.reserve("run", "job", 0, Resources(cpu=1))
    capacity.release(Allocation(run_name="run", task_id="job", attempt=1, needs=Resources(cpu=1)))
    assert counter.calls == 0
    assert capacity.held() == [held]


def test_on_release_is_called_outside_the_lock() -> None:
    """The callback may look at the capacity again (it does: workers re-report what is free)."""
    seen: list[float] = []
    capacity: Capacity

    def on_release() -> None:
        seen.append(capacity.free().cpu)

    capacity = Capacity(Inventory(cpu=4, memory_mib=8 * GB), slots=4, on_release=on_release)
    allocation = capacity.reserve("run", "job", 0, Resources(cpu=3))
    assert allocation is not None
    done = threading.Event()
    thread = threading.Thread(target=lambda: (capacity.release(allocation), done.set()), daemon=True)
    thread.start()
    assert done.wait(2), "release deadlocked calling on_release"
    assert seen == [4]


def test_can_take_agrees_with_reserve() -> None:
    rng = random.Random(7)
    capacity = Capacity(Inventory(cpu=6, memory_mib=16 * GB, gpus=a100s(3)), slots=5)
    held: list[Allocation] = []
    for i in range(2000):
        if held and rng.random() < 0.4:
            capacity.release(held.pop(rng.randrange(len(held))))
            continue
        needs = Resources(cpu=rng.choice([None, 0.5, 1, 2, 3]), memory_mib=rng.choice([None, 512, 4 * GB, 8 * GB]),
                          gpu_count=rng.randint(0, 2), gpu_name=rng.choice([None, "A100", "H100"]))
        expected = capacity.can_take(needs)
        allocation = capacity.reserve("run", f"job.{i}", 0, needs)
        assert (allocation is not None) == expected, (needs, capacity.free(), len(capacity.held()))
        if allocation is not None:
            held.append(allocation)


def test_a_gpu_model_only_takes_matching_gpus() -> None:
    inventory = Inventory(cpu=8, memory_mib=32 * GB, gpus=[
        GpuInfo("0", "Tesla T4", 15360), GpuInfo("1", "Tesla T4", 15360),
        GpuInfo("2", "NVIDIA A100-SXM4-40GB", 40960), GpuInfo("3", "NVIDIA A100-SXM4-40GB", 40960)])
    capacity = Capacity(inventory, slots=10)
    a100 = capacity.reserve("run", "a", 0, Resources(gpu_count=1, gpu_name="A100"))
    anything = capacity.reserve("run", "b", 0, Resources(gpu_count=2))
    assert a100 is not None and a100.gpu_ids == ["2"]
    assert anything is not None and anything.gpu_ids == ["0", "1"]
    assert capacity.reserve("run", "c", 0, Resources(gpu_count=1, gpu_name="T4")) is None
    assert not capacity.can_take(Resources(gpu_count=2, gpu_name="A100"))
    assert capacity.can_take(Resources(gpu_count=1, gpu_name="A100"))


def test_reserving_the_same_task_twice_keeps_the_ledger_whole() -> None:
    capacity = make_capacity(gpus=2, cpu=4, memory_mib=8 * GB)
    needs = Resources(cpu=2, memory_mib=4 * GB, gpu_count=1)
    first = capacity.reserve("run", "job", 0, needs)
    second = capacity.reserve("run", "job", 0, needs)
    assert first is not None and second is None  # a task holds one allocation
    handed_out = set(first.gpu_ids) | set(second.gpu_ids if second is not None else [])
    held = {gpu_id for a in capacity.held() for gpu_id in a.gpu_ids}
    assert handed_out <= held, (first, second, capacity.held())
    free_gpus = {g.id for g in capacity.free().gpus}
    assert not handed_out & free_gpus


# ----------------------------------------------------------------------------- concurrency


def check_ledger(capacity: Capacity) -> None:
    """What held() says is held never exceeds the inventory, and no GPU is held twice."""
    held = capacity.held()
    inventory = capacity.inventory
    assert len(held) <= capacity.slots
    assert sum(a.needs.cpu or 0 for a in held) <= inventory.cpu + 1e-9
    assert sum(a.needs.memory_mib or 0 for a in held) <= inventory.memory_mib
    gpu_ids = [gpu_id for a in held for gpu_id in a.gpu_ids]
    assert len(gpu_ids) == len(set(gpu_ids)), gpu_ids
    assert set(gpu_ids) <= {g.id for g in inventory.gpus}


def test_many_threads_never_overcommit() -> None:
    threads_count, iterations = 16, 500
    inventory = Inventory(cpu=16, memory_mib=64 * GB, gpus=a100s(8))
    releases = Counter()
    releases_lock = threading.Lock()

    def on_release() -> None:
        with releases_lock:
            releases.calls += 1

    capacity = Capacity(inventory, slots=100, on_release=on_release)
    errors: list[BaseException] = []
    reserved = [0] * threads_count
    refused = [0] * threads_count
    start = threading.Barrier(threads_count)

    def work(index: int) -> None:
        rng = random.Random(index)
        mine: list[Allocation] = []  # each thread holds a few tasks at a time, so the ledger fills up
        try:
            start.wait()
            for i in range(iterations):
                if mine and (len(mine) >= 3 or rng.random() < 0.4):
                    capacity.release(mine.pop(rng.randrange(len(mine))))
                needs = Resources(gpu_count=rng.randint(0, 3), cpu=rng.randint(0, 4) or None,
                                  memory_mib=rng.randint(0, 8) * GB or None)
                allocation = capacity.reserve(f"run{index}", f"job.{i}", 0, needs)
                if allocation is None:
                    refused[index] += 1
                    continue
                reserved[index] += 1
                mine.append(allocation)
                assert len(allocation.gpu_ids) == needs.gpu_count
                check_ledger(capacity)
                # what this task got is in the ledger, and no other task holds its GPUs
                held = capacity.held()
                assert allocation in held
                others = [a for a in held if a is not allocation]
                assert not set(allocation.gpu_ids) & {g for a in others for g in a.gpu_ids}
            for allocation in mine:
                capacity.release(allocation)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely, whatever else the machine does
    try:
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(switch_interval)

    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert not errors, errors[0]
    # the test did exercise both reserving and the limits
    assert sum(reserved) > iterations and sum(refused) > 0, (sum(reserved), sum(refused))
    assert releases.calls == sum(reserved)
    assert capacity.held() == []
    assert capacity.free() == inventory


def test_port_pool_never_hands_out_a_port_twice_until_given_back() -> None:
    from dstack.workers.ports import PortPool

    pool = PortPool()
    first = pool.take(50)
    second = pool.take(50)
    assert len(set(first + second)) == 100 and 0 not in first
    pool.give_back(first)
    assert not set(pool.take(10)) & set(second)
