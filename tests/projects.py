"""Projects the integration tests run: a provider that builds whatever job graph its workflow describes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.services import TEST_IMAGE, write_project

GRAPH_PROVIDER = '''
from typing import List

from dstack import GPU, Job, Provider, ResourceRequirements, Retry


class GraphProvider(Provider):
    """Creates the jobs listed in the workflow's `jobs`; references are indexes."""

    def __init__(self):
        super().__init__(schema="schema.yaml")

    def create_jobs(self) -> List[Job]:
        specs = self.workflow.data["jobs"]
        jobs = []
        for spec in specs:
            resources = spec.get("resources")
            jobs.append(Job(
                image=spec.get("image", "python:3.9"),
                commands=spec["commands"],
                ports=spec.get("ports"),
                working_dir=spec.get("working_dir"),
                artifacts=spec.get("artifacts"),
                resources=ResourceRequirements.from_dict(resources) if resources else None,
                environment=spec.get("environment"),
                retry=Retry.from_value(spec["retry"]) if "retry" in spec else None,
                max_duration=spec.get("max_duration"),
            ))
        for job, spec in zip(jobs, specs):
            job.depends_on = [jobs[i] for i in spec.get("depends_on", [])]
            if spec.get("master") is not None:
                job.master = jobs[spec["master"]]
            if spec.get("depends_on_outsider"):
                job.depends_on.append(Job(image="python:3.9", commands=["true"]))
        return jobs


if __name__ == "__main__":
    GraphProvider().start()
'''

GRAPH_SCHEMA = '''
type: object
additionalProperties: false
required: [jobs]
properties:
  jobs:
    type: array
    items:
      type: object
      required: [commands]
'''


def graph_project(workflows: list[dict[str, Any]], provider_commands: list[str] = None) -> dict[str, str]:
    """Files of a project whose workflows use the ``graph`` provider (each: name + jobs)."""
    providers = {"providers": [{
        "name": "graph", "image": TEST_IMAGE,
        "commands": provider_commands or ["python3 providers/graph/main.py"],
    }]}
    return {
        ".dstack/providers.yaml": yaml.safe_dump(providers),
        ".dstack/workflows.yaml": yaml.safe_dump({"workflows": [{"provider": "graph", **w} for w in workflows]}),
        "providers/graph/main.py": GRAPH_PROVIDER,
        "providers/graph/schema.yaml": GRAPH_SCHEMA,
    }


def graph_workflow_project(root: Path, jobs: list[dict[str, Any]], **workflow_keys: Any) -> Path:
    """A project folder with one workflow ``w`` of the ``graph`` provider making ``jobs``."""
    return write_project(root, graph_project([{"name": "w", "jobs": jobs, **workflow_keys}]))
