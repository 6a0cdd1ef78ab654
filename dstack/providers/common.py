"""What the built-in providers share: the common parameters, the images of Python versions, and
reading ``dstack run NAME ARGS`` into the parameters a workflow would have.

A built-in provider subclasses :class:`BuiltinProvider`, names itself, adds its own command-line
arguments and turns them into parameters; its ``schema.yaml`` checks the parameters, wherever they
came from.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from functools import cached_property
from typing import Any, ClassVar, NoReturn, Optional, TypeVar, Union

from dstack import Job, Provider, ResourceRequirements
from dstack.sdk.resources import current_resources
from dstack.sdk.schemas import load_schema

#: The Python version of jobs whose workflow names none.
DEFAULT_PYTHON_VERSION = "3.11"
#: The annotation of a parameter that is an older name of another: ``script: {x-alias-of: file, ...}``.
ALIAS_OF = "x-alias-of"


class ParameterError(ValueError):
    """The parameters say something two ways that disagree; ``field`` is the one to look at."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def aliases(schema: dict[str, Any]) -> dict[str, str]:
    """The older names of a provider's parameters and the parameter each stands for (``{"script": "file"}``),
    from the ``x-alias-of`` annotations of its schema."""
    return {key: prop[ALIAS_OF] for key, prop in (schema.get("properties") or {}).items()
            if isinstance(prop, dict) and isinstance(prop.get(ALIAS_OF), str)}


