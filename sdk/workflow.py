"""The workflow a provider is run for, as dstack hands it to the provider's container."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

#: Environment variable naming the JSON file that describes the workflow.
WORKFLOW_FILE_ENV = "DSTACK_WORKFLOW_FILE"


class Workflow:
    """A workflow: its name, its provider's name, the run it belongs to, its own parameters, and the
    arguments ``dstack run`` gave its provider.

    ``data`` holds only the workflow's own keys (``url``, ``output``, ...); system keys such as
    ``name`` and ``provider`` are attributes, so a schema with ``additionalProperties: false``
    can describe ``data`` exactly. ``provider_args`` are the arguments of ``dstack run NAME ARGS``
    that are no variable, in order (``["data.csv", "--epochs", "3"]``; empty when none were given).
    """

    def __init__(self, name: str, provider: str, run_name: str, data: Dict[str, Any],
                 provider_args: Optional[List[str]] = None) -> None:
        self.name = name
        self.provider = provider
        self.run_name = run_name
        self.data = data
        self.provider_args: List[str] = list(provider_args or [])

    @classmethod
    def from_environment(cls) -> Workflow:
        """Read the workflow file dstack put in the container.

        Raises:
            RuntimeError: not started by dstack (no ``DSTACK_WORKFLOW_FILE``).
        """
        path = os.environ.get(WORKFLOW_FILE_ENV)
        if not path:
            raise RuntimeError(f"{WORKFLOW_FILE_ENV} is not set: providers are started by `dstack run`")
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return cls(name=raw["name"], provider=raw["provider"], run_name=raw["run_name"], data=raw["data"],
                   provider_args=[str(arg) for arg in raw.get("provider_args") or []])

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, provider={self.provider!r}, run_name={self.run_name!r})"
