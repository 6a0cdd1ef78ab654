"""dstack.placement and dstack.names.task_queue: GPU model names, GPU memory "as sold", whether a
task fits a worker and which GPUs it gets, the task queue a task goes to, and how needs and
inventories are described to people."""
from __future__ import annotations

import re
from typing import Optional

import pytest

from dstack.messages import GpuInfo, Inventory, Resources
from dstack.names import DEFAULT_TASK_QUEUE, task_queue
from dstack.placement import describe_inventory, describe_needs, fits, gpu_matches, gpu_model, pick_gpus

#: What Dramatiq accepts as a queue name (dramatiq.actor._queue_name_re, matched in full).
DRAMATIQ_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
#: The longest queue name AMQP (RabbitMQ) takes, in bytes.
AMQP_MAX_NAME_BYTES = 255

# GPUs as nvidia-smi names them, with the memory (MiB) it reports.
A100_40 = "NVIDIA A100-SXM4-40GB"
A100_80 = "NVIDIA A100 80GB PCIe"
H100 = "NVIDIA H100 80GB HBM3"
T4 = "Tesla T4"
A10G = "NVIDIA A10G"
RTX3090 = "NVIDIA GeForce RTX 3090"
RTXA6000 = "NVIDIA RTX A6000"


def gpu(name: str, memory_mib: int = 40960, gpu_id: str = "0") -> GpuInfo:
    return GpuInfo(id=gpu_id, name=name, memory_mib=memory_mib)


def gpus(name: str, count: int, memory_mib: int = 40960, first_id: int = 0) -> list[GpuInfo]:
    return [gpu(name, memory_mib, str(first_id + i)) for i in range(count)]


def gb(n: float) -> int:
    """``nGB`` as a user writes it, in MiB (the SDK's parse: 1GB = 1024MB)."""
    return int(n * 1024)


# ----------------------------------------------------------------------------- gpu_model


@pytest.mark.parametrize(("name", "model"), [
    ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 NVL", "h100"),
    ("NVIDIA H100 PCIe", "h100"),
    ("Tesla T4", "t4"),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA GeForce RTX 3090", "rtx3090"),
    ("NVIDIA RTX A6000", "rtxa6000"),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA L4", "l4"),
    # as users write them
    ("A100", "a100"),
    ("a100", "a100"),
    ("RTX 3090", "rtx3090"),
    ("rtx_3090", "rtx3090"),
    ("H100", "h100"),
])
def test_gpu_model(name: str, model: str) -> None:
    assert gpu_model(name) == model


# ----------------------------------------------------------------------------- gpu_matches: names


@pytest.mark.parametrize(("wanted", "name"), [
    ("A100", A100_40),
    ("a100", A100_80),
    ("NVIDIA A100-SXM4-40GB", A100_40),
    ("A100", "NVIDIA A100-SXM4-80GB"),
    ("H100", H100),
    ("H100", "NVIDIA H100 NVL"),
    ("T4", T4),
    ("Tesla T4", T4),
    ("A6000", RTXA6000),
    ("RTX A6000", RTXA6000),
    ("rtx-a6000", RTXA6000),
    ("3090", RTX3090),
    ("RTX 3090", RTX3090),
    ("GeForce RTX 3090", RTX3090),
    ("A10G", A10G),
    ("V100", "Tesla V100-SXM2-16GB"),
])
def test_gpu_name_matches(wanted: str, name: str) -> None:
    assert gpu_matches(gpu(name), Resources(gpu_count=1, gpu_name=wanted))


@pytest.mark.parametrize(("wanted", "name"), [
    ("A100", H100),
    ("H100", A100_40),
    ("A10", A100_40),  # a prefix of another model's name is another model
    ("A10", A10G),
    ("A10G", "NVIDIA A10"),
    ("T4", "NVIDIA L4"),
    ("3090", "NVIDIA GeForce RTX 3080"),
    ("A6000", "NVIDIA RTX 6000 Ada Generation"),
    ("A100", "NVIDIA A1000"),
])
def test_gpu_name_does_not_match(wanted: str, name: str) -> None:
    assert not gpu_matches(gpu(name), Resources(gpu_count=1, gpu_name=wanted))


def test_no_name_matches_any_gpu() -> None:
    for name in (A100_40, H100, T4, RTX3090):
        assert gpu_matches(gpu(name), Resources(gpu_count=1))


# ----------------------------------------------------------------------------- gpu_matches: memory


