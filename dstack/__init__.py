"""dstack: workflows in YAML, providers in Python, jobs in containers.

This package is the CLI and the shared core; importing it stays cheap and standard-library
only, because it is also what ``from dstack import Provider, Job`` reaches inside provider
containers. The SDK's names are imported when first used (PEP 562), so ``import dstack`` loads nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["App", "GPU", "Job", "Provider", "ResourceRequirements", "Retry", "Workflow",
           "Gpu", "GpuResourceRequirements", "Resources"]  # early dstack's names

if TYPE_CHECKING:
    from dstack.sdk import (
        GPU,
        App,
        Gpu,
        GpuResourceRequirements,
        Job,
        Provider,
        ResourceRequirements,
        Resources,
        Retry,
        Workflow,
    )


def __getattr__(name: str) -> Any:
    """The SDK's names (``from dstack import Provider, Job``), imported when first asked for, so that
    ``import dstack`` (and ``dstack --version``) does not load the SDK (PEP 562)."""
    if name in __all__:
        import dstack.sdk

        value = getattr(dstack.sdk, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
