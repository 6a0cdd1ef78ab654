"""What the CLI loads (issue 14, item 4): `dstack --version` and `dstack status` import only what they use.

Each case runs the real CLI group in a fresh interpreter and reads back which modules it loaded; none of
these tests measures time. The broker URL points at a closed port, so `dstack status` fails fast after
importing everything its path needs (the RPC client, the message codec, the views and the table).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dstack.cli.main import COMMANDS, cli

#: Runs the CLI with the arguments after the first, then writes the top-level names of the loaded
#: modules (and the dstack modules by full name) as JSON to the file named by the first argument.
RUNNER = """
import json, sys
from dstack.cli.main import cli
try:
    cli(sys.argv[2:], prog_name="dstack")
except SystemExit:
    pass
names = sorted({name.split(".")[0] for name in sys.modules} | {n for n in sys.modules if n.startswith("dstack")})
with open(sys.argv[1], "w") as f:
    json.dump(names, f)
"""

#: Heavy packages that a command must not load unless it uses them.
HEAVY = {"boto3", "botocore", "dramatiq", "jsonschema", "rich", "yaml", "pika", "pathspec", "docker", "cryptography"}


def loaded(tmp_path: Path, *args: str) -> set[str]:
    """The modules `dstack ARGS` loaded, run in a new interpreter against an unreachable broker and S3 storage
    (S3 so that a command that opened the storage would load boto3)."""
    env = {**os.environ, "DSTACK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
           "DSTACK_STORAGE_URL": "s3://no-bucket/prefix", "DSTACK_HOME": str(tmp_path / "home")}
    listing = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", RUNNER, str(listing), *args], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert listing.exists(), result.stderr
    return set(json.loads(listing.read_text()))


def test_version_loads_none_of_the_heavy_packages_nor_the_sdk(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "--version")
    assert not modules & HEAVY
    assert "dstack.sdk" not in modules
    assert not {m for m in modules if m.startswith("dstack.cli.") and m != "dstack.cli.main"}


def test_status_help_loads_no_storage_backend_dramatiq_or_validation(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "status", "--help")
    assert not modules & (HEAVY - {"rich", "pika"})
    assert "dstack.cli.runs" in modules
    assert not modules & {"dstack.cli.artifacts", "dstack.cli.services", "dstack.snapshot", "dstack.sdk"}


def test_status_loads_the_rpc_client_and_the_table_but_no_boto3_dramatiq_jsonschema_or_yaml(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "status")
    assert {"pika", "rich", "dstack.rpc", "dstack.views", "dstack.cli.render"} <= modules
    assert not modules & {"boto3", "botocore", "dramatiq", "jsonschema", "yaml", "pathspec", "docker"}
    assert not modules & {"dstack.sdk", "dstack.project", "dstack.planning", "dstack.builtin_providers"}


def test_the_daily_commands_that_only_ask_the_scheduler_load_no_storage_dramatiq_or_validation(tmp_path: Path
                                                                                                ) -> None:
    for args in (["tags"], ["workers"], ["stop", "some-run"], ["tag", "some-run"], ["secrets", "list"],
                 ["run", "--help"]):
        modules = loaded(tmp_path, *args)
        assert not modules & {"boto3", "botocore", "dramatiq", "jsonschema"}, args


def test_every_command_of_the_table_is_found_under_its_name() -> None:
    group = cli
    assert isinstance(group, click.Group)
    with click.Context(group) as ctx:
        assert group.list_commands(ctx) == sorted(COMMANDS)
        for name in COMMANDS:
            command = group.get_command(ctx, name)
            assert command is not None and command.name == name
        assert group.get_command(ctx, "no-such-command") is None


def test_help_lists_every_command_and_an_unknown_one_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="dstack")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMANDS)
    result = CliRunner().invoke(cli, ["stauts"], prog_name="dstack")
    assert result.exit_code == 2 and "No such command 'stauts'" in result.output


@pytest.mark.parametrize("words, expected", [("dstack sta", {"status"}), ("dstack ta", {"tag", "tags"}),
                                             ("dstack artifacts ", {"list", "download", "upload"})])
def test_shell_completion_completes_command_names(words: str, expected: set[str]) -> None:
    env = {"_DSTACK_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    result = CliRunner().invoke(cli, [], prog_name="dstack", env=env)
    assert result.exit_code == 0
    assert {line.split(",")[1] for line in result.output.splitlines()} == expected


def test_importing_dstack_loads_no_sdk_until_its_names_are_used() -> None:
    code = ("import sys, dstack; assert 'dstack.sdk' not in sys.modules; print(dstack.__version__); "
            "from dstack import Provider, Job; import dstack.sdk; assert Provider is dstack.sdk.Provider; "
            "assert Job is dstack.sdk.Job; assert 'Workflow' in dir(dstack); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.1.0", "ok"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        import dstack
        dstack.NoSuchName  # noqa: B018


def test_the_rpc_client_needs_no_dramatiq_and_the_broker_names_that_do_load_it_when_asked_for() -> None:
    code = ("import sys; import dstack.rpc, dstack.live, dstack.broker as b; assert 'dramatiq' not in sys.modules; "
            "assert b.connection_errors() == (b.BrokerUnavailable, b.AMQPError); "
            "from dstack.broker import CONNECTION_ERRORS, DramatiqConnectionError, MsgpackEncoder; "
            "import dramatiq; assert issubclass(MsgpackEncoder, dramatiq.Encoder); "
            "assert DramatiqConnectionError in CONNECTION_ERRORS == b.connection_errors(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
