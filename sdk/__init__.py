"""The dstack provider SDK: ``from dstack import Provider, Job``.

Standard library only: it runs inside any image with Python 3.8 or newer.
"""
from sdk.app import App
from sdk.job import Job
from sdk.provider import Provider
from sdk.resources import GPU, ResourceRequirements
from sdk.retry import Retry
from sdk.workflow import Workflow

__all__ = ["App", "GPU", "Job", "Provider", "ResourceRequirements", "Retry", "Workflow"]
