"""Configuration, read once from the environment (and optionally ``$DSTACK_HOME/config.yaml``)
and passed down explicitly. No other module reads the environment.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

from dstack import defaults
from dstack.errors import ConfigError

#: Environment variables and the settings field each sets.
ENV_VARS = {
    "DSTACK_HOME": "home",
    "DSTACK_BROKER_URL": "broker_url",
    "DSTACK_STORAGE_URL": "storage_url",
    "DSTACK_WORKER_ID": "worker_id",
    "DSTACK_WORKER_SLOTS": "worker_slots",
    "DSTACK_WORKER_HOST": "worker_host",
    "DSTACK_NETWORK": "network",
    "DSTACK_WORKER_RESOURCES": "worker_resources",
    "DSTACK_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "DSTACK_WORKER_TIMEOUT": "worker_timeout",
    "DSTACK_DRAIN_PERIOD": "drain_period",
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a dstack process.

    Attributes:
        home: local state folder (``DSTACK_HOME``).
        broker_url: AMQP URL of RabbitMQ (``DSTACK_BROKER_URL``).
        storage_url: ``file:///path`` or ``s3://bucket/prefix`` (``DSTACK_STORAGE_URL``);
            the default is a folder under ``home``.
        worker_id: the name a worker is known by (``DSTACK_WORKER_ID``, default: the host name).
        worker_slots: how many tasks a worker runs at once (``DSTACK_WORKER_SLOTS``).
        worker_host: the address other jobs reach this worker's jobs at (``DSTACK_WORKER_HOST``,
            default: the host name).
        network: ``host`` or ``bridge`` for job containers (``DSTACK_NETWORK``); empty means
            bridge when the Docker engine has a bridge network, else host.
        worker_resources: what a worker offers, declared or restricted (``DSTACK_WORKER_RESOURCES``,
            YAML such as ``{cpu: 8, memory: 64GB, gpu: 2}``); empty: what the machine has.
        heartbeat_interval: seconds between two reports of a worker (``DSTACK_HEARTBEAT_INTERVAL``).
        worker_timeout: seconds after its last report that the scheduler counts a worker as gone
            (``DSTACK_WORKER_TIMEOUT``).
        drain_period: seconds a worker told to stop (SIGTERM) lets its running tasks go on before
            it stops them (``DSTACK_DRAIN_PERIOD``).
    """

    home: Path = field(default_factory=lambda: Path(defaults.HOME).expanduser())
    broker_url: str = defaults.BROKER_URL
    storage_url: str = ""
    worker_id: str = ""
    worker_slots: int = defaults.WORKER_SLOTS
    worker_host: str = ""
    network: str = ""
    worker_resources: Dict[str, Any] = field(default_factory=dict)
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    worker_timeout: float = defaults.WORKER_TIMEOUT
    drain_period: float = defaults.DRAIN_PERIOD

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if not self.storage_url:
            object.__setattr__(self, "storage_url",
                               (self.home / defaults.LOCAL_STORAGE_DIR).as_uri())
        if not self.worker_id:
            object.__setattr__(self, "worker_id", socket.gethostname())
        if not self.worker_host:
            object.__setattr__(self, "worker_host", socket.gethostname())
        if self.network not in ("", "host", "bridge"):
            raise ConfigError(f"network must be 'host' or 'bridge', not {self.network!r}",
                              field="DSTACK_NETWORK")


def load_settings(environ: Optional[Mapping[str, str]] = None, **overrides: object) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``), the optional
    ``$DSTACK_HOME/config.yaml`` (environment wins over the file) and ``overrides`` (win over both).
    """
    environ = os.environ if environ is None else environ
    values: Dict[str, object] = {}
    home = Path(environ.get("DSTACK_HOME") or defaults.HOME).expanduser()
    config_file = home / "config.yaml"
    if config_file.is_file():
        values.update(_read_config_file(config_file))
    for var, name in ENV_VARS.items():
        if environ.get(var):
            values[name] = environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "worker_slots" in values:
        raw = values["worker_slots"]
        try:
            slots = int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            slots = 0
        if slots < 1:
            raise ConfigError(f"worker slots must be a whole number of at least 1, not {raw!r}",
                              field="DSTACK_WORKER_SLOTS")
        values["worker_slots"] = slots
    for name in ("heartbeat_interval", "worker_timeout", "drain_period"):
        if name in values:
            values[name] = _seconds(values[name], name)
    if isinstance(values.get("worker_resources"), str):
        values["worker_resources"] = yaml_mapping(str(values["worker_resources"]), "DSTACK_WORKER_RESOURCES")
    return Settings(**values)  # type: ignore[arg-type]


def yaml_mapping(text: str, field: str) -> Dict[str, Any]:
    """A YAML mapping given as text (an environment variable, an option).

    Raises:
        ConfigError: not YAML, or not a mapping; the message names ``field``.
    """
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", field=field) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping such as '{{cpu: 8, memory: 64GB, gpu: 2}}', not {text!r}",
                          field=field)
    return data


def _seconds(raw: object, name: str) -> float:
    try:
        seconds = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{name.replace('_', ' ')} must be a positive number of seconds, not {raw!r}",
                          field="DSTACK_" + name.upper())
    return seconds


def _read_config_file(path: Path) -> Dict[str, object]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = e.problem_mark.line + 1 if getattr(e, "problem_mark", None) else None
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", file=str(path), line=line) from None
    known = set(ENV_VARS.values())
    if not isinstance(data, dict) or set(data) - known:
        raise ConfigError(f"expected a mapping with keys among {', '.join(sorted(known))}", file=str(path))
    return data


def with_overrides(settings: Settings, **changes: object) -> Settings:
    """A copy of ``settings`` with ``changes`` applied."""
    return replace(settings, **changes)  # type: ignore[arg-type]
