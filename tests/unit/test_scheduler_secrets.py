"""Secrets at rest: sealed in the scheduler's database, the key from DSTACK_SECRETS_KEY or a 0600 key file made
at the first start, secrets stored in clear by an older scheduler sealed at start, and the key rotated."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from dstack.errors import ConfigError, DstackError
from dstack.messages import JobTask, SetSecret
from dstack.scheduler.secrets import (
    KEY_FILE,
    NEXT_KEY_FILE,
    SEALED,
    load_cipher,
    rotate_key,
    seal_stored,
    unopenable,
)
from dstack.scheduler.store import SqliteStateStore
from tests.scheduler_harness import PROVIDER_TASK, Harness, spec

VALUE = "hf_very-secret-token"


def test_a_sealed_value_opens_and_shows_nothing_of_itself(tmp_path: Path) -> None:
    cipher = load_cipher(tmp_path, None)
    sealed = cipher.seal(VALUE)
    assert sealed.startswith(SEALED) and VALUE not in sealed and cipher.open(sealed) == VALUE
    assert cipher.seal(VALUE) != sealed  # a fresh IV each time


def test_an_altered_value_or_another_key_is_refused(tmp_path: Path) -> None:
    sealed = load_cipher(tmp_path / "a", None).seal(VALUE)
    with pytest.raises(DstackError, match="the key changed"):
        load_cipher(tmp_path / "b", None).open(sealed)
    altered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(DstackError):
        load_cipher(tmp_path / "a", None).open(altered)


def test_the_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    sealed = load_cipher(tmp_path, None).seal(VALUE)
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_cipher(tmp_path, None).open(sealed) == VALUE  # the same key at the next start


def test_the_key_from_the_environment(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    assert load_cipher(tmp_path, key).open(load_cipher(tmp_path / "other", key).seal(VALUE)) == VALUE
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ConfigError, match="DSTACK_SECRETS_KEY"):
        load_cipher(tmp_path, "not-a-key")


def test_the_database_holds_no_secret_in_clear_and_jobs_get_it(tmp_path: Path) -> None:
    h = Harness(tmp_path / "scheduler" / "state.db")
    h.scheduler.handle_request(SetSecret(name="HF_TOKEN", value=VALUE))
    h.provider_creates([spec("a")])
    jobs = h.job_tasks()
    assert [job.secrets for job in jobs] == [{}]  # no secret travels in a task message
    assert isinstance(jobs[0], JobTask)
    assert h.claim("train.0", "w1")["secrets"] == {"HF_TOKEN": VALUE}  # the claim's answer brings them
    assert h.claim(PROVIDER_TASK, "w-provider")["secrets"] == {}  # a provider gets none
    h.store.close()
    files = [p for p in (tmp_path / "scheduler").iterdir() if p.name.startswith("state.db")]
    assert files and not any(VALUE.encode() in p.read_bytes() for p in files)


def test_secrets_stored_in_clear_are_sealed_at_start(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    with store.transaction():
        store.set_secret("OLD", VALUE, 1.0)
    cipher = load_cipher(tmp_path, None)
    assert cipher.open(VALUE) == VALUE  # in clear: read as it is until sealed
    assert seal_stored(store, cipher) == 1 and seal_stored(store, cipher) == 0
    with store.transaction():
        [(name, stored, updated_at, _)] = store.secrets()
    assert (name, updated_at) == ("OLD", 1.0) and stored.startswith(SEALED) and cipher.open(stored) == VALUE


def test_rotating_the_key_seals_every_secret_again(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    old = load_cipher(tmp_path, None)
    with store.transaction():
        store.set_secret("A", old.seal("a-value"), 1.0)
        store.set_secret("B", old.seal("b-value"), 2.0)
    old_key = (tmp_path / KEY_FILE).read_bytes()
    key, count = rotate_key(store, tmp_path, None)
    assert count == 2 and (tmp_path / KEY_FILE).read_bytes().strip() == key != old_key.strip()
    assert not (tmp_path / NEXT_KEY_FILE).exists()
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    new = load_cipher(tmp_path, None)
    with store.transaction():
        stored = {name: value for name, value, _, _ in store.secrets()}
    assert {name: new.open(value) for name, value in stored.items()} == {"A": "a-value", "B": "b-value"}
    with pytest.raises(DstackError):
        old.open(stored["A"])


def test_a_rotation_cut_short_leaves_every_secret_readable(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    with store.transaction():
        store.set_secret("A", load_cipher(tmp_path, None).seal("a-value"), 1.0)
    (tmp_path / NEXT_KEY_FILE).write_bytes(Fernet.generate_key())  # written, then the rotation stopped
    with store.transaction():
        [(_, stored, _, _)] = store.secrets()
    assert load_cipher(tmp_path, None).open(stored) == "a-value"


def test_rotation_with_the_key_in_the_environment_returns_the_new_key(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    store = SqliteStateStore(tmp_path / "state.db")
    with store.transaction():
        store.set_secret("A", load_cipher(tmp_path, key).seal("a-value"), 1.0)
    new_key, count = rotate_key(store, tmp_path, key)
    with store.transaction():
        [(_, stored, _, _)] = store.secrets()
    assert count == 1 and load_cipher(tmp_path, new_key.decode()).open(stored) == "a-value"
    assert not (tmp_path / KEY_FILE).exists()


def test_a_job_whose_secrets_cannot_be_opened_fails_saying_which(tmp_path: Path) -> None:
    h = Harness(tmp_path / "scheduler" / "state.db")
    h.scheduler.handle_request(SetSecret(name="GOOD", value="g"))
    with h.store.transaction():  # sealed under another key (a rotation while the scheduler ran)
        h.store.set_secret("STALE", load_cipher(tmp_path / "other", None).seal("s"), 1.0)
    h.provider_creates([spec("a")])
    answer = h.claim("train.0", "w1")
    assert not answer["granted"] and "STALE" in answer["reason"] and "GOOD" not in answer["reason"]
    job = h.task("train.0")
    assert job.status.value == "failed" and job.reason.startswith("its secrets cannot be given: the secrets STALE")
    assert unopenable(h.store, h.scheduler._flow.cipher) == ["STALE"]
