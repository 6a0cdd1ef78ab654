"""The benchmark's own logic (bench/): goals and ratios, the command line, the --compare checkout and
the scale cases' arithmetic. No services: the benchmarks themselves are run by hand (bench/README.md)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import goals, scale
from bench.bench_noop import parse_args
from bench.compare import Checkout, build_layout, imported_from, package_dirs


def _row(case: str, e2e: float, direct: float, gap: float = float("nan")) -> dict:
    return {"case": case, "dstack_end_to_end_s": e2e, "docker_direct_s": direct, "ratio": e2e / direct,
            "chain_gap_median_s": gap}


# --------------------------------------------------------------------------- goals


def test_goals_ratios_fixed_cost_and_chain_gap() -> None:
    start = 0.1  # one container start: 100 ms
    rows = [_row("single-1", 0.45, 0.2), _row("chain-20", 2.3, 2.0, gap=0.114), _row("fanout-100", 6.7, 6.0),
            _row("fanin-1000", 66.0, 60.0)]
    found = {(g.case, g.name): g for g in goals.evaluate_all(rows, start)}
    fixed = found[("single-1", "fixed cost / one container start")]
    assert fixed.value == pytest.approx(2.5) and fixed.bound == 2.5 and fixed.passed  # 0.25 s = 2.5 starts
    chain = found[("chain-20", "end-to-end / direct")]
    assert chain.value == pytest.approx(1.15) and chain.passed
    gap = found[("chain-20", "exit-to-next-start gap")]
    assert gap.bound == pytest.approx(0.115) and gap.passed
    assert found[("fanout-100", "end-to-end / direct")].value == pytest.approx(6.7 / 6.0)
    assert not found[("fanout-100", "end-to-end / direct")].passed  # 1.117x > 1.10x
    assert found[("fanin-1000", "end-to-end / direct")].passed  # exactly 1.10x
    assert len(found) == 5
    assert found[("fanout-100", "end-to-end / direct")].describe().startswith("FAIL  fanout-100")
    assert "116 ms <= 115 ms" in goals.Goal("chain-20", "gap", 0.116, 0.115, "s").describe()


def test_goals_fail_on_missing_figures() -> None:
    found = goals.evaluate_all([_row("chain-20", 2.0, 2.0)], 0.1)  # no chain gap measured
    gap = next(g for g in found if "gap" in g.name)
    assert math.isnan(gap.value) and not gap.passed
    fixed = goals.evaluate(_row("single-1", 0.5, 0.2), 0.0)[0]  # no container start measured
    assert not fixed.passed
    assert goals.evaluate(_row("noop-10000", 1.0, 1.0), 0.1) == []  # no bound for other cases


# --------------------------------------------------------------------------- command line


def test_parse_args_cases_storage_and_defaults() -> None:
    args = parse_args([])
    assert args.cases == ["single-1", "chain-20", "fanout-100", "fanin-1000"]
    assert args.scale_cases == [] and args.storages == ["local"] and args.compare is None and args.scale == 1.0
    args = parse_args(["--cases", "runs-2000,chain-20,noop-10000", "--storage", "both", "--scale", "0.1",
                       "--compare", "HEAD~3"])
    assert args.cases == ["chain-20"] and args.scale_cases == ["noop-10000", "runs-2000"]
    assert args.storages == ["local", "s3"] and args.compare == "HEAD~3" and args.scale == 0.1
    assert parse_args(["--storage", "s3"]).storages == ["s3"]


@pytest.mark.parametrize("argv", [["--cases", "chain-21"], ["--cases", ","], ["--storage", "nfs"],
                                  ["--scale", "0"], ["--repeat", "0"]])
def test_parse_args_refuses_bad_input(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


# --------------------------------------------------------------------------- scale cases


def test_scale_sizes_split_and_cpu_per_thousand() -> None:
    noop, runs = scale.SCALE_CASES
    assert noop.sized(1.0) == (1, 10000) and noop.sized(0.1) == (1, 1000)
    assert runs.sized(1.0) == (2000, 1) and runs.sized(0.1) == (200, 1) and runs.clis == 16
    assert noop.block(1.0) == 1000 and noop.block(0.1) == 100 and noop.block(0.01) == 50
    assert scale.split(200, 16) == [13] * 8 + [12] * 8 and sum(scale.split(7, 16)) == 7
    assert scale.split(1, 1) == [1]
    blocks = scale.per_thousand([(0, 10.0), (1000, 12.0), (2000, 14.5), (2000, 14.5), (2500, 15.5)])
    assert [b["cpu_s_per_1000"] for b in blocks] == pytest.approx([2.0, 2.5, 2.0])
    # the 2 tasks after the last mark are merged into the block before: no spike of 2 tasks x 500
    blocks = scale.per_thousand([(0, 0.0), (1000, 20.0), (2000, 30.0), (3000, 40.0), (3002, 40.1)], min_tasks=500)
    assert [(b["tasks_from"], b["tasks_to"]) for b in blocks] == [(0, 1000), (1000, 2000), (2000, 3002)]
    assert [b["cpu_s_per_1000"] for b in blocks] == pytest.approx([20.0, 10.0, 10.1 / 1.002])
    assert scale.flatness(blocks) == pytest.approx((10.1 / 1.002) / (10.1 / 1.002))  # median is the last here
    assert scale.flatness(scale.per_thousand([(0, 0.0), (10, 1.0), (20, 2.0), (30, 6.0)])) == pytest.approx(4.0)
    assert math.isnan(scale.flatness(blocks[:2]))
    workflow = scale.noop_workflow("noop-10000", 3, "python:3.9")
    assert workflow["name"] == "noop-10000" and len(workflow["jobs"]) == 3
    assert all("depends_on" not in job for job in workflow["jobs"])


def test_scale_problems() -> None:
    good = {"timed_out": False, "finished_tasks": 4, "expected_tasks": 4, "submissions": [{"rc": 0}] * 2,
            "state": {"tasks": {"job:done": 2, "provider:done": 2}, "runs": {"done": 2}, "max_attempt": 1}}
    assert scale.problems(good, runs=2) == []
    bad = {**good, "timed_out": True, "submissions": [{"rc": 1, "stderr": "boom"}],
           "state": {"tasks": {"job:done": 1, "job:failed": 1}, "runs": {"done": 1, "failed": 1}, "max_attempt": 2}}
    found = " | ".join(scale.problems(bad, runs=2))
    for expected in ("tasks finished in time", "boom", "job:failed", "expected 2 done", "ran 2 times"):
        assert expected in found


# --------------------------------------------------------------------------- --compare


PYPROJECT = """[project]
name = "dstack"

