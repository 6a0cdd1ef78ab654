"""A custom provider written for early dstack's SDK, run unchanged through the real services.

Its project declares the provider in ``.dstack/providers.yaml``; the provider names its schema
relative to the project root, asks for ports with ``port_count=``, names images with ``image_name=``,
leaves a job's commands out, and uses ``App(port_index, app_name, ...)``, ``Resources`` and ``Gpu``.
Its jobs print the early names of the job environment: ``PORT_<i>``, ``HOSTNAME``, ``MASTER_JOB_ID``.
"""
from __future__ import annotations

import re
from pathlib import Path

import docker
import pytest

from tests.services import Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

#: an image whose own command (run when a job gives none) prints early dstack's job variables
OWN_COMMAND_IMAGE = "dstack-test/own-command-compat:1"

OLD_STYLE_PROVIDER = '''\
from typing import List

from dstack import App, Gpu, Job, Provider, Resources


class OldStyleProvider(Provider):
    def __init__(self):
        super().__init__(schema="providers/old_style/schema.yaml")
        self.image = self.workflow.data["image"]
        self.resources = self._resources()

    def create_jobs(self) -> List[Job]:
        master = Job(
            image_name="python:3.9",
            commands=["echo master PORT_0=$PORT_0 JOB_PORT_0=$JOB_PORT_0 HOSTNAME=$HOSTNAME JOB_HOSTNAME=$JOB_HOSTNAME",
                      "sleep 8"],
            port_count=1,
            resources=Resources(cpu=1, memory="256MB", gpu=Gpu(0)),
            apps=[App(0, "board", "index.html")],
        )
        follower = Job(
            image_name="python:3.9",
            commands=["echo follower MASTER_JOB_ID=$MASTER_JOB_ID MASTER_JOB_HOSTNAME=$MASTER_JOB_HOSTNAME "
                      "MASTER_JOB_PORT_0=$MASTER_JOB_PORT_0"],
            master=master,
            resources=self.resources,
        )
        own = Job(image_name=self.image, port_count=2)
        return [master, follower, own]


if __name__ == "__main__":
    provider = OldStyleProvider()
    provider.start()
'''

OLD_STYLE_SCHEMA = """\
type: object
additionalProperties: false
required: [image]
properties:
  image: {type: string}
  resources: {type: object}
"""


@pytest.fixture
def own_command_image(docker_engine: docker.DockerClient) -> str:
    scratch = docker_engine.containers.create("python:3.9")
    try:
        scratch.commit(*OWN_COMMAND_IMAGE.split(":"), changes=[
            'ENTRYPOINT ["sh", "-c"]', 'CMD ["echo own command PORT_0=$PORT_0 PORT_1=$PORT_1 HOSTNAME=$HOSTNAME"]'])
    finally:
        scratch.remove()
    return OWN_COMMAND_IMAGE


def variables(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", line))


def line_of(logs: list[str], start: str) -> str:
    found = [line for line in logs if line.startswith(start)]
    assert found, f"no line starting with {start!r} in {logs}"
    return found[0]


def test_an_early_custom_provider_runs_unchanged(cluster: Cluster, tmp_path: Path, own_command_image: str) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": """\
providers:
  - name: old-style
    image: python:3.9
    commands:
      - python3 providers/old_style/main.py
""",
        ".dstack/workflows.yaml": f"""\
workflows:
  - name: pair
    provider: old-style
    image: {own_command_image}
    resources:
      cpu: 1
      memory: 128MB
""",
        # the schema sits in the project's providers/old_style/, not next to main.py in a providers/ of its own
        "providers/old_style/main.py": OLD_STYLE_PROVIDER,
        "providers/old_style/schema.yaml": OLD_STYLE_SCHEMA,
    })

    result = cluster.dstack("run", "pair", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    run_name = run_name_of(result)
    logs = cluster.job_logs(run_name)
    jobs = {job["job_id"]: job for job in cluster.status(run_name)["jobs"]}
    master = variables(line_of(logs["pair.0"], "master "))
    assert master["PORT_0"] == master["JOB_PORT_0"] and int(master["PORT_0"]) > 0  # port_count=1: any free port
    assert master["HOSTNAME"] == master["JOB_HOSTNAME"] == "127.0.0.1"
    assert jobs["pair.0"]["image"] == "python:3.9" and len(jobs["pair.0"]["ports"]) == 1
    assert jobs["pair.0"]["resources"]["cpu"] == 1 and jobs["pair.0"]["resources"]["memory_mib"] == 256
    assert [app["name"] for app in jobs["pair.0"]["apps"]] == ["board"]
    follower = variables(line_of(logs["pair.1"], "follower "))
    assert follower["MASTER_JOB_ID"] == "pair.0" and follower["MASTER_JOB_HOSTNAME"] == "127.0.0.1"
    assert follower["MASTER_JOB_PORT_0"] == str(jobs["pair.0"]["ports"][0])
    assert jobs["pair.1"]["resources"]["memory_mib"] == 128  # self._resources(), from the workflow
    own = variables(line_of(logs["pair.2"], "own command "))  # no commands: the image's own command ran
    assert int(own["PORT_0"]) > 0 and int(own["PORT_1"]) > 0 and own["PORT_0"] != own["PORT_1"]
    assert own["HOSTNAME"] == "127.0.0.1"
    assert jobs["pair.2"]["image"] == own_command_image


def test_an_invalid_schema_is_the_providers_fault(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": "providers:\n  - name: old-style\n    image: python:3.9\n"
                                  "    commands:\n      - python3 providers/old_style/main.py\n",
        ".dstack/workflows.yaml": "workflows:\n  - name: pair\n    provider: old-style\n    image: python:3.9\n",
        "providers/old_style/main.py": OLD_STYLE_PROVIDER,
        "providers/old_style/schema.yaml": "type: object\nproperties:\n  image: {type: string, minLenght: 1}\n",
    })

    result = cluster.dstack("run", "pair", cwd=project)

    assert result.returncode == 1
    reason = cluster.status(run_name_of(result))["jobs"][0]["reason"]
    assert "the provider's schema providers/old_style/schema.yaml is invalid" in reason and "minLenght" in reason
