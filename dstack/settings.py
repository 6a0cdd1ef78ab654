"""Configuration, read once from the environment (and optionally ``$DSTACK_HOME/config.yaml``)
and passed down explicitly. No other module reads the environment.
"""
from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from dstack import defaults
from dstack.errors import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Environment variables and the settings field each sets.
ENV_VARS = {
    "DSTACK_HOME": "home",
    "DSTACK_BROKER_URL": "broker_url",
    "DSTACK_BROKER_ADMIN_URL": "broker_admin_url",
    "DSTACK_STORAGE_URL": "storage_url",
    "DSTACK_WORKER_ID": "worker_id",
    "DSTACK_WORKER_SLOTS": "worker_slots",
    "DSTACK_WORKER_HOST": "worker_host",
    "DSTACK_NETWORK": "network",
    "DSTACK_WORKER_RESOURCES": "worker_resources",
    "DSTACK_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "DSTACK_WORKER_TIMEOUT": "worker_timeout",
    "DSTACK_DRAIN_PERIOD": "drain_period",
    "DSTACK_ARTIFACT_SYNC_INTERVAL": "artifact_sync_interval",
    "DSTACK_CONTAINER_ENV": "container_env",
    "DSTACK_CONTAINER_MOUNTS": "container_mounts",
    "DSTACK_PULL_POLICY": "pull_policy",
    "DSTACK_REGISTRY_AUTH": "registry_auth",
    "DSTACK_PULL_RETRY_TIMEOUT": "pull_retry_timeout",
    "DSTACK_IMAGE_MAX_AGE": "image_max_age",
    "DSTACK_IMAGE_MIN_FREE": "image_min_free_mib",
    "DSTACK_SECRETS_KEY": "secrets_key",
    "DSTACK_VISIBILITY": "visibility",
}

#: Whose runs a user sees (``DSTACK_VISIBILITY``, the scheduler's): everyone's, or their own (admins see all).
VISIBILITIES = ("all", "own")

