"""The speed goals of issue 14 as ratios measured in one benchmark run, with PASS/FAIL.

Pure computation over the summary rows of ``bench_noop`` (no I/O), so it is unit-tested:

* ``chain-20`` end-to-end at most 1.15x the direct Docker SDK time, ``fanout-100`` and
  ``fanin-1000`` at most 1.10x (end to end: CLI start, snapshot, provider, final status);
* ``single-1``: the fixed cost of a run (end-to-end minus the job's own container time, i.e. the
  direct ``containers.run`` of the same container) at most 2.5x one container start
  (``containers.create`` + ``start``, measured on the same machine in the same run);
* ``chain-20``: the median gap from a job's end to the next job's container start at most one
  container start plus 15 ms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Largest end-to-end / direct ratio allowed, by case.
RATIO_BOUNDS = {"chain-20": 1.15, "fanout-100": 1.10, "fanin-1000": 1.10}
#: The fixed cost of a one-job run, in container starts.
FIXED_COST_STARTS = 2.5
#: What a chain's gap may add to one container start, in seconds.
CHAIN_GAP_SLACK_S = 0.015


@dataclass(frozen=True)
class Goal:
    """One goal checked on one case: ``value <= bound`` passes."""

    case: str
    name: str
    value: float
    bound: float
    unit: str  # "x" (a ratio) or "s"

    @property
    def passed(self) -> bool:
        return not math.isnan(self.value) and self.value <= self.bound

    def describe(self) -> str:
        fmt = (lambda v: f"{v:.2f}x") if self.unit == "x" else (lambda v: f"{v * 1000:.0f} ms")
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict}  {self.case:<11} {self.name}: {fmt(self.value)} <= {fmt(self.bound)}"


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def evaluate(row: dict[str, Any], container_start_s: float) -> list[Goal]:
    """The goals that apply to one summary row (``case``, ``ratio``, ``dstack_end_to_end_s``,
    ``docker_direct_s``, ``chain_gap_median_s``), given the median container start in seconds."""
    case = row["case"]
    goals: list[Goal] = []
    if case in RATIO_BOUNDS:
        goals.append(Goal(case, "end-to-end / direct", _nan(row.get("ratio")), RATIO_BOUNDS[case], "x"))
    if case == "single-1":
        fixed = _nan(row.get("dstack_end_to_end_s")) - _nan(row.get("docker_direct_s"))
        goals.append(Goal(case, "fixed cost / one container start", fixed / container_start_s
                          if container_start_s > 0 else float("nan"), FIXED_COST_STARTS, "x"))
    if case == "chain-20":
        goals.append(Goal(case, "exit-to-next-start gap", _nan(row.get("chain_gap_median_s")),
                          container_start_s + CHAIN_GAP_SLACK_S, "s"))
    return goals


def evaluate_all(rows: list[dict[str, Any]], container_start_s: float) -> list[Goal]:
    """The goals of every row, in order."""
    return [goal for row in rows for goal in evaluate(row, container_start_s)]