@pytest.mark.parametrize(("name", "memory_mib", "wanted_gb"), [
    (T4, 15360, 16),
    (H100, 81559, 80),
    (A10G, 23028, 24),
    (A100_40, 40960, 40),
    (A100_40, 40536, 40),  # what some A100 40GB report
    (A100_80, 81920, 80),
    ("NVIDIA L4", 23034, 24),
])
def test_gpu_memory_is_matched_as_sold(name: str, memory_mib: int, wanted_gb: int) -> None:
    assert gpu_matches(gpu(name, memory_mib), Resources(gpu_count=1, gpu_memory_mib=gb(wanted_gb)))
    # the name and the memory together
    assert gpu_matches(gpu(name, memory_mib), Resources(gpu_count=1, gpu_name=name, gpu_memory_mib=gb(wanted_gb)))


@pytest.mark.parametrize(("name", "memory_mib", "wanted_gb"), [
    (A100_40, 40960, 80),
    (T4, 15360, 24),
    (A10G, 23028, 40),
    (H100, 81559, 96),
    # 40960 MiB is 42.9 * 10^9 bytes: as sold, 42GB fits it and 43GB does not.
    (A100_40, 40960, 43),
    (T4, 15360, 17),
])
def test_gpu_memory_too_small(name: str, memory_mib: int, wanted_gb: int) -> None:
    assert not gpu_matches(gpu(name, memory_mib), Resources(gpu_count=1, gpu_memory_mib=gb(wanted_gb)))


def test_gpu_memory_boundary_is_in_sold_gigabytes() -> None:
    """The rule in the module's docstring: ``nGB`` needs n * 10^9 bytes. 40960 MiB is
    42.95 * 10^9 bytes, so it has 42GB (and therefore 41GB) but not 43GB.

    Note: no linear rule can make a T4 (15360 MiB) have 16GB *and* a 40960 MiB card lack 41GB
    (16 * x <= 15360 needs x <= 960 MiB per GB; 41 * x > 40960 needs x > 999)."""
    a100 = gpu(A100_40, 40960)
    assert gpu_matches(a100, Resources(gpu_count=1, gpu_memory_mib=gb(41)))
    assert gpu_matches(a100, Resources(gpu_count=1, gpu_memory_mib=gb(42)))
    assert not gpu_matches(a100, Resources(gpu_count=1, gpu_memory_mib=gb(43)))
    # exactly n * 10^9 bytes is enough; a MiB less is not
    exactly_16_sold = gpu(T4, 15259)  # 16e9 bytes = 15258.8 MiB
    assert gpu_matches(exactly_16_sold, Resources(gpu_count=1, gpu_memory_mib=gb(16)))
    assert not gpu_matches(gpu(T4, 15258), Resources(gpu_count=1, gpu_memory_mib=gb(16)))


def test_name_and_memory_must_both_match() -> None:
    assert not gpu_matches(gpu(A100_40, 40960), Resources(gpu_count=1, gpu_name="A100", gpu_memory_mib=gb(80)))
    assert not gpu_matches(gpu(H100, 81559), Resources(gpu_count=1, gpu_name="A100", gpu_memory_mib=gb(80)))
    assert gpu_matches(gpu(A100_80, 81920), Resources(gpu_count=1, gpu_name="A100", gpu_memory_mib=gb(80)))


# ----------------------------------------------------------------------------- pick_gpus


def test_pick_gpus_takes_the_first_matching() -> None:
    four = gpus(A100_40, 4)
    assert pick_gpus(Resources(gpu_count=2), four) == ["0", "1"]
    assert pick_gpus(Resources(gpu_count=4), four) == ["0", "1", "2", "3"]
    assert pick_gpus(Resources(gpu_count=5), four) is None


def test_pick_gpus_without_gpus_needed() -> None:
    assert pick_gpus(Resources(), []) == []
    assert pick_gpus(Resources(), gpus(A100_40, 2)) == []
    assert pick_gpus(Resources(gpu_count=1), []) is None


def test_pick_gpus_keeps_the_inventory_order_of_ids() -> None:
    shuffled = [gpu(T4, 15360, "3"), gpu(T4, 15360, "1"), gpu(T4, 15360, "7")]
    assert pick_gpus(Resources(gpu_count=2), shuffled) == ["3", "1"]


def test_pick_gpus_from_a_mixed_inventory() -> None:
    mixed = gpus(T4, 2, 15360, first_id=0) + gpus(A100_40, 2, 40960, first_id=2)
    assert pick_gpus(Resources(gpu_count=3), mixed) == ["0", "1", "2"]
    assert pick_gpus(Resources(gpu_count=4), mixed) == ["0", "1", "2", "3"]
    assert pick_gpus(Resources(gpu_count=2, gpu_name="A100"), mixed) == ["2", "3"]
    assert pick_gpus(Resources(gpu_count=1, gpu_name="T4"), mixed) == ["0"]
    assert pick_gpus(Resources(gpu_count=3, gpu_name="A100"), mixed) is None
    assert pick_gpus(Resources(gpu_count=2, gpu_memory_mib=gb(40)), mixed) == ["2", "3"]
    assert pick_gpus(Resources(gpu_count=3, gpu_memory_mib=gb(16)), mixed) == ["0", "1", "2"]
    assert pick_gpus(Resources(gpu_count=1, gpu_name="H100"), mixed) is None


