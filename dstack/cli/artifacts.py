"""``dstack artifacts``: list, download and upload artifacts, straight from storage.

What a workflow, a job or a tag names is resolved by the scheduler (``GetRuns``, ``GetTags``); the files and
their manifests are read from and written to storage by the CLI itself, streaming. An upload is stored first
and recorded second (``RecordUpload``), so nothing half stored is ever recorded.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from dstack.cli.context import Context, complete_run_names, err, out, pass_context
from dstack.cli.render import human_size
from dstack.errors import DstackError, ObjectNotFound, RequestRejected
from dstack.messages import (
    UPLOAD_WORKFLOW,
    ArtifactFile,
    ArtifactManifest,
    GetRuns,
    GetTags,
    RecordUpload,
    plain,
)
from dstack.names import (
    artifact_key,
    artifacts_manifest_key,
    is_valid_tag,
    job_id,
    manifests_prefix,
    new_run_name,
    run_prefix,
)
from dstack.snapshot import file_digest, safe_join
from dstack.storage import Storage
from dstack.views import RunView, TagView

if TYPE_CHECKING:
    from dstack.rpc import RpcClient

_TARGETS = """\b
RUN             every job of the run
RUN WORKFLOW    the jobs of one of its workflows
RUN JOB         one job (e.g. train.0)
:TAG            every job of the tagged run (an upload's files)"""

#: after a job whose stored artifacts are not final: it runs, or it ended without a final sync (its worker was lost)
_PARTIAL = " (partial)"


@click.group()
def artifacts() -> None:
    """List, download and upload artifacts (straight from storage)."""


# ----------------------------------------------------------------------------- what a target names


@dataclass
class Selection:
    """The run a target names and the manifests of the jobs it selects, in job order."""

    run_name: str
    manifests: list[ArtifactManifest]


def tagged_run(tags: Sequence[TagView], tag: str) -> str:
    """The run that ``tag`` names.

    Raises:
        DstackError: no such tag; the message lists the known ones.
    """
    for item in tags:
        if item.tag == tag:
            return item.run_name
    known = ", ".join(item.tag for item in tags) or "none"
    raise DstackError(f"no tag named '{tag}' (known tags: {known}); `dstack tags` lists them")


def select_jobs(run: RunView, which: str) -> list[str]:
    """The ids of the jobs of ``run`` that ``which`` names: a job id, else every job of a workflow.

    Raises:
        DstackError: ``which`` is neither; the message lists the run's workflows and jobs.
    """
    jobs = [job for job in run.jobs if job.kind == "job"]
    if any(job.job_id == which for job in jobs):
        return [which]
    chosen = [job.job_id for job in jobs if job.workflow == which]
    if chosen:
        return chosen
    workflows = [workflow.name for workflow in run.workflows]
    if which in workflows:
        raise DstackError(f"workflow '{which}' of run {run.run_name} has no jobs (yet)")
    raise DstackError(f"run {run.run_name} has no workflow or job named '{which}' (workflows: "
                      f"{', '.join(workflows) or 'none'}; jobs: {', '.join(j.job_id for j in jobs) or 'none'})")


def read_manifests(storage: Storage, run_name: str, job_ids: Optional[list[str]] = None) -> list[ArtifactManifest]:
    """The manifests of ``job_ids`` of ``run_name`` (every one stored when ``None``); a job that stored
    none (no artifacts, or not yet) is left out."""
    if job_ids is None:
        keys = [info.key for info in storage.list(manifests_prefix(run_name))]
        storage.will_read(keys)
        return [ArtifactManifest.from_json(storage.get_bytes(key)) for key in keys]
    storage.will_read(artifacts_manifest_key(run_name, job) for job in job_ids)
    manifests = []
    for job in job_ids:
        try:
            manifests.append(ArtifactManifest.from_json(storage.get_bytes(artifacts_manifest_key(run_name, job))))
        except ObjectNotFound:
            continue
    return manifests


def resolve(context: Context, target: str, which: Optional[str]) -> Selection:
    """The run and the manifests ``target`` (``RUN`` or ``:TAG``) and ``which`` (a workflow or a job) name.

    Raises:
        DstackError: an unknown run, tag, workflow or job; or nothing stored for what they name.
    """
    if target.startswith(":"):
        if which:
            raise click.UsageError(f"{target} names every job of the tagged run; give no WORKFLOW or JOB after it")
        with context.rpc() as rpc:
            run_name = tagged_run(rpc.call(GetTags()), target[1:])
        job_ids = None
    elif which:
        with context.rpc() as rpc:
            (run,) = rpc.call(GetRuns(run_name=target))
        run_name, job_ids = target, select_jobs(run, which)
    else:
        run_name, job_ids = target, None
    manifests = read_manifests(context.storage, run_name, job_ids)
    if not manifests and job_ids is None and not target.startswith(":"):
        with context.rpc() as rpc:  # nothing stored: is there such a run at all? (an unknown one is told so)
            rpc.call(GetRuns(run_name=run_name))
    if not manifests:
        named = f"{', '.join(job_ids)} of run {run_name}" if job_ids else f"run '{run_name}'"
        raise DstackError(f"no artifacts stored for {named} in {context.storage.url}")
    return Selection(run_name, manifests)


def is_current(path: Path, entry: ArtifactFile) -> bool:
    """Whether the file at ``path`` holds ``entry`` already: the same size and SHA-256. Without a checksum in
    the manifest (one written before they were kept) nothing says it does, so it is fetched again."""
    try:
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    return bool(entry.sha256) and file_digest(path) == entry.sha256


# ----------------------------------------------------------------------------- progress


@contextmanager
def transfer_progress(total: int) -> Iterator[Callable[[str, int], None]]:
    """A bar of the bytes moved (rich) when standard error is a terminal and there is something to move, nothing
    otherwise. Yields ``advance(name, n)``: ``n`` more bytes of the file ``name`` went over (safe from several
    threads)."""
    if not err.is_terminal or not total:
        yield lambda name, n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("", total=total)

        def advance(name: str, n: int) -> None:
            progress.update(task, advance=n, description=_shorten(name))
        yield advance


def _shorten(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


# ----------------------------------------------------------------------------- list


@artifacts.command("list", help=f"""List the artifact files of TARGET [WORKFLOW|JOB]: job, path, size.

{_TARGETS}

On a terminal sizes are human-readable; piped, each line is JOB, PATH and BYTES separated by tabs.
""")
@click.argument("target", shell_complete=complete_run_names)
@click.argument("which", required=False, metavar="[WORKFLOW|JOB]")
@click.option("--total", is_flag=True, help="The files and bytes of each job, and in all, instead of each file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (sizes in bytes).")
@pass_context
def artifacts_list(context: Context, target: str, which: Optional[str], total: bool, as_json: bool) -> None:
    selection = resolve(context, target, which)
    manifests = selection.manifests
    if as_json:
        click.echo(json.dumps(_listing(selection, total), indent=2))
    elif total:
        _print_totals(manifests)
    elif out.is_terminal:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column, justify in (("JOB", "left"), ("PATH", "left"), ("SIZE", "right")):
            table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for manifest in manifests:
            for entry in manifest.files:
                table.add_row(manifest.job_id + _PARTIAL * (not manifest.complete), entry.path,
                              human_size(entry.size))
        out.print(table)
    else:
        for manifest in manifests:
            for entry in manifest.files:
                click.echo(f"{manifest.job_id}\t{entry.path}\t{entry.size}")


def _listing(selection: Selection, total: bool) -> dict[str, Any]:
    """The JSON of ``dstack artifacts list``: each file, or (``total``) each job's files and bytes and the sums."""
    if not total:
        return {"run_name": selection.run_name,
                "files": [{"job_id": m.job_id, **plain(entry)} for m in selection.manifests for entry in m.files]}
    jobs = [{"job_id": m.job_id, "files": len(m.files), "size": sum(f.size for f in m.files), "complete": m.complete}
            for m in selection.manifests]
    return {"run_name": selection.run_name, "jobs": jobs, "files": sum(j["files"] for j in jobs),
            "size": sum(j["size"] for j in jobs)}


def _print_totals(manifests: list[ArtifactManifest]) -> None:
    rows = [(m.job_id, len(m.files), sum(f.size for f in m.files)) for m in manifests]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    if not out.is_terminal:  # the job id alone, as `list` prints it piped (`--json` says which are complete)
        for job, count, size in rows:
            click.echo(f"{job}\t{count}\t{size}")
        return
    partial = {m.job_id for m in manifests if not m.complete}
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("JOB")
    table.add_column("FILES", justify="right")
    table.add_column("SIZE", justify="right")
    for i, (job, count, size) in enumerate(rows):
        style = "bold" if i == len(rows) - 1 else None
        table.add_row(job + _PARTIAL * (job in partial and i < len(rows) - 1), str(count), human_size(size),
                      style=style)
    out.print(table)


# ----------------------------------------------------------------------------- download


@artifacts.command("download", help=f"""Download the artifacts of TARGET [WORKFLOW|JOB] into OUTPUT/JOB_ID/PATH.

{_TARGETS}

Files stream to disk (a progress bar on a terminal). It resumes: a file already there with the size and
SHA-256 the manifest records is skipped, so a second download fetches only what is missing or differs.
""")
@click.argument("target", shell_complete=complete_run_names)
@click.argument("which", required=False, metavar="[WORKFLOW|JOB]")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to download into, as OUTPUT/JOB_ID/PATH.")
@pass_context
def artifacts_download(context: Context, target: str, which: Optional[str], output: Path) -> None:
    selection = resolve(context, target, which)
    storage, root = context.storage, output.resolve()
    wanted, skipped = [], 0
    for manifest in selection.manifests:
        folder = safe_join(root, manifest.job_id)
        for entry in manifest.files:
            path = safe_join(folder, entry.path)
            if is_current(path, entry):
                skipped += 1
            else:
                wanted.append((artifact_key(selection.run_name, manifest.job_id, entry.path), path,
                               f"{manifest.job_id}/{entry.path}", entry.size))
    size = sum(item[3] for item in wanted)
    storage.will_read(item[0] for item in wanted)
    with transfer_progress(size) as advance:
        for key, path, name, _ in wanted:
            storage.get_file(key, path, lambda n, name=name: advance(name, n))  # type: ignore[misc]
    err.print(f"{len(wanted)} file(s) downloaded ({human_size(size)}), {skipped} already there and unchanged "
              f"(skipped), into {output}")


# ----------------------------------------------------------------------------- upload


@dataclass
class LocalFile:
    """A file to upload: where it is, and its path among the artifacts (relative, ``/``-separated)."""

    source: Path
    path: str


def local_files(paths: Sequence[Path], cwd: Path) -> list[LocalFile]:
    """The files below ``paths`` (folders walked, symbolic links to files followed), each with its path
    relative to ``cwd``; a path outside ``cwd`` is stored under its base name. Sorted by path.

    Raises:
        DstackError: a path does not exist, names nothing below it, or two files would get one path.
    """
    base = Path(os.path.abspath(cwd))
    found: dict[str, LocalFile] = {}
    for given in paths:
        source = Path(os.path.abspath(given))  # not resolved: a link inside the folder keeps its place
        if not source.exists():
            raise DstackError(f"{given} does not exist")
        if source == base or source in base.parents:
            prefix = ""
        elif base in source.parents:
            prefix = source.relative_to(base).as_posix()
        else:
            prefix = source.name
        if source.is_file():
            _add(found, LocalFile(source, prefix or source.name))
            continue
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                file = Path(folder) / name
                if file.is_file():
                    relative = file.relative_to(source).as_posix()
                    _add(found, LocalFile(file, f"{prefix}/{relative}" if prefix else relative))
    if not found:
        raise DstackError(f"no files in {', '.join(str(p) for p in paths)}: nothing to upload")
    return sorted(found.values(), key=lambda f: f.path)


def _add(found: dict[str, LocalFile], file: LocalFile) -> None:
    other = found.get(file.path)
    if other is not None and other.source != file.source:
        raise DstackError(f"{other.source} and {file.source} would both be stored as {file.path}; "
                          "upload them separately, or from another folder")
    found[file.path] = file


@artifacts.command("upload")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-t", "--tag", "tag", required=True, metavar="NAME",
              help="The name to store them under (a workflow uses them with `depends-on: [:NAME]`).")
@pass_context
def artifacts_upload(context: Context, paths: tuple[Path, ...], tag: str) -> None:
    """Store local folders or files PATHS as a tagged set of artifacts, for workflows to use with
    `depends-on: [:NAME]`: their jobs find them in their working directory at the same relative path.

    Paths are stored relative to the current folder (one outside it under its base name). Large files
    go in parts, with memory bounded; each file's SHA-256 is kept. An existing tag is refused before
    anything is uploaded. Prints the name of the run that holds them.
    """
    if not is_valid_tag(tag):
        raise DstackError(f"tag {tag!r} must be letters, digits, '.', '-' or '_'")
    files = local_files(paths, Path.cwd())
    storage = context.storage
    with context.rpc() as rpc:  # the broker and the tag first, before anything is uploaded
        for item in rpc.call(GetTags()):
            if item.tag == tag:
                raise DstackError(f"tag '{tag}' names run {item.run_name} already; choose another name, or "
                                  f"`dstack untag {tag}` first")
        run_name, upload_job = _free_run_name(rpc), job_id(UPLOAD_WORKFLOW, 0)
        size = sum(f.source.stat().st_size for f in files)
        stored = []
        with transfer_progress(size) as advance:
            for file in files:
                digest = file_digest(file.source)
                storage.put_file(artifact_key(run_name, upload_job, file.path), file.source,
                                 lambda n, name=file.path: advance(name, n))  # type: ignore[misc]
                stored.append(ArtifactFile(path=file.path, size=file.source.stat().st_size, sha256=digest))
        folders = sorted({f.path.split("/")[0] for f in files})
        manifest = ArtifactManifest(job_id=upload_job, artifacts=folders, files=stored)
        storage.put_bytes(artifacts_manifest_key(run_name, upload_job), manifest.to_json())  # last: complete
        try:
            view: TagView = rpc.call(RecordUpload(run_name=run_name, tag=tag, artifacts=folders,
                                                  size=sum(f.size for f in stored), submitted_at=time.time(),
                                                  project=str(Path.cwd())))
        except RequestRejected:
            storage.delete_prefix(run_prefix(run_name))  # recorded nowhere: leave nothing behind
            raise
    err.print(f"{len(stored)} file(s) ({human_size(view.size)}) stored as tag [bold]{tag}[/] (run {run_name}); "
              f"use them with `depends-on: [\":{tag}\"]`")
    out.print(run_name)


def _free_run_name(rpc: RpcClient) -> str:
    """A fresh run name that no run has yet: the files are stored under it before the run is recorded."""
    while True:
        name = new_run_name()
        try:
            rpc.call(GetRuns(run_name=name))
        except RequestRejected:  # no run of that name
            return name
