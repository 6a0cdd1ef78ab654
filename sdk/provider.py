"""The :class:`Provider` base class: turns a workflow into jobs.

A provider runs in its own container, started by a dstack worker. It reads the workflow
(``self.workflow``) and the arguments ``dstack run`` gave it (``self.provider_args``),
optionally checks the workflow's parameters against a JSON Schema written in YAML, and returns
jobs from :meth:`Provider.create_jobs`; :meth:`Provider.start` hands them to dstack.
Only the standard library is needed.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, List, NoReturn, Optional

from .job import Job, jobs_to_dicts
from .resources import ResourceRequirements
from .schemas import load_schema
from .validation import SchemaError, validate
from .workflow import Workflow

#: Environment variable naming the folder where the provider writes its result.
OUTPUT_DIR_ENV = "DSTACK_PROVIDER_OUTPUT"
#: Environment variable naming the project's root folder in the provider's container.
PROJECT_DIR_ENV = "DSTACK_PROJECT_DIR"
#: Exit code of a provider whose input or output dstack refused.
INVALID_EXIT_CODE = 2


class Provider:
    """Base class of every provider.

    Args:
        schema: path of a JSON Schema (YAML or JSON) for ``self.workflow.data``. A relative
            path is resolved next to the file of the provider's module; when no such file is
            there, in the provider's working folder, then in the project's root
            (``DSTACK_PROJECT_DIR``), as early dstack's ``schema="providers/x/schema.yaml"`` was
            written. When the data breaks the schema, the run fails with the field and the rule,
            and no job is created.

    Attributes:
        workflow: the workflow the provider is run for (:class:`~dstack.sdk.workflow.Workflow`).
        provider_args: the arguments of ``dstack run NAME ARGS`` (``NAME`` a workflow of this provider, or
            this provider of ``.dstack/providers.yaml``) that are no variable of the run, in order: for
            ``dstack run NAME data.csv --epochs 3``, ``["data.csv", "--epochs", "3"]``; empty when none
            were given. Read them as you like, with :mod:`argparse` for example::

                parser = argparse.ArgumentParser(prog=f"dstack run {self.workflow.name}")
                parser.add_argument("--epochs", type=int, default=1)
                args = parser.parse_args(self.provider_args)
    """

    def __init__(self, schema: Optional[str] = None) -> None:
        self.workflow = Workflow.from_environment()
        self.provider_args: List[str] = list(self.workflow.provider_args)
        if schema is not None:
            self._check_schema(self._resolve(schema))

    def create_jobs(self) -> List[Job]:
        """Return the jobs of this workflow. Providers must override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement create_jobs()")

    def start(self) -> None:
        """Create the jobs and hand them to dstack (all of them, or none on error)."""
        try:
            jobs = self.create_jobs()
        except ValueError as e:  # the SDK's classes say what is wrong with what they were given
            self._fail(f"workflow '{self.workflow.name}': {e}")
        if not isinstance(jobs, list) or not jobs or not all(isinstance(j, Job) for j in jobs):
            self._fail("create_jobs() must return a non-empty list of dstack.Job"
                       f" (got {jobs!r:.200})")
        try:
            payload = jobs_to_dicts(jobs)
        except ValueError as e:
            self._fail(str(e))
        self._write("jobs.json", {"jobs": payload})
        print(f"dstack: {self.workflow.name}: created {len(jobs)} job(s)", flush=True)

    def _resources(self) -> Optional[ResourceRequirements]:
        """The workflow's ``resources`` parameter as :class:`ResourceRequirements` (``None`` when it
        has none), as early dstack's providers read it; a wrong value ends the provider with the reason."""
        data = self.workflow.data.get("resources")
        if not data:
            return None
        try:
            return ResourceRequirements.from_dict(data, f"workflow '{self.workflow.name}': resources")
        except ValueError as e:
            self._fail(str(e))

    # --------------------------------------------------------------- internals

    def _resolve(self, schema: str) -> str:
        """The schema's file: ``schema`` itself when absolute, else the first that exists of it
        next to the provider's module, in the working folder and in ``DSTACK_PROJECT_DIR``
        (the first of them when none does, so that the error names where it was looked for)."""
        if os.path.isabs(schema):
            return schema
        module = sys.modules.get(type(self).__module__)
        module_file = getattr(module, "__file__", None)
        bases = [os.path.dirname(os.path.abspath(module_file))] if module_file else []
        bases += [os.getcwd(), os.environ.get(PROJECT_DIR_ENV, "")]
        candidates = [os.path.join(base, schema) for base in bases if base]
        return next((path for path in candidates if os.path.isfile(path)), candidates[0])

    def _check_schema(self, path: str) -> None:
        shown = os.path.relpath(path)
        try:
            schema = load_schema(path)
        except (OSError, ValueError) as e:
            self._fail(f"cannot read the provider's schema {shown}: {e}")
        try:
            validate(self.workflow.data, schema)
        except SchemaError as e:
            if not e.violations:  # the schema itself is refused (check_schema), not the workflow
                self._fail(f"the provider's schema {shown} is invalid: {e}")
            self._fail(f"workflow '{self.workflow.name}' does not match the schema of provider "
                       f"'{self.workflow.provider}' ({shown}): {e}")

    def _write(self, name: str, content: Any) -> None:
        folder = os.environ.get(OUTPUT_DIR_ENV)
        if not folder:
            json.dump(content, sys.stdout, indent=2)
            return
        tmp = os.path.join(folder, f".{name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f)
        os.replace(tmp, os.path.join(folder, name))

    def _fail(self, reason: str) -> NoReturn:
        print(f"dstack: {reason}", file=sys.stderr, flush=True)
        self._write("error.json", {"reason": reason})
        raise SystemExit(INVALID_EXIT_CODE)