# ----------------------------------------------------------------------------- fits


def inventory(cpu: float = 8, memory_mib: int = gb(32), gpu_list: Optional[list[GpuInfo]] = None) -> Inventory:
    return Inventory(cpu=cpu, memory_mib=memory_mib, gpus=gpu_list or [])


def test_no_needs_fit_an_empty_inventory() -> None:
    assert fits(Resources(), Inventory(cpu=0, memory_mib=0)) == []
    assert fits(Resources(shm_size_mib=gb(8)), Inventory(cpu=0, memory_mib=0)) == []


def test_fits_cpu() -> None:
    assert fits(Resources(cpu=8), inventory(cpu=8)) == []
    assert fits(Resources(cpu=8.5), inventory(cpu=8)) is None
    assert fits(Resources(cpu=0.5), inventory(cpu=0.5)) == []
    assert fits(Resources(cpu=0.5), inventory(cpu=0.25)) is None
    assert fits(Resources(cpu=1), inventory(cpu=0)) is None


def test_fits_cpu_fractions_left_by_float_arithmetic() -> None:
    # 1.0 - 0.1 * 7 leaves 0.30000000000000004 - or a hair less; 0.3 must fit either way
    left = 1.0
    for _ in range(7):
        left -= 0.1
    assert fits(Resources(cpu=0.3), inventory(cpu=left)) == []
    assert fits(Resources(cpu=0.3), inventory(cpu=0.3 - 1e-12)) == []


def test_fits_memory() -> None:
    assert fits(Resources(memory_mib=gb(32)), inventory(memory_mib=gb(32))) == []
    assert fits(Resources(memory_mib=gb(32) + 1), inventory(memory_mib=gb(32))) is None
    assert fits(Resources(memory_mib=512), inventory(memory_mib=0)) is None


def test_fits_gpus_with_cpu_and_memory() -> None:
    available = inventory(cpu=16, memory_mib=gb(64), gpu_list=gpus(A100_40, 2))
    assert fits(Resources(cpu=8, memory_mib=gb(32), gpu_count=2, gpu_name="A100"), available) == ["0", "1"]
    assert fits(Resources(cpu=8, memory_mib=gb(32), gpu_count=3), available) is None
    assert fits(Resources(cpu=32, gpu_count=1), available) is None
    assert fits(Resources(memory_mib=gb(128), gpu_count=1), available) is None
    assert fits(Resources(gpu_count=1, gpu_name="H100"), available) is None


def test_a_task_needing_nothing_fits_a_busy_worker() -> None:
    """CPUs and memory count only what tasks ask for."""
    assert fits(Resources(), Inventory(cpu=-1, memory_mib=-1)) == []


# ----------------------------------------------------------------------------- task_queue


def test_default_task_queue() -> None:
    assert task_queue() == DEFAULT_TASK_QUEUE
    assert task_queue(None) == DEFAULT_TASK_QUEUE
    assert task_queue(Resources()) == DEFAULT_TASK_QUEUE
    assert task_queue(Resources(shm_size_mib=gb(8))) == DEFAULT_TASK_QUEUE
    assert DEFAULT_TASK_QUEUE == "dstack.tasks.cpu"


@pytest.mark.parametrize(("needs", "queue"), [
    (Resources(gpu_count=2, gpu_name="NVIDIA A100-SXM4-40GB", gpu_memory_mib=40960, cpu=8, memory_mib=65536),
     "dstack.tasks.gpu2xa100-vram40960mib-cpu8-mem65536mib"),
    (Resources(gpu_count=1, gpu_name="A100"), "dstack.tasks.gpu1xa100"),
    (Resources(gpu_count=1, gpu_name="a100"), "dstack.tasks.gpu1xa100"),
    (Resources(gpu_count=1, gpu_name="RTX 3090"), "dstack.tasks.gpu1xrtx3090"),
    (Resources(gpu_count=1), "dstack.tasks.gpu1xany"),
    (Resources(gpu_count=4, gpu_memory_mib=gb(80)), "dstack.tasks.gpu4xany-vram81920mib"),
    (Resources(cpu=4), "dstack.tasks.cpu4"),
    (Resources(cpu=4.0), "dstack.tasks.cpu4"),
    (Resources(cpu=0.5), "dstack.tasks.cpu0.5"),
    (Resources(cpu=1.25, memory_mib=512), "dstack.tasks.cpu1.25-mem512mib"),
    (Resources(memory_mib=gb(16)), "dstack.tasks.mem16384mib"),
    # a GPU name with no count asks for no GPU
    (Resources(gpu_name="A100"), DEFAULT_TASK_QUEUE),
])
def test_task_queue_names(needs: Resources, queue: str) -> None:
    assert task_queue(needs) == queue


