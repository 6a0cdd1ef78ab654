"""Secrets at rest: the scheduler's database holds each secret's value sealed with authenticated encryption
(Fernet from the ``cryptography`` package: AES-128-CBC and HMAC-SHA256), never in clear.

The key comes from ``DSTACK_SECRETS_KEY`` or from the key file ``$DSTACK_HOME/scheduler/secrets.key``, made
with mode 0600 at the scheduler's first start. :func:`rotate_key` seals every secret again under a new key
(``dstack secrets rotate-key``, on the scheduler's machine, with the scheduler stopped).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dstack.errors import ConfigError, DstackError
from dstack.scheduler.store import StateStore, StoredSecret

#: What a sealed value starts with (a value without it was stored before secrets were encrypted).
SEALED = "fernet:"
KEY_FILE = "secrets.key"
#: A new key, written before the secrets are sealed under it and renamed over the key file after: a
#: rotation cut short leaves both, and both open what it left.
NEXT_KEY_FILE = "secrets.key.next"


class SecretCipher:
    """Seals and opens secret values with the first of ``keys``; opens with any of them."""

    def __init__(self, keys: list[bytes]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError:
            raise ConfigError("not a secrets key: it must be 32 bytes, url-safe base64-encoded (as "
                              "`python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key()"
                              ".decode())'` prints)", field="DSTACK_SECRETS_KEY") from None

    @classmethod
    def ephemeral(cls) -> SecretCipher:
        """A cipher with a key of its own that no one keeps (for a scheduler in a test)."""
        return cls([Fernet.generate_key()])

    def seal(self, value: str) -> str:
        return SEALED + self._fernet.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        """The value of a sealed secret (a value stored in clear, before encryption, as it is).

        Raises:
            DstackError: no key of this cipher opens it, or it was altered.
        """
        if not stored.startswith(SEALED):
            return stored
        try:
            return self._fernet.decrypt(stored[len(SEALED):].encode()).decode()
        except InvalidToken:
            raise DstackError("a secret cannot be opened with the secrets key: the key changed (see "
                              "DSTACK_SECRETS_KEY and scheduler/secrets.key), or the database was altered") from None

    def open_all(self, secrets: Iterable[StoredSecret]) -> tuple[dict[str, str], list[StoredSecret]]:
        """The values of ``secrets`` by name (a later secret of a name over an earlier one), and those that cannot
        be opened (sealed under another key, or altered)."""
        opened, unopened = {}, []
        for secret in secrets:
            try:
                opened[secret.name] = self.open(secret.value)
            except DstackError:
                unopened.append(secret)
        return opened, unopened


def load_cipher(scheduler_home: Path, env_key: Optional[str]) -> SecretCipher:
    """The scheduler's cipher: ``env_key`` (``DSTACK_SECRETS_KEY``), else the key file in ``scheduler_home``,
    made at the first start (mode 0600), and the next key of a rotation cut short."""
    if env_key:
        return SecretCipher([env_key.encode()])
    path = scheduler_home / KEY_FILE
    if not path.exists():
        _write_key(path, Fernet.generate_key())
    keys = [path.read_bytes().strip()]
    if (scheduler_home / NEXT_KEY_FILE).exists():
        keys.insert(0, (scheduler_home / NEXT_KEY_FILE).read_bytes().strip())
    return SecretCipher(keys)


def seal_stored(store: StateStore, cipher: SecretCipher) -> int:
    """Seal the secrets stored in clear (by a scheduler older than encryption); returns how many."""
    count = 0
    with store.transaction():
        for secret in store.secrets():
            if not secret.value.startswith(SEALED):
                store.set_secret(secret.name, cipher.seal(secret.value), secret.updated_at, secret.owner)
                count += 1
    return count


def unopenable(store: StateStore, cipher: SecretCipher) -> list[str]:
    """The names of the stored secrets that ``cipher`` cannot open (sealed under another key)."""
    with store.transaction():
        _, unopened = cipher.open_all(store.secrets())
    return [f"{secret.owner}/{secret.name}" if secret.owner else secret.name for secret in unopened]


def rotate_key(store: StateStore, scheduler_home: Path, env_key: Optional[str]) -> tuple[bytes, int]:
    """Seal every secret again under a new key; returns the key and how many secrets.

    With a key file, the new key replaces it (0600); with ``DSTACK_SECRETS_KEY``, the caller shows the new key,
    to be set in its place before the scheduler starts again.
    """
    old = load_cipher(scheduler_home, env_key)
    new_key = Fernet.generate_key()
    next_path = scheduler_home / NEXT_KEY_FILE
    if not env_key:
        _write_key(next_path, new_key)
    new = SecretCipher([new_key])
    with store.transaction():
        secrets = store.secrets()
        for secret in secrets:
            store.set_secret(secret.name, new.seal(old.open(secret.value)), secret.updated_at, secret.owner)
    if not env_key:
        os.replace(next_path, scheduler_home / KEY_FILE)
    return new_key, len(secrets)


def _write_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    os.replace(scratch, path)
