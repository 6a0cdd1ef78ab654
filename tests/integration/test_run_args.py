"""`dstack run NAME ARGS` through the real services: a built-in provider's options overriding a workflow's
parameters (and an unknown one refused), and a custom provider that reads its arguments (``self.provider_args``)
with argparse, run by its name from providers.yaml and as a workflow's provider."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.services import TEST_IMAGE, Cluster, run_name_of, write_project

pytestmark = pytest.mark.integration

ECHOARGS = '''
import argparse
import shlex

from dstack import Job, Provider


class EchoArgs(Provider):
    """One job printing the arguments `dstack run` gave the provider, read with argparse."""

    def create_jobs(self):
        parser = argparse.ArgumentParser(prog="dstack run " + self.workflow.name)
        parser.add_argument("name")
        parser.add_argument("--flag", default="none")
        parser.add_argument("-d", "--dry-run", action="store_true")
        args = parser.parse_args(self.provider_args)
        line = "name=%s flag=%s dry=%s args=%s" % (args.name, args.flag, args.dry_run, " ".join(self.provider_args))
        return [Job(image="python:3.9", commands=["echo " + shlex.quote(line) + " epochs=$EPOCHS"])]


if __name__ == "__main__":
    EchoArgs().start()
'''


def test_builtin_provider_options_override_a_workflows_parameters(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {".dstack/workflows.yaml": """\
workflows:
  - name: hello
    provider: bash
    version: "3.11"
    commands:
      - echo "greeting=$GREETING other=$OTHER"
    environment:
      GREETING: hello
      OTHER: kept
    resources:
      memory: 256MB
"""})
    help_text = cluster.dstack("run", "hello", "--help", cwd=project)
    assert help_text.returncode == 0 and "Options of provider bash" in help_text.stdout
    assert "--memory SIZE" in help_text.stdout and "-c COMMAND, --command COMMAND" in help_text.stdout

    unknown = cluster.dstack("run", "hello", "--bogus", "1", cwd=project)
    assert unknown.returncode == 1 and unknown.stdout == ""  # nothing submitted
    assert "unknown option --bogus: it is neither a variable of this run (none;" in unknown.stderr
    assert "an option of provider bash (-c/--command, -p/--ports" in unknown.stderr

    result = cluster.dstack("run", "hello", "--version", "3.9", "-e", "GREETING=hi", "--memory", "512MB", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello.0 | greeting=hi other=kept" in result.stdout  # -e merged into environment
    job = cluster.status(run_name_of(result))["jobs"][1]
    assert job["image"] == "python:3.9"  # the image of --version 3.9, not of the workflow's 3.11
    assert job["resources"]["memory_mib"] == 512


def test_custom_provider_gets_its_arguments(cluster: Cluster, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", {
        ".dstack/providers.yaml": yaml.safe_dump({"providers": [
            {"name": "echoargs", "image": TEST_IMAGE, "commands": ["python3 providers/echoargs/main.py"]}]}),
        ".dstack/workflows.yaml": yaml.safe_dump({"workflows": [{"name": "greet", "provider": "echoargs"}]}),
        ".dstack/variables.yaml": yaml.safe_dump({"variables": {"global": {"epochs": 1}}}),
        "providers/echoargs/main.py": ECHOARGS,
    })
    by_name = cluster.dstack("run", "echoargs", "ARG1", "--flag", "x", "-d", cwd=project)
    as_workflow = cluster.dstack("run", "greet", "world", "--epochs", "5", "--flag", "y", "--", "-d", cwd=project)
    missing = cluster.dstack("run", "echoargs", "-d", cwd=project)  # its argparse wants a name
    for result in (by_name, as_workflow, missing):
        assert result.returncode == 0, result.stderr
    assert "arguments of provider echoargs: ARG1 --flag x" in by_name.stderr
    assert "arguments of provider echoargs: world --flag y -d" in as_workflow.stderr

    assert cluster.wait_status(run_name_of(by_name), ("done", "failed"))["status"] == "done"
    assert cluster.job_lines(run_name_of(by_name), "echoargs.0") == [
        "name=ARG1 flag=x dry=False args=ARG1 --flag x epochs=1"]
    assert cluster.status(run_name_of(by_name))["workflow"] == "echoargs"

    assert cluster.wait_status(run_name_of(as_workflow), ("done", "failed"))["status"] == "done"
    assert cluster.job_lines(run_name_of(as_workflow), "greet.0") == [
        "name=world flag=y dry=True args=world --flag y -d epochs=5"]  # -d after -- is the provider's: it followed

    failed = cluster.wait_status(run_name_of(missing), ("done", "failed"))
    assert failed["status"] == "failed"
    assert "the following arguments are required: name" in failed["jobs"][0]["reason"]
