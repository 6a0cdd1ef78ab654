"""dstack.settings: defaults, environment, $DSTACK_HOME/config.yaml, and what is refused."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from dstack import defaults
from dstack.errors import ConfigError
from dstack.settings import Settings, load_settings, with_overrides


@pytest.fixture(autouse=True)
def fake_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``~`` is a fresh folder, so the real ~/.dstack/config.yaml is never read."""
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_defaults(fake_user_home: Path) -> None:
    settings = load_settings({})
    assert settings.home == (fake_user_home / ".dstack").resolve()
    assert settings.broker_url == defaults.BROKER_URL == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.storage_url == (settings.home / "storage").as_uri()
    assert settings.storage_url.startswith("file:///")
    assert settings.worker_slots == defaults.WORKER_SLOTS
    assert settings.worker_id == socket.gethostname()
    assert settings.worker_host == socket.gethostname()
    assert settings.network == ""


def test_storage_default_follows_home(tmp_path: Path) -> None:
    settings = load_settings({"DSTACK_HOME": str(tmp_path / "h")})
    assert settings.home == (tmp_path / "h").resolve()
    assert settings.storage_url == (tmp_path / "h" / "storage").resolve().as_uri()


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "DSTACK_HOME": str(tmp_path / "h"),
        "DSTACK_BROKER_URL": "amqp://u:p@rabbit:5672/dstack",
        "DSTACK_STORAGE_URL": "s3://bucket/prefix",
        "DSTACK_WORKER_ID": "gpu-box-1",
        "DSTACK_WORKER_SLOTS": "8",
        "DSTACK_WORKER_HOST": "10.0.0.7",
        "DSTACK_NETWORK": "host",
    }
    settings = load_settings(env)
    assert settings == Settings(home=tmp_path / "h", broker_url="amqp://u:p@rabbit:5672/dstack",
                                storage_url="s3://bucket/prefix", worker_id="gpu-box-1", worker_slots=8,
                                worker_host="10.0.0.7", network="host")
    assert isinstance(settings.worker_slots, int)


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    settings = load_settings({"DSTACK_HOME": str(tmp_path), "DSTACK_BROKER_URL": "", "DSTACK_WORKER_SLOTS": ""})
    assert settings.broker_url == defaults.BROKER_URL
    assert settings.worker_slots == defaults.WORKER_SLOTS


def test_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DSTACK_BROKER_URL", "DSTACK_STORAGE_URL", "DSTACK_WORKER_ID", "DSTACK_WORKER_SLOTS",
                "DSTACK_WORKER_HOST", "DSTACK_NETWORK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path))
    monkeypatch.setenv("DSTACK_WORKER_ID", "from-os-environ")
    settings = load_settings()
    assert settings.worker_id == "from-os-environ"
    assert settings.home == tmp_path.resolve()


def test_config_file_merged_env_wins(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text(
        "broker_url: amqp://file/\n"
        "worker_slots: 2\n"
        "worker_id: from-file\n"
        "network: bridge\n")
    settings = load_settings({"DSTACK_HOME": str(home), "DSTACK_WORKER_ID": "from-env"})
    assert settings.broker_url == "amqp://file/"
    assert settings.worker_slots == 2
    assert settings.network == "bridge"
    assert settings.worker_id == "from-env"


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("worker_id: from-file\n")
    settings = load_settings({"DSTACK_HOME": str(tmp_path), "DSTACK_WORKER_ID": "from-env"},
                             worker_id="from-override", worker_slots=None)
    assert settings.worker_id == "from-override"
    assert settings.worker_slots == defaults.WORKER_SLOTS  # a None override is no override


def test_empty_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("")
    assert load_settings({"DSTACK_HOME": str(tmp_path)}).broker_url == defaults.BROKER_URL


@pytest.mark.parametrize("value", ["many", "1.5", "4 slots"])
def test_bad_worker_slots_env(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path), "DSTACK_WORKER_SLOTS": value})
    assert info.value.field == "DSTACK_WORKER_SLOTS"
    assert repr(value) in str(info.value)
    assert "whole number" in str(info.value)


def test_bad_worker_slots_in_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("worker_slots: lots\n")
    with pytest.raises(ConfigError, match="whole number"):
        load_settings({"DSTACK_HOME": str(tmp_path)})