#: The pull policies of a worker (``DSTACK_PULL_POLICY``) and of a job (``pull_policy``).
PULL_POLICIES = ("if-not-present", "always", "never")


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a dstack process.

    Attributes:
        home: local state folder (``DSTACK_HOME``).
        broker_url: AMQP URL of RabbitMQ (``DSTACK_BROKER_URL``).
        broker_admin_url: the URL of RabbitMQ's management API with a RabbitMQ administrator's credentials, which
            ``dstack users add`` and ``remove`` make and delete broker accounts with (``DSTACK_BROKER_ADMIN_URL``,
            such as ``http://admin:PASSWORD@rabbit:15672``); empty: port 15672 of the broker's host, with the
            credentials of ``broker_url``.
        storage_url: ``file:///path`` or ``s3://bucket/prefix`` (``DSTACK_STORAGE_URL``);
            the default is a folder under ``home``.
        storage_given: whether ``storage_url`` was set; a CLI without it asks the scheduler where storage is,
            and reaches S3 through presigned URLs (no credentials of its own).
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
        artifact_sync_interval: seconds between two scans of a running job's artifact folders by its worker;
            a new or changed file is uploaded once it has not changed for this long, and every file at the
            job's end (``DSTACK_ARTIFACT_SYNC_INTERVAL``).
        container_env: environment variables a worker gives every container it starts, below the
            job's own (``DSTACK_CONTAINER_ENV``, YAML such as ``{PIP_INDEX_URL: https://pypi.internal/simple}``).
        container_mounts: host folders a worker mounts into every container it starts
            (``DSTACK_CONTAINER_MOUNTS``, YAML such as ``[/srv/wheels:/wheels:ro, /data/cache:/cache]``),
            as ``(host path, container path, read_only)``.
        pull_policy: when a worker pulls a task's image, for jobs that do not say: ``if-not-present``,
            ``always`` or ``never`` (``DSTACK_PULL_POLICY``).
        registry_auth: a worker's credentials per registry host, over those of its user's Docker
            ``config.json`` (``DSTACK_REGISTRY_AUTH``, YAML such as
            ``{registry.example.com: {username: ci, password: s3cret}}``), as ``{host: (username, password)}``.
        pull_retry_timeout: seconds a worker retries a registry it cannot reach (``DSTACK_PULL_RETRY_TIMEOUT``).
        image_max_age: seconds an image a worker pulled may stay unused before the worker may remove it
            (``DSTACK_IMAGE_MAX_AGE``, e.g. ``7d``).
        image_min_free_mib: below this many MiB free on the disk of Docker's images, a worker removes the
            images it pulled that no job used for ``image_max_age`` (``DSTACK_IMAGE_MIN_FREE``, e.g. ``20GB``).
        secrets_key: the key that seals secrets in the scheduler's database (``DSTACK_SECRETS_KEY``); empty:
            the key file ``scheduler/secrets.key`` under ``home``, made at the scheduler's first start.
        visibility: whose runs a user sees (status, logs, artifacts): ``all`` (everyone's) or ``own`` (their own;
            admins see all) (``DSTACK_VISIBILITY``, the scheduler's).
    """

    home: Path = field(default_factory=lambda: Path(defaults.HOME).expanduser())
    broker_url: str = defaults.BROKER_URL
    broker_admin_url: str = ""
    storage_url: str = ""
    storage_given: bool = field(default=False, init=False, compare=False)
    worker_id: str = ""
    worker_slots: int = defaults.WORKER_SLOTS
    worker_host: str = ""
    network: str = ""
    worker_resources: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    worker_timeout: float = defaults.WORKER_TIMEOUT
    drain_period: float = defaults.DRAIN_PERIOD
    artifact_sync_interval: float = defaults.ARTIFACT_SYNC_INTERVAL
    container_env: dict[str, str] = field(default_factory=dict)
    container_mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    pull_policy: str = defaults.PULL_POLICY
    registry_auth: dict[str, tuple[str, str]] = field(default_factory=dict)
    pull_retry_timeout: float = defaults.PULL_RETRY_TIMEOUT
    image_max_age: float = defaults.IMAGE_MAX_AGE
    image_min_free_mib: int = defaults.IMAGE_MIN_FREE_MIB
    secrets_key: str = ""
    visibility: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        object.__setattr__(self, "storage_given", bool(self.storage_url))
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
        if self.visibility not in VISIBILITIES:
            raise ConfigError(f"visibility must be one of {', '.join(VISIBILITIES)}, not {self.visibility!r}",
                              field="DSTACK_VISIBILITY")
        if self.pull_policy not in PULL_POLICIES:
            raise ConfigError(f"the pull policy must be one of {', '.join(PULL_POLICIES)}, not {self.pull_policy!r}",
                              field="DSTACK_PULL_POLICY")


def load_settings(environ: Optional[Mapping[str, str]] = None, **overrides: object) -> Settings:
    """Build :class:`Settings` from ``environ`` (default: ``os.environ``), the optional
    ``$DSTACK_HOME/config.yaml`` (environment wins over the file) and ``overrides`` (win over both).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
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
    for name in ("heartbeat_interval", "worker_timeout", "drain_period", "artifact_sync_interval",
                 "pull_retry_timeout", "image_max_age"):
        if name in values:
            values[name] = _seconds(values[name], name)
    if "image_min_free_mib" in values:
        values["image_min_free_mib"] = _size_mib(values["image_min_free_mib"], "DSTACK_IMAGE_MIN_FREE")
    if "registry_auth" in values:
        values["registry_auth"] = registry_auth(values["registry_auth"])
    if isinstance(values.get("worker_resources"), str):
        values["worker_resources"] = yaml_mapping(str(values["worker_resources"]), "DSTACK_WORKER_RESOURCES")
    if "container_env" in values:
        values["container_env"] = container_env(values["container_env"])
    if "container_mounts" in values:
        values["container_mounts"] = container_mounts(values["container_mounts"])
    return Settings(**values)  # type: ignore[arg-type]


def container_env(raw: object) -> dict[str, str]:
    """``DSTACK_CONTAINER_ENV``: a mapping of names to values (YAML text, or already read).

    Raises:
        ConfigError: not a mapping of names to scalars.
    """
    data = yaml_mapping(raw, "DSTACK_CONTAINER_ENV", "{PIP_INDEX_URL: https://pypi.internal/simple}") \
        if isinstance(raw, str) else raw
    if not isinstance(data, dict) or not all(isinstance(v, (str, int, float, bool)) for v in data.values()):
        raise ConfigError("expected a mapping of variable names to values, such as "
                          "'{PIP_FIND_LINKS: /wheels, PIP_NO_INDEX: 1}'", field="DSTACK_CONTAINER_ENV")
    bad = [str(k) for k in data if not _ENV_NAME.match(str(k))]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not an environment variable name", field="DSTACK_CONTAINER_ENV")
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in data.items()}


def container_mounts(raw: object) -> list[tuple[str, str, bool]]:
    """``DSTACK_CONTAINER_MOUNTS``: ``HOST:CONTAINER[:ro|rw]`` entries (a YAML list, or comma-separated).

    Raises:
        ConfigError: an entry is not in that form, or a path is relative, or the container path
            is one of dstack's own (``/workflow``, ``/dstack``).
    """
    if isinstance(raw, str):
        import yaml  # here, not at the top: only some settings are YAML, and the CLI starts faster without it

        text = raw.strip()
        entries = yaml.safe_load(text) if text.startswith("[") else [e for e in text.split(",") if e.strip()]
    else:
        entries = raw
    if not isinstance(entries, list):
        raise ConfigError("expected a list such as '[/srv/wheels:/wheels:ro, /data/cache:/cache]'",
                          field="DSTACK_CONTAINER_MOUNTS")
    mounts = []
    for entry in entries:
        parts = str(entry).strip().split(":")
        mode = parts.pop() if len(parts) == 3 else "rw"
        if len(parts) != 2 or mode not in ("ro", "rw") or not all(p.startswith("/") for p in parts):
            raise ConfigError(f"{entry!r} is not HOST:CONTAINER or HOST:CONTAINER:ro with absolute paths",
                              field="DSTACK_CONTAINER_MOUNTS")
        inside = parts[1].rstrip("/") or "/"
        for reserved in (defaults.CONTAINER_WORKDIR, defaults.CONTAINER_DSTACK_DIR):
            if inside in ("/", reserved) or inside.startswith(reserved + "/"):
                raise ConfigError(f"{entry!r}: {inside} is dstack's own (the project is at "
                                  f"{defaults.CONTAINER_WORKDIR}, dstack's files at {defaults.CONTAINER_DSTACK_DIR}); "
                                  "mount somewhere else", field="DSTACK_CONTAINER_MOUNTS")
        mounts.append((parts[0], inside, mode == "ro"))
    return mounts


def yaml_mapping(text: str, field: str, example: str = "{cpu: 8, memory: 64GB, gpu: 2}") -> dict[str, Any]:
    """A YAML mapping given as text (an environment variable, an option).

    Raises:
        ConfigError: not YAML, or not a mapping; the message names ``field``.
    """
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", field=field) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping such as '{example}', not {text!r}", field=field)
    return data


