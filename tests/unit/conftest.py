"""Fixtures of the unit tests."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scheduler_harness import Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """A scheduler over a new SQLite state store (see :class:`tests.scheduler_harness.Harness`). Test
    modules with a harness of their own (the DAG, fault and worker tests) define their own ``h``,
    which takes precedence over this one."""
    harness = Harness(tmp_path / "scheduler" / "state.db")
    yield harness
    harness.store.close()
