"""dstack.snapshot: which files a snapshot holds, content-addressed upload, and restoring it."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dstack.errors import StorageError, UnsafePath
from dstack.names import snapshot_key
from dstack.snapshot import file_digest, iter_project_files, materialize_snapshot, safe_join, upload_snapshot
from dstack.storage.local import LocalStorage
from tests.services import write_project as make_tree


def listed(root: Path) -> set[str]:
    paths = list(iter_project_files(root))
    assert all(not p.is_absolute() for p in paths)
    assert len(paths) == len(set(paths))
    return {p.as_posix() for p in paths}


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "project", {
        "README.md": "# demo\n",
        "train.py": "print('train')\n",
        "src/model.py": "class Model: ...\n",
        "src/data/loader.py": "def load(): ...\n",
        "copy_of_readme.md": "# demo\n",  # same content as README.md: one blob
    })
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return root


# ----------------------------------------------------------------------------- iter_project_files


def test_lists_every_file_without_gitignore(project: Path) -> None:
    assert listed(project) == {"README.md", "train.py", "src/model.py", "src/data/loader.py",
                               "copy_of_readme.md", "run.sh"}


def test_git_folder_excluded(project: Path) -> None:
    make_tree(project, {".git/HEAD": "ref: refs/heads/main\n", ".git/objects/ab/cdef": "x",
                        "src/.git": "gitdir: ../.git/modules/src\n"})
    files = listed(project)
    assert not any(f == ".git" or f.startswith(".git/") or f.endswith("/.git") for f in files)
    assert "README.md" in files


def test_root_gitignore(project: Path) -> None:
    make_tree(project, {".gitignore": "*.log\n/build\n__pycache__/\n",
                        "debug.log": "x", "src/deep.log": "x", "build/out.bin": "x",
                        "src/build/keep.txt": "x", "src/__pycache__/m.pyc": "x"})
    files = listed(project)
    assert ".gitignore" in files
    assert "debug.log" not in files
    assert "src/deep.log" not in files  # an unanchored pattern matches at any depth
    assert "build/out.bin" not in files
    assert "src/build/keep.txt" in files  # /build is anchored at the root
    assert "src/__pycache__/m.pyc" not in files


def test_ignored_directories_and_dir_only_patterns(project: Path) -> None:
    make_tree(project, {".gitignore": "data/\nnotes\n", "data/big.csv": "x", "data/sub/more.csv": "x",
                        "src/data/x.csv": "x", "notes/a.txt": "x", "docs/notes": "a file called notes"})
    files = listed(project)
    assert not any(f.startswith("data/") for f in files)
    assert "src/data/x.csv" not in files  # data/ matches a folder at any depth
    assert "src/data/loader.py" not in files
    assert "notes/a.txt" not in files
    assert "docs/notes" not in files  # "notes" (no slash) matches files too


def test_dir_only_pattern_keeps_a_file_of_that_name(project: Path) -> None:
    make_tree(project, {".gitignore": "cache/\n", "cache": "a file, not a folder"})
    assert "cache" in listed(project)


def test_negation(project: Path) -> None:
    make_tree(project, {".gitignore": "*.csv\n!keep.csv\n", "a.csv": "x", "keep.csv": "x", "src/keep.csv": "x"})
    files = listed(project)
    assert "a.csv" not in files
    assert "keep.csv" in files
    assert "src/keep.csv" in files


def test_nested_gitignore_is_relative_to_its_folder(project: Path) -> None:
    make_tree(project, {"src/.gitignore": "/local.txt\n*.tmp\n", "src/local.txt": "x", "local.txt": "x",
                        "src/data/local.txt": "x", "src/data/x.tmp": "x", "x.tmp": "x"})
    files = listed(project)
    assert "src/.gitignore" in files
    assert "src/local.txt" not in files
    assert "local.txt" in files  # the nested file does not reach its parent
    assert "src/data/local.txt" in files  # /local.txt is anchored at src/
    assert "src/data/x.tmp" not in files
    assert "x.tmp" in files


def test_nested_negation_overrides_parent(project: Path) -> None:
    make_tree(project, {".gitignore": "*.log\n", "src/.gitignore": "!important.log\n",
                        "src/important.log": "x", "src/other.log": "x", "important.log": "x"})
    files = listed(project)
    assert "src/important.log" in files
    assert "src/other.log" not in files
    assert "important.log" not in files


def test_nested_ignore_overrides_parent_negation(project: Path) -> None:
    make_tree(project, {".gitignore": "!*.md\n", "src/.gitignore": "*.md\n", "src/doc.md": "x"})
    files = listed(project)
    assert "src/doc.md" not in files
    assert "README.md" in files


def test_files_inside_an_ignored_dir_cannot_be_negated(project: Path) -> None:
    make_tree(project, {".gitignore": "out/\n!out/keep.txt\n", "out/keep.txt": "x"})
    assert "out/keep.txt" not in listed(project)  # as in git


def test_symlinks(project: Path) -> None:
    os.symlink(project / "train.py", project / "link_to_file.py")
    os.symlink(project / "src", project / "link_to_dir")
    os.symlink(project / "missing", project / "dangling")
    files = listed(project)
    assert "link_to_file.py" in files
    assert not any(f.startswith("link_to_dir") for f in files)
    assert "dangling" not in files


# ----------------------------------------------------------------------------- upload


def test_upload_twice_uploads_nothing_new(project: Path, storage: LocalStorage) -> None:
    snapshot_id, files, uploaded = upload_snapshot(project, storage)
    assert files == 6
    assert uploaded == 5  # README.md and copy_of_readme.md share one blob
    assert storage.exists(snapshot_key(snapshot_id))
    assert storage.exists(f"blobs/{file_digest(project / 'train.py')[:2]}/{file_digest(project / 'train.py')}")
    again = upload_snapshot(project, storage)
    assert again == (snapshot_id, 6, 0)


def test_changing_one_file_uploads_one(project: Path, storage: LocalStorage) -> None:
    first, _, _ = upload_snapshot(project, storage)
    (project / "src" / "model.py").write_text("class Model: pass  # v2\n")
    second, files, uploaded = upload_snapshot(project, storage)
    assert (files, uploaded) == (6, 1)
    assert second != first
    # Going back to the first content: nothing to upload and the first id again.
    (project / "src" / "model.py").write_text("class Model: ...\n")
    assert upload_snapshot(project, storage) == (first, 6, 0)


def test_mode_change_changes_id_without_upload(project: Path, storage: LocalStorage) -> None:
    first, _, _ = upload_snapshot(project, storage)
    (project / "train.py").chmod(0o755)
    second, _, uploaded = upload_snapshot(project, storage)
    assert uploaded == 0
    assert second != first


def test_same_tree_elsewhere_same_id(project: Path, storage: LocalStorage, tmp_path: Path) -> None:
    first, _, _ = upload_snapshot(project, storage)
    other = tmp_path / "clone"
    materialize_snapshot(storage, first, other, cache=None)
    assert upload_snapshot(other, storage) == (first, 6, 0)


def test_ignored_files_are_not_uploaded(project: Path, storage: LocalStorage) -> None:
    make_tree(project, {".gitignore": "secret.env\n", "secret.env": "TOKEN=abc\n"})
    snapshot_id, files, _ = upload_snapshot(project, storage)
    assert files == 7  # + .gitignore
    blobs = [info.key for info in storage.list("blobs/")]
    assert f"blobs/{file_digest(project / 'secret.env')[:2]}/{file_digest(project / 'secret.env')}" not in blobs


# ----------------------------------------------------------------------------- materialize


@pytest.mark.parametrize("use_cache", [False, True])
def test_materialize_restores_content_and_executable_bit(project: Path, storage: LocalStorage, tmp_path: Path,
                                                         use_cache: bool) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage)
    target = tmp_path / "restored"
    cache = tmp_path / "cache" if use_cache else None
    if cache:
        cache.mkdir()
    assert materialize_snapshot(storage, snapshot_id, target, cache) == 6
    assert listed(target) == listed(project)
    for relative in listed(project):
        assert (target / relative).read_bytes() == (project / relative).read_bytes()
    assert os.stat(target / "run.sh").st_mode & stat.S_IXUSR
    assert not os.stat(target / "train.py").st_mode & stat.S_IXUSR
    if cache:
        assert len(list(cache.iterdir())) == 5  # one per blob


def test_materialize_uses_the_cache(project: Path, storage: LocalStorage, tmp_path: Path) -> None:
    snapshot_id, _, _ = upload_snapshot(project, storage)
    cache = tmp_path / "cache"
    cache.mkdir()
    materialize_snapshot(storage, snapshot_id, tmp_path / "first", cache)
    # The cache is read, not storage: blobs removed from storage do not matter any more.
    for info in list(storage.list("blobs/")):
        (storage.root / info.key).unlink()
    assert materialize_snapshot(storage, snapshot_id, tmp_path / "second", cache) == 6
    assert (tmp_path / "second" / "src" / "model.py").read_text() == "class Model: ...\n"


def test_materialize_unknown_snapshot(storage: LocalStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="snapshot deadbeef is not in"):
        materialize_snapshot(storage, "deadbeef", tmp_path / "t", None)


def test_materialize_refuses_escaping_manifest(storage: LocalStorage, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_text("evil")
    digest = file_digest(blob)
    storage.put_file(f"blobs/{digest[:2]}/{digest}", blob)
    storage.put_bytes(snapshot_key("evil"), ('{"files":[["../escaped.txt","' + digest + '",4,false]]}').encode())
    with pytest.raises(UnsafePath):
        materialize_snapshot(storage, "evil", tmp_path / "target", None)
    assert not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- safe_join


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../b", "..", "~/x", "", "a/b/../../../c"])
def test_safe_join_refuses_escapes(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, relative)


@pytest.mark.parametrize("relative,expected", [("a/b.txt", "a/b.txt"), ("a/../b", "b"), ("./c", "c")])
def test_safe_join_accepts_inside(tmp_path: Path, relative: str, expected: str) -> None:
    assert safe_join(tmp_path, relative) == (tmp_path / expected).resolve()


def test_safe_join_refuses_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path, root / "up")
    with pytest.raises(UnsafePath, match="leaves the project root"):
        safe_join(root, "up/secret")


def test_safe_join_root_itself(tmp_path: Path) -> None:
    assert safe_join(tmp_path, ".") == tmp_path.resolve()