@pytest.mark.parametrize("value", ["[4]", "null", "{n: 4}"])
def test_non_scalar_worker_slots_in_file_is_config_error(tmp_path: Path, value: str) -> None:
    (tmp_path / "config.yaml").write_text(f"worker_slots: {value}\n")
    with pytest.raises(ConfigError):
        load_settings({"DSTACK_HOME": str(tmp_path)})


@pytest.mark.parametrize("value", ["0", "-2"])
def test_worker_slots_below_one_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings({"DSTACK_HOME": str(tmp_path), "DSTACK_WORKER_SLOTS": value})


@pytest.mark.parametrize("value", ["Host", "none", "overlay", "bridge "])
def test_bad_network(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path), "DSTACK_NETWORK": value})
    assert info.value.field == "DSTACK_NETWORK"
    assert repr(value) in str(info.value)


def test_bad_network_in_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("network: overlay\n")
    with pytest.raises(ConfigError, match="'host' or 'bridge'"):
        load_settings({"DSTACK_HOME": str(tmp_path)})


def test_bad_network_direct() -> None:
    with pytest.raises(ConfigError):
        Settings(network="nat")


def test_unknown_key_in_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("broker_url: amqp://x/\nbrokr_url: amqp://typo/\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path)})
    assert info.value.file == str(config)
    assert str(config) in str(info.value)
    assert "broker_url" in str(info.value)  # lists the known keys


def test_config_file_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("- broker_url\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path)})
    assert info.value.file == str(tmp_path / "config.yaml")


def test_config_file_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("worker_id: a\nbroker_url: [oops\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path)})
    assert info.value.file == str(tmp_path / "config.yaml")
    assert info.value.line is not None and info.value.line >= 2
    assert "not valid YAML" in str(info.value)


def test_empty_dstack_home_does_not_read_cwd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    (cwd / "config.yaml").write_text("worker_id: from-cwd\n")
    monkeypatch.chdir(cwd)
    assert load_settings({"DSTACK_HOME": ""}).worker_id != "from-cwd"


def test_with_overrides() -> None:
    settings = Settings(worker_id="a", worker_host="h")
    changed = with_overrides(settings, worker_id="b")
    assert changed.worker_id == "b" and changed.worker_host == "h"
    assert settings.worker_id == "a"
    with pytest.raises(ConfigError):
        with_overrides(settings, network="nat")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker_id = "x"  # type: ignore[misc]


def test_home_is_expanded_and_resolved(fake_user_home: Path) -> None:
    assert Settings(home=Path("~/x")).home == (fake_user_home / "x").resolve()


def test_container_env_and_mounts(tmp_path: Path) -> None:
    settings = load_settings({"DSTACK_HOME": str(tmp_path),
                              "DSTACK_CONTAINER_ENV": "{PIP_NO_INDEX: true, PIP_FIND_LINKS: /wheels, N: 1}",
                              "DSTACK_CONTAINER_MOUNTS": "/srv/wheels:/wheels:ro, /data/cache:/cache"})
    assert settings.container_env == {"PIP_NO_INDEX": "true", "PIP_FIND_LINKS": "/wheels", "N": "1"}
    assert settings.container_mounts == [("/srv/wheels", "/wheels", True), ("/data/cache", "/cache", False)]
    (tmp_path / "config.yaml").write_text("container_mounts: [/a:/b:ro]\ncontainer_env: {X: y}\n")
    from_file = load_settings({"DSTACK_HOME": str(tmp_path)})
    assert from_file.container_mounts == [("/a", "/b", True)] and from_file.container_env == {"X": "y"}


@pytest.mark.parametrize("variable, value, message", [
    ("DSTACK_CONTAINER_ENV", "[a, b]", "expected a mapping"),
    ("DSTACK_CONTAINER_ENV", "{'A B': 1}", "'A B' is not an environment variable name"),
    ("DSTACK_CONTAINER_MOUNTS", "wheels:/wheels", "absolute paths"),
    ("DSTACK_CONTAINER_MOUNTS", "/a:/b:rx", "HOST:CONTAINER or HOST:CONTAINER:ro"),
    ("DSTACK_CONTAINER_MOUNTS", "/a:/workflow/data", "/workflow/data is dstack's own"),
    ("DSTACK_CONTAINER_MOUNTS", "/a:/dstack", "/dstack is dstack's own"),
])
def test_bad_container_env_and_mounts(tmp_path: Path, variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"DSTACK_HOME": str(tmp_path), variable: value})
    assert info.value.field == variable and message in info.value.message