def registry_auth(raw: object) -> dict[str, tuple[str, str]]:
    """``DSTACK_REGISTRY_AUTH``: credentials per registry host (YAML text, or already read).

    Raises:
        ConfigError: not a mapping of hosts to ``{username, password}``.
    """
    example = "{registry.example.com: {username: ci, password: s3cret}}"
    data = yaml_mapping(raw, "DSTACK_REGISTRY_AUTH", example) if isinstance(raw, str) else raw
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping such as '{example}'", field="DSTACK_REGISTRY_AUTH")
    auth = {}
    for host, entry in data.items():
        if not (isinstance(entry, dict) and set(entry) == {"username", "password"}
                and all(isinstance(v, (str, int)) for v in entry.values())):
            raise ConfigError(f"registry {host!r}: expected {{username: ..., password: ...}}",
                              field="DSTACK_REGISTRY_AUTH")
        auth[str(host)] = (str(entry["username"]), str(entry["password"]))
    return auth


def _seconds(raw: object, name: str) -> float:
    from dstack.sdk.retry import parse_duration_s

    field = "DSTACK_" + name.upper()
    try:
        seconds = parse_duration_s(raw, field) if isinstance(raw, str) else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = 0.0
    if not seconds or seconds <= 0:
        raise ConfigError(f"{name.replace('_', ' ')} must be a positive number of seconds (or 30s, 5m, 2h, 7d), "
                          f"not {raw!r}", field=field)
    return seconds


def _size_mib(raw: object, field: str) -> int:
    from dstack.sdk.resources import parse_size_mib

    try:
        mib = parse_size_mib(raw if isinstance(raw, (str, int, float)) else str(raw), "the size")
    except ValueError as e:
        raise ConfigError(str(e), field=field) from None
    return mib or 0


def _read_config_file(path: Path) -> dict[str, object]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # a MarkedYAMLError's; not every YAMLError has one
        line = mark.line + 1 if mark else None
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", file=str(path), line=line) from None
    known = set(ENV_VARS.values())
    if not isinstance(data, dict) or set(data) - known:
        raise ConfigError(f"expected a mapping with keys among {', '.join(sorted(known))}", file=str(path))
    return data


def with_overrides(settings: Settings, **changes: object) -> Settings:
    """A copy of ``settings`` with ``changes`` applied."""
    return replace(settings, **changes)  # type: ignore[arg-type]
