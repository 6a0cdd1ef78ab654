"""The dstack provider SDK: ``from dstack import Provider, Job``.

Standard library only: it runs inside any image with Python 3.8 or newer.
"""
from .app import App
from .compat import Gpu, GpuResourceRequirements, Resources
from .job import Job
from .provider import Provider
from .resources import GPU, ResourceRequirements
from .retry import Retry
from .workflow import Workflow

__all__ = ["App", "GPU", "Job", "Provider", "ResourceRequirements", "Retry", "Workflow",
           # early dstack's names (see .compat)
           "Gpu", "GpuResourceRequirements", "Resources"]