def test_shm_size_does_not_change_the_queue() -> None:
    needs = Resources(gpu_count=1, gpu_name="T4", cpu=2, memory_mib=gb(8))
    with_shm = Resources(gpu_count=1, gpu_name="T4", cpu=2, memory_mib=gb(8), shm_size_mib=gb(2))
    assert task_queue(needs) == task_queue(with_shm)


def test_same_model_written_differently_shares_a_queue() -> None:
    queues = {task_queue(Resources(gpu_count=1, gpu_name=name))
              for name in ("A100", "a100", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe")}
    assert queues == {"dstack.tasks.gpu1xa100"}


def assert_valid_queue_name(name: str) -> None:
    assert DRAMATIQ_QUEUE_NAME.fullmatch(name), name
    assert len(name.encode()) <= AMQP_MAX_NAME_BYTES, (len(name.encode()), name)


@pytest.mark.parametrize("needs", [
    Resources(),
    Resources(gpu_count=2, gpu_name="NVIDIA A100-SXM4-40GB", gpu_memory_mib=40960, cpu=8, memory_mib=65536),
    Resources(gpu_count=1, gpu_name="NVIDIA RTX A6000 (ñ) / \"weird\" name!"),
    Resources(gpu_count=1, gpu_name="???"),
    Resources(gpu_count=1, gpu_name="日本語"),
    Resources(cpu=0.001),
    Resources(cpu=1e-7),
    Resources(cpu=1 / 3),
    Resources(gpu_count=1000, gpu_memory_mib=2**40, cpu=4096, memory_mib=2**50),
])
def test_task_queue_names_are_valid(needs: Resources) -> None:
    assert_valid_queue_name(task_queue(needs))


def test_task_queue_name_of_a_very_long_gpu_name_is_short_enough() -> None:
    assert_valid_queue_name(task_queue(Resources(gpu_count=1, gpu_name="x" * 300)))


def test_task_queue_name_of_a_huge_cpu_count_is_valid() -> None:
    assert_valid_queue_name(task_queue(Resources(cpu=1_000_000)))


def test_task_queues_of_different_needs_differ() -> None:
    needs = [
        Resources(),
        Resources(cpu=1),
        Resources(cpu=1.5),
        Resources(memory_mib=1024),
        Resources(gpu_count=1),
        Resources(gpu_count=2),
        Resources(gpu_count=1, gpu_name="A100"),
        Resources(gpu_count=1, gpu_name="A10"),
        Resources(gpu_count=1, gpu_name="A10G"),
        Resources(gpu_count=1, gpu_memory_mib=gb(40)),
        Resources(gpu_count=1, gpu_name="A100", gpu_memory_mib=gb(80)),
    ]
    assert len({task_queue(n) for n in needs}) == len(needs)


# ----------------------------------------------------------------------------- describe


@pytest.mark.parametrize(("needs", "text"), [
    (Resources(), "nothing in particular"),
    (Resources(shm_size_mib=gb(1)), "nothing in particular"),
    (Resources(gpu_count=2, gpu_name="A100", gpu_memory_mib=gb(40), cpu=4, memory_mib=gb(16)),
     "2xA100 (40GB each), 4 CPUs, 16GB memory"),
    (Resources(gpu_count=1), "1xGPU"),
    (Resources(gpu_count=1, gpu_memory_mib=gb(24)), "1xGPU (24GB each)"),
    (Resources(cpu=1), "1 CPU"),
    (Resources(cpu=0.5, memory_mib=1536), "0.5 CPUs, 1.5GB memory"),
    (Resources(cpu=1, memory_mib=512), "1 CPU, 512MB memory"),
])
def test_describe_needs(needs: Resources, text: str) -> None:
    assert describe_needs(needs) == text


@pytest.mark.parametrize(("available", "text"), [
    (Inventory(cpu=8, memory_mib=gb(31), gpus=gpus(A100_40, 2)),
     "8 CPUs, 31GB memory, 2xNVIDIA A100-SXM4-40GB (40960 MiB)"),
    (Inventory(cpu=16, memory_mib=gb(64)), "16 CPUs, 64GB memory"),
    (Inventory(cpu=2.5, memory_mib=512), "2.5 CPUs, 512MB memory"),
    (Inventory(cpu=32, memory_mib=gb(128), gpus=gpus(T4, 2, 15360) + gpus(H100, 1, 81559, first_id=2)),
     "32 CPUs, 128GB memory, 2xTesla T4 (15360 MiB), 1xNVIDIA H100 80GB HBM3 (81559 MiB)"),
])
def test_describe_inventory(available: Inventory, text: str) -> None:
    assert describe_inventory(available) == text
