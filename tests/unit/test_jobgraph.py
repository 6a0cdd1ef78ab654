"""dstack.jobgraph: the checks on a provider's jobs before any of them is recorded."""
from __future__ import annotations

from typing import Optional

import pytest

from dstack.jobgraph import check_job_graph, check_relative_path
from dstack.messages import AppSpec, JobSpec


def job(job_id: str, depends_on: Optional[list[str]] = None, master: Optional[str] = None,
        **fields: object) -> JobSpec:
    fields.setdefault("commands", ["echo hi"])
    return JobSpec(job_id=job_id, image="alpine", depends_on=list(depends_on or []), master=master,
                   **fields)  # type: ignore[arg-type]


def test_valid_dag_returned_as_is() -> None:
    jobs = [job("a"), job("b", ["a"]), job("c", ["a"]), job("d", ["b", "c"]), job("e", master="d")]
    assert check_job_graph(jobs) is jobs
    assert [j.job_id for j in jobs] == ["a", "b", "c", "d", "e"]


def test_order_does_not_matter() -> None:
    check_job_graph([job("d", ["b", "c"]), job("c", ["a"]), job("b", ["a"]), job("a")])


def test_single_job() -> None:
    check_job_graph([job("only")])


def test_empty_list() -> None:
    with pytest.raises(ValueError, match="no jobs"):
        check_job_graph([])


def test_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="two jobs have the id 'a'"):
        check_job_graph([job("a"), job("b"), job("a")])


def test_unknown_depends_on() -> None:
    with pytest.raises(ValueError, match=r"job b depends on job 'zz', which does not exist"):
        check_job_graph([job("a"), job("b", ["a", "zz"])])


def test_unknown_master() -> None:
    with pytest.raises(ValueError, match=r"job b depends on job 'ghost', which does not exist"):
        check_job_graph([job("a"), job("b", master="ghost")])


def test_self_dependency() -> None:
    with pytest.raises(ValueError, match="job a depends on itself"):
        check_job_graph([job("a", ["a"])])


def test_self_master() -> None:
    with pytest.raises(ValueError, match="job a depends on itself"):
        check_job_graph([job("a", master="a")])


def test_cycle_shows_path() -> None:
    with pytest.raises(ValueError) as info:
        check_job_graph([job("a", ["c"]), job("b", ["a"]), job("c", ["b"])])
    message = str(info.value)
    assert message.startswith("dependency cycle: ")
    path = message[len("dependency cycle: "):].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    # Each step follows a real edge (job -> what it depends on).
    upstream = {"a": "c", "b": "a", "c": "b"}
    for here, there in zip(path, path[1:]):
        assert upstream[here] == there


def test_two_job_cycle() -> None:
    with pytest.raises(ValueError, match=r"dependency cycle: (a -> b -> a|b -> a -> b)"):
        check_job_graph([job("a", ["b"]), job("b", ["a"])])


def test_cycle_through_master() -> None:
    with pytest.raises(ValueError, match="dependency cycle"):
        check_job_graph([job("a", master="b"), job("b", ["a"])])


def test_cycle_after_an_acyclic_part_names_only_the_cycle() -> None:
    jobs = [job("root"), job("x", ["root", "z"]), job("y", ["x"]), job("z", ["y"])]
    with pytest.raises(ValueError) as info:
        check_job_graph(jobs)
    path = str(info.value).split(": ", 1)[1].split(" -> ")
    assert "root" not in path
    assert sorted(set(path)) == ["x", "y", "z"]


def test_diamond_is_not_a_cycle() -> None:
    check_job_graph([job("a"), job("b", ["a"]), job("c", ["a"]), job("d", ["b", "c", "a"])])


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../b", "..", "~/x", "a\\b", "", "  "])
def test_artifact_paths_refused(path: str) -> None:
    with pytest.raises(ValueError, match="job a: artifact"):
        check_job_graph([job("a", artifacts=["ok", path])])


@pytest.mark.parametrize("path,normal", [
    ("data/", "data"), ("./data", "data"), ("a/b/../c", "a/c"), ("a//b/", "a/b"), ("a/..", "."),
])
def test_artifact_paths_normalised(path: str, normal: str) -> None:
    (checked,) = check_job_graph([job("a", artifacts=[path])])
    assert checked.artifacts == [normal]


@pytest.mark.parametrize("path", ["../elsewhere", "/etc", "src/../../x"])
def test_working_dir_escape_refused(path: str) -> None:
    with pytest.raises(ValueError, match="job a: working_dir"):
        check_job_graph([job("a", working_dir=path)])


def test_working_dir_normalised_and_empty_kept() -> None:
    a, b = check_job_graph([job("a", working_dir="src/"), job("b", working_dir="")])
    assert a.working_dir == "src"
    assert b.working_dir == ""


@pytest.mark.parametrize("port", [-1, 65536, 100000])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ValueError, match=rf"job a: port {port} is not between 0 and 65535"):
        check_job_graph([job("a", ports=[80, port])])


def test_port_bounds_accepted() -> None:
    check_job_graph([job("a", ports=[0, 1, 65535])])  # 0: any free port


def test_app_on_a_port_the_job_lacks() -> None:
    with pytest.raises(ValueError, match="job a: app 'board' listens on port 1, but the job has 1 port"):
        check_job_graph([job("a", ports=[0], apps=[AppSpec(name="board", port_index=1)])])


def test_port_not_an_int() -> None:
    with pytest.raises(ValueError, match="port '80'"):
        check_job_graph([job("a", ports=["80"])])


def test_no_commands_is_the_image_s_own_command() -> None:
    check_job_graph([job("a"), job("b", commands=[])])


def test_check_relative_path_direct() -> None:
    assert check_relative_path("x/y/", "artifact") == "x/y"
    with pytest.raises(ValueError, match="artifact '../x' leaves the project root"):
        check_relative_path("../x", "artifact")
    with pytest.raises(ValueError, match="must be relative to the project root"):
        check_relative_path("/x", "artifact")
    with pytest.raises(ValueError, match="non-empty"):
        check_relative_path(None, "artifact")  # type: ignore[arg-type]
