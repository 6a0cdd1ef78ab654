"""Artifacts on a worker: artifact folders uploaded at once, reading a job's manifest, and the
artifacts a task depends on put into its folder before it starts. (A running job's folders are kept
in storage as it goes by :mod:`dstack.workers.artifact_sync`.)

Files are stored one by one, streaming, under ``runs/RUN/artifacts/JOB/PATH``; the job's
:class:`~dstack.messages.ArtifactManifest` is stored after them, so every file a manifest lists is stored.
"""
from __future__ import annotations

import functools
from pathlib import Path

from dstack.errors import ObjectNotFound, StorageError
from dstack.messages import ArtifactFile, ArtifactManifest, ArtifactRef
from dstack.names import artifact_key, artifacts_manifest_key
from dstack.snapshot import file_digest, safe_join
from dstack.storage import Storage
from dstack.storage.retry import with_retries


def upload_artifacts(storage: Storage, run_name: str, job_id: str, artifacts: list[str],
                     workdir: Path) -> ArtifactManifest:
    """Store the files under the ``artifacts`` folders of ``workdir`` (symbolic links left out),
    then their manifest, and return it.

    Raises:
        DstackError: storage failed, also after retries.
        OSError: a file could not be read.
    """
    files: list[ArtifactFile] = []
    for artifact in artifacts:
        folder = safe_join(workdir, artifact)
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            relative = path.relative_to(workdir).as_posix()
            key = artifact_key(run_name, job_id, relative)
            digest = file_digest(path)
            with_retries(functools.partial(storage.put_file, key, path), f"uploading {relative}")
            files.append(ArtifactFile(path=relative, size=path.stat().st_size, sha256=digest))
    manifest = ArtifactManifest(job_id=job_id, artifacts=list(artifacts), files=files)
    body = manifest.to_json()
    manifest_key = artifacts_manifest_key(run_name, job_id)  # last: the upload is complete
    with_retries(lambda: storage.put_bytes(manifest_key, body), "storing the manifest")
    return manifest


def read_manifest(storage: Storage, run_name: str, job_id: str) -> ArtifactManifest:
    """The manifest of a job's artifacts.

    Raises:
        StorageError: the job has no stored artifacts (or storage failed).
    """
    try:
        return ArtifactManifest.from_json(storage.get_bytes(artifacts_manifest_key(run_name, job_id)))
    except ObjectNotFound:
        raise StorageError(f"the artifacts of {job_id} of run {run_name} are not stored in {storage.url}") from None


def fetch_inputs(storage: Storage, inputs: list[ArtifactRef], workdir: Path) -> None:
    """Put the artifacts of ``inputs`` at their paths in ``workdir`` (below each one's ``target``
    folder), in order: folders merge, and a file that two inputs hold is the later one's.

    Raises:
        DstackError: an input is not stored, or storage failed.
    """
    for ref in inputs:
        folder = safe_join(workdir, ref.target) if ref.target else workdir
        for entry in read_manifest(storage, ref.run_name, ref.job_id).files:
            storage.get_file(artifact_key(ref.run_name, ref.job_id, entry.path), safe_join(folder, entry.path))