[tool.setuptools.package-dir]
"dstack.sdk" = "sdk"
"dstack.workers" = "workers"   # a comment
"dstack.scheduler" = "scheduler"

[tool.other]
"dstack.nope" = "nope"
"""


def test_package_dirs_reads_the_mapping_only() -> None:
    assert package_dirs(PYPROJECT) == {"dstack.sdk": "sdk", "dstack.workers": "workers",
                                       "dstack.scheduler": "scheduler"}
    assert package_dirs("[project]\nname = 'x'\n") == {}
    real = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert package_dirs(real)["dstack.sdk"] == "sdk"  # the repository's own mapping is found


def _fake_repo(root: Path, marker: str) -> Path:
    """A git repository laid out as dstack's (dstack/, sdk/, scheduler/, workers/ mapped by pyproject)."""
    for package in ("dstack", "sdk", "scheduler", "workers"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"MARK = {marker!r}\n")
    (root / "pyproject.toml").write_text(PYPROJECT)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    return root


def test_build_layout_maps_subpackages(tmp_path: Path) -> None:
    source = _fake_repo(tmp_path / "src", "src")
    layout = build_layout(source, tmp_path / "layout")
    assert (layout / "dstack" / "__init__.py").resolve() == (source / "dstack" / "__init__.py").resolve()
    assert (layout / "dstack" / "sdk").resolve() == (source / "sdk").resolve()
    assert (layout / "dstack" / "workers").resolve() == (source / "workers").resolve()
    build_layout(source, layout)  # again: replaces the links


def test_checkout_imports_the_ref_and_cleans_up(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo", "old")
    (repo / "sdk" / "__init__.py").write_text("MARK = 'new'\n")  # uncommitted: not part of HEAD
    with Checkout(repo, "HEAD") as checkout:
        assert len(checkout.commit) == 40 and checkout.subject == "first"
        assert checkout.label.startswith("HEAD (") and checkout.worktree.is_dir()
        env = {**os.environ, **checkout.env()}
        # run from the repository itself, whose dstack/ would otherwise come first on sys.path
        found = imported_from(env, sys.executable, cwd=repo)
        assert set(found) == {"dstack", "dstack.sdk", "dstack.scheduler", "dstack.workers"}
        assert all(path.startswith(str(checkout.layout)) for path in found.values()), found
        marks = subprocess.run([sys.executable, "-c", "import json, dstack, dstack.sdk; "
                                "print(json.dumps([dstack.MARK, dstack.sdk.MARK]))"],
                               env=env, cwd=repo, capture_output=True, text=True, check=True)
        assert json.loads(marks.stdout) == ["old", "old"]
        folder = checkout.folder
    assert not folder.exists()
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.strip().splitlines()) == 1  # only the main tree is left
    assert (repo / "sdk" / "__init__.py").read_text() == "MARK = 'new'\n"  # the main tree untouched


def test_checkout_of_an_unknown_ref_says_so(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo", "x")
    with pytest.raises(RuntimeError, match="no-such-ref"):
        Checkout(repo, "no-such-ref")