def current_parameters(schema: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``data`` (parameters that fit ``schema``) in today's spelling, and notes about how it was read.

    Older names become the parameter they stand for (``python_script`` -> ``file``); a Python
    ``version`` written as a YAML number becomes text (``3.9`` -> ``"3.9"``, and YAML's ``3.1``, an
    unquoted ``3.10``, -> ``"3.10"`` with a note, since no Python 3.1 image exists); ``resources`` in
    early dstack's ``MODEL/gpu: N`` becomes ``gpu: {count: N, name: MODEL}``. Each note is
    ``(parameter as written, what was done)``.

    Raises:
        ParameterError: a parameter is given by two names with different values, or the GPUs twice.
    """
    renamed = aliases(schema)
    current: dict[str, Any] = {}
    written: dict[str, str] = {}  # current name -> the name it was written with
    notes: list[tuple[str, str]] = []
    for key, value in data.items():
        name = renamed.get(key, key)
        if name == "version":
            value, note = python_version(value)
            if note:
                notes.append((key, note))
        if name in current and current[name] != value:
            first = written[name]
            raise ParameterError(key, f"'{first}' and '{key}' both give the {name} ({current[name]!r} and "
                                      f"{value!r}); keep one: '{name}'")
        current.setdefault(name, value)
        written.setdefault(name, key)
    if "resources" in current:
        try:
            current["resources"] = current_resources(current["resources"])
        except ValueError as e:
            raise ParameterError("resources", str(e).partition(": ")[2]) from None
    return current, notes


def python_version(value: Any) -> tuple[Any, Optional[str]]:
    """A Python version as text, and a note when it was not read as written: YAML reads ``3.9`` as a
    number (taken as ``"3.9"``) and an unquoted ``3.10`` as 3.1 (taken as ``"3.10"``, with a note)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value, None
    if value == 3.1:
        return "3.10", "3.1 read as 3.10; quote it: '3.10'"
    return repr(value), None


def python_image(version: Optional[str]) -> str:
    """The image of a Python version: ``python:3.11``."""
    return f"python:{version or DEFAULT_PYTHON_VERSION}"


def script_command(program: list[str], args: Union[str, list[Any], None]) -> str:
    """``program`` (quoted) followed by ``args``: a string goes to the shell as it is (it splits it,
    variables expand), each item of a list is one argument as written."""
    if args is None:
        args = []
    if isinstance(args, str):
        return " ".join([shlex.join(program)] + ([args] if args.strip() else []))
    return shlex.join(program + [_text(a) for a in args])


def job_ports(ports: Union[int, list[int], None]) -> list[int]:
    """The ``ports`` of a :class:`dstack.Job` from a ``ports`` parameter: a count asks for any free ports
    (``2`` -> ``[0, 0]``), a list names them (``[8080]``)."""
    return list(ports) if isinstance(ports, list) else [0] * (ports or 0)


def pip_install(requirements: Optional[str]) -> list[str]:
    """The command installing a requirements file, if there is one."""
    return [f"pip install --disable-pip-version-check -r {shlex.quote(requirements)}"] if requirements else []


def _text(value: Any) -> str:
    """A YAML scalar as a command or an environment sees it (``true``, not ``True``)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


_P = TypeVar("_P", bound=argparse.ArgumentParser)

#: The file name of a built-in provider's schema as JSON, with its references inlined (see ``_schema_file``).
COMPILED_SCHEMA = "schema.json"
#: Each provider's schema, loaded once.
_SCHEMAS: dict[type, dict[str, Any]] = {}


class ArgumentError(ValueError):
    """``dstack run NAME ARGS`` was given arguments the provider does not take."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # raise, so that the CLI shows it as one clear error
        prefix = "the following arguments are required: "
        if message.startswith(prefix):  # arguments that take the rest of the line are never missing
            rest = {a.dest for a in self._actions if a.nargs == argparse.REMAINDER}
            message = prefix + ", ".join(n for n in message[len(prefix):].split(", ") if n not in rest)
        usage = self.format_usage().rstrip()
        raise ArgumentError(f"{message}\n{usage}" if usage else message)


class _OptionsParser(_Parser):
    """A provider's parser without its positional arguments: the options given after a workflow's name
    (``dstack run train --gpu 2``), each overriding the workflow's parameter. Remembers the provider's
    own options (:meth:`BuiltinProvider.add_arguments` adds them here; the common ones go to a group)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog=prog, usage=argparse.SUPPRESS, add_help=False, allow_abbrev=False)
        self.own: list[argparse.Action] = []

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action:
        if name_or_flags and name_or_flags[0][:1] not in self.prefix_chars:
            return argparse.Action([], dest=name_or_flags[0])  # a positional argument: not an option
        kwargs.pop("required", None)  # the workflow has it already; an option only overrides it
        action = super().add_argument(*name_or_flags, **kwargs)
        self.own.append(action)
        return action


class BuiltinProvider(Provider):
    """A provider with the common parameters: ``environment``, ``working_dir``, ``artifacts``,
    ``before_run`` and ``resources``.

    The workflow is checked against the provider's schema as written (older names included);
    :attr:`data` and :attr:`resources` are its parameters in today's spelling
    (:func:`current_parameters`), as the CLI read them before submitting. They are read when
    first used, in :meth:`create_jobs`, so that a parameter given twice fails the provider with a
    message (:meth:`dstack.Provider.start` reports a ``ValueError`` of ``create_jobs``).
    """

    #: the provider's name, as in ``provider: NAME`` and ``dstack run NAME``
    name = ""
    #: what it does, in one line (``dstack run NAME -h``)
    summary = ""
    #: the parameter each of its options sets given after a workflow's name, where it is not the option's
    #: ``dest`` (``{"command": "commands"}``: ``dstack run WORKFLOW -c 'make'`` sets ``commands``)
    option_parameters: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        super().__init__(schema=self._schema_file())

    @cached_property
    def data(self) -> dict[str, Any]:
        """The workflow's parameters in today's spelling.

        Raises:
            ParameterError: a parameter is given twice, differently.
        """
        return current_parameters(self.schema(), self.workflow.data)[0]

    @cached_property
    def resources(self) -> ResourceRequirements:
        return ResourceRequirements.from_dict(self.data.get("resources", {}))

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """The provider's schema (``schema.yaml`` beside its module), self-contained."""
        if cls not in _SCHEMAS:
            _SCHEMAS[cls] = load_schema(cls._schema_file())
        return _SCHEMAS[cls]

    @classmethod
    def _schema_file(cls) -> str:
        """``schema.yaml`` beside the provider's module, or the ``schema.json`` beside it: the same schema with
        its references inlined, which a worker's SDK bundle holds (``workers/sdk_bundle.py``) so that a
        provider reads it without parsing YAML."""
        folder = os.path.dirname(os.path.abspath(str(sys.modules[cls.__module__].__file__)))
        compiled = os.path.join(folder, COMPILED_SCHEMA)
        return compiled if os.path.isfile(compiled) else os.path.join(folder, "schema.yaml")

    def job(self, image: str, commands: list[str], **options: Any) -> Job:
        """A job running ``commands`` in ``image``, after ``before_run``, with the common parameters;
        ``options`` are more arguments of :class:`dstack.Job`."""
        environment = {str(k): _text(v) for k, v in self.data.get("environment", {}).items()}
        return Job(image=image, commands=list(self.data.get("before_run", [])) + commands, environment=environment,
                   working_dir=self.data.get("working_dir"), artifacts=self.data.get("artifacts", []),
                   resources=self.resources, **options)

    # ------------------------------------------------------------- dstack run NAME ARGS

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the provider's own command-line arguments (its positional ones last)."""

    @classmethod
    def parameters(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The provider's own parameters from its parsed command-line arguments."""
        return {}

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The parser of ``dstack run NAME ARGS``: the provider's arguments, then the common options."""
        parser = _Parser(prog=f"dstack run {cls.name}", description=cls.summary,
                         epilog="Options go before the first positional argument; what follows the "
                                "script or command is passed on to it.")
        cls.add_arguments(parser)
        return cls._add_common_options(parser)

    @classmethod
    def options_parser(cls, prog: str) -> _OptionsParser:
        """The parser of the options given after the name of a workflow of this provider (``dstack run
        WORKFLOW --gpu 2``): the provider's own options and the common ones, without its positional
        arguments, help or abbreviations; ``prog`` is the command it is shown for."""
        parser = _OptionsParser(prog)
        cls.add_arguments(parser)
        cls._add_common_options(parser)
        return parser

    @classmethod
    def _add_common_options(cls, parser: _P) -> _P:
        common = parser.add_argument_group("common options")
        common.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                            help="an environment variable of the job (repeatable)")
        common.add_argument("-a", "--artifact", action="append", default=[], metavar="PATH",
                            help="a folder synced to storage while the job runs and when it ends, relative to "
                                 "the working directory (repeatable)")
        common.add_argument("-w", "--working-dir", metavar="DIR",
                            help="the folder the commands run in, relative to the project root "
                                 "(default: the current folder)")
        common.add_argument("--before-run", action="append", default=[], metavar="COMMAND",
                            help="a shell command run first (repeatable)")
        common.add_argument("--cpu", type=float, help="CPUs the job needs")
        common.add_argument("--memory", metavar="SIZE", help="memory the job needs, e.g. 16GB")
        common.add_argument("--gpu", type=int, metavar="COUNT", help="GPUs the job needs")
        common.add_argument("--gpu-name", metavar="MODEL", help="the GPU model, e.g. A100")
        common.add_argument("--gpu-memory", metavar="SIZE", help="memory of each GPU, e.g. 40GB")
        common.add_argument("--shm-size", metavar="SIZE", help="size of /dev/shm, e.g. 1GB")
        return parser

    @classmethod
    def parameters_from_args(cls, argv: list[str]) -> dict[str, Any]:
        """The workflow parameters ``dstack run NAME ARGV`` stands for.

        Raises:
            ArgumentError: the arguments are wrong; the message ends with the usage.
        """
        args = cls.parser().parse_args(argv)
        data = common_parameters(args)
        data.update(cls.parameters(args))
        return data

    @classmethod
    def parameters_from_options(cls, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The parameters the options ``argv``, given after a workflow's name, stand for (those that
        were given only), and the arguments of ``argv`` that are none of the options, in order.

        Raises:
            ArgumentError: an option's value is wrong or missing (``--gpu two``, ``--memory`` last).
        """
        parser = cls.options_parser(f"dstack run {cls.name}")
        args, unknown = parser.parse_known_args(argv)
        data = common_parameters(args)
        for action in parser.own:
            value = getattr(args, action.dest)
            if value is not None and value != action.default:
                data[cls.option_parameters.get(action.dest, action.dest)] = value
        return data, unknown


def common_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The common parameters (``environment``, ``artifacts``, ``working_dir``, ``before_run``,
    ``resources``) whose options were given in ``args``.

    Raises:
        ArgumentError: an ``--env`` is not ``NAME=VALUE``.
    """
    data: dict[str, Any] = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ArgumentError(f"--env {item!r}: write NAME=VALUE")
        data.setdefault("environment", {})[name] = value
    data.update(nonempty(args, artifacts="artifact", working_dir="working_dir", before_run="before_run"))
    resources = given(args, cpu="cpu", memory="memory", shm_size="shm_size")
    gpu = given(args, count="gpu", name="gpu_name", memory="gpu_memory")
    if gpu:
        resources["gpu"] = gpu if set(gpu) != {"count"} else gpu["count"]
    if resources:
        data["resources"] = resources
    return data


def given(args: argparse.Namespace, /, **options: str) -> dict[str, Any]:
    """The parameters whose options were given: ``given(args, count="gpu")`` is ``{"count": args.gpu}``
    unless ``args.gpu`` is ``None``."""
    return {name: getattr(args, dest) for name, dest in options.items() if getattr(args, dest) is not None}


def nonempty(args: argparse.Namespace, /, **options: str) -> dict[str, Any]:
    """The parameters whose options have a value that is not empty: ``nonempty(args, artifacts="artifact")``
    is ``{"artifacts": args.artifact}`` unless no ``-a`` was given (a repeatable option's ``[]``)."""
    return {name: getattr(args, dest) for name, dest in options.items() if getattr(args, dest)}


def add_script_arguments(parser: argparse.ArgumentParser) -> None:
    """``-r REQUIREMENTS``, ``--version VERSION``, then ``FILE [ARGS...]``: a Python script."""
    parser.add_argument("-r", "--requirements", metavar="FILE", help="a requirements file installed first")
    parser.add_argument("--version", metavar="VERSION", help=f"the Python version (default {DEFAULT_PYTHON_VERSION})")
    parser.add_argument("file", help="the script, relative to the working directory")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")


def script_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters read by :func:`add_script_arguments`."""
    return {"file": args.file, **nonempty(args, args="args", requirements="requirements", version="version")}
