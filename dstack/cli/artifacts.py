"""``dstack artifacts``: list and download the artifacts of a run, straight from storage."""
from __future__ import annotations

from pathlib import Path

import click

from dstack.cli.context import Context, err, pass_context
from dstack.errors import DstackError
from dstack.messages import ArtifactManifest
from dstack.names import artifact_key, manifests_prefix
from dstack.snapshot import safe_join
from dstack.storage import Storage


@click.group()
def artifacts() -> None:
    """List and download the artifacts of a run (straight from storage)."""


@artifacts.command("list")
@click.argument("run_name")
@pass_context
def artifacts_list(context: Context, run_name: str) -> None:
    """List the artifact files of RUN_NAME: job, path, size."""
    manifests = _manifests(context.storage, run_name)
    for manifest in manifests:
        for entry in manifest.files:
            click.echo(f"{manifest.job_id}\t{entry.path}\t{entry.size}")


@artifacts.command("download")
@click.argument("run_name")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to download into, as OUTPUT/JOB_ID/PATH.")
@pass_context
def artifacts_download(context: Context, run_name: str, output: Path) -> None:
    """Download the artifacts of RUN_NAME into OUTPUT/JOB_ID/PATH (streaming)."""
    count = 0
    for manifest in _manifests(context.storage, run_name):
        folder = safe_join(output.resolve(), manifest.job_id)
        for entry in manifest.files:
            context.storage.get_file(artifact_key(run_name, manifest.job_id, entry.path),
                                     safe_join(folder, entry.path))
            count += 1
    err.print(f"{count} file(s) downloaded into {output}")


def _manifests(storage: Storage, run_name: str) -> list[ArtifactManifest]:
    manifests = [ArtifactManifest.from_json(storage.get_bytes(info.key))
                 for info in storage.list(manifests_prefix(run_name))]
    if not manifests:
        raise DstackError(f"no artifacts stored for run '{run_name}' in {storage.url}")
    return manifests
