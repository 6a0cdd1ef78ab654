"""The one exception tree of dstack.

Driver errors (pika, botocore, docker) are converted where they enter, so a user
sees one of these, never a library traceback.
"""
from __future__ import annotations

from typing import Optional


class DstackError(Exception):
    """Root of every error dstack raises on purpose."""


class _Located(Exception):
    """A message about a place in a project or configuration file.

    Args:
        message: what is wrong and what to do about it.
        file: the file, as the user knows it (e.g. ``.dstack/workflows.yaml``).
        line: the 1-based line the problem is on, when known.
        field: the dotted path of the field, when known (``workflows[0].provider``).
    """

    def __init__(self, message: str, *, file: Optional[str] = None, line: Optional[int] = None,
                 field: Optional[str] = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        if self.field:
            where = f"{where} ({self.field})" if where else self.field
        return f"{where}: {self.message}" if where else self.message


class ConfigError(_Located, DstackError):
    """A project or configuration file is wrong (see :class:`_Located` for the arguments)."""


class ConfigWarning(_Located, UserWarning):
    """A project file was read in a way its author may not expect (YAML's ``3.10`` is 3.1, taken as
    3.10); the run goes on. Issued with :func:`warnings.warn`; the CLI prints it as a ``warning:``
    line. Its arguments are :class:`ConfigError`'s, and it is written the same way."""


class ServiceUnavailable(DstackError):
    """A service dstack depends on cannot be reached."""


class BrokerUnavailable(ServiceUnavailable):
    """RabbitMQ cannot be reached at the configured URL."""


class SchedulerUnavailable(ServiceUnavailable):
    """The broker answers but no scheduler replies to requests."""


class StorageError(DstackError):
    """Storage failed or cannot be reached."""


class ObjectNotFound(StorageError):
    """The storage has no object at the key."""


class UnsafePath(DstackError):
    """A path leaves the folder it must stay in (``../x``, an absolute path)."""


class MessageError(DstackError):
    """A message is malformed, too large or of an unknown version."""


class RequestRejected(DstackError):
    """The scheduler refused a request (unknown run, bad submission...)."""


class RunNameTaken(RequestRejected):
    """A submission named a run that exists already (and is not the same submission sent again): the CLI
    picks another name."""


class NotAllowed(RequestRejected):
    """The caller may not do what it asked: the run is someone else's, the request is for admins or workers, or
    the broker account is no dstack user."""


#: Refusals the scheduler's replies name (``"kind"``), so that the caller gets the same class.
REJECTIONS: dict[str, type[RequestRejected]] = {cls.__name__: cls for cls in (RunNameTaken, NotAllowed)}


class RuntimeErrorInContainer(DstackError):
    """The container runtime could not start or manage a container."""


class ImageNotFound(RuntimeErrorInContainer):
    """The image a task asks for is not present on the worker, or its registry has no such image."""


class PullFailed(RuntimeErrorInContainer):
    """Pulling an image failed (its subclasses say why)."""


class RegistryUnauthorized(PullFailed):
    """The registry refused the credentials, or asked for some and got none."""


class RegistryUnreachable(PullFailed):
    """The registry could not be reached, for longer than the worker retries."""


class DiskFull(PullFailed):
    """The image does not fit on the worker's disk."""


class ImageNotInRegistry(PullFailed, ImageNotFound):
    """The registry has no such image (repository or tag)."""
