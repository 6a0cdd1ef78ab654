"""dstack: workflows in YAML, providers in Python, jobs in containers.

This package is the CLI and the shared core; importing it stays cheap and standard-library
only, because it is also what ``from dstack import Provider, Job`` reaches inside provider
containers.
"""
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

__all__ = ["App", "GPU", "Job", "Provider", "ResourceRequirements", "Retry", "Workflow",
           "Gpu", "GpuResourceRequirements", "Resources"]  # early dstack's names
__version__ = "0.1.0"
