"""Secrets at rest: AES-256-GCM under one key that never enters the store.

A secret's value is sealed as ``VERSION || nonce (12 bytes) || ciphertext+tag`` with
a fresh random nonce per seal, and the secret's name as associated data: a sealed
value copied onto another secret's row does not open. The key lives in a file, 32
random bytes in base64 (``secrets.key`` in the state directory, mode 0600, made on
first start, or ``--secrets-key-file``); the store keeps only the sealed values and
each one's key id, so a copy of the database alone reveals no value. Schedulers that
share a PostgreSQL store need the same key file: a value sealed under another key is
refused with ``SecretUnreadable`` (its key id says whose), never decrypted wrongly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from scheduler.config import SchedulerConfig
    from scheduler.store.base import Store

log = logging.getLogger(__name__)

#: the key file's name in the state directory
KEY_FILE = "secrets.key"
#: bytes of key (AES-256)
KEY_BYTES = 32
#: bytes of nonce per seal (GCM's standard 96 bits)
NONCE_BYTES = 12
#: the first byte of every sealed value: the format, so that a later one can be told apart
VERSION = b"\x01"
#: what the store shares among its schedulers: the id of the first one's key
SHARED_KEY_ID = "secrets_key_id"


class SecretsKeyError(Exception):
    """The key file cannot be used (unreadable, malformed, or open to others)."""


class SecretUnreadable(Exception):
    """A sealed value does not open under this key (another key sealed it, or it was
    changed)."""


def key_id_of(key: bytes) -> str:
    """A short name for a key that tells keys apart without revealing one."""
    return hashlib.sha256(b"berth secrets key\x00" + key).hexdigest()[:16]


class SecretBox:
    """Seals and opens secret values under one key (pure: no I/O)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretsKeyError(f"a secrets key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        #: stored beside each sealed value: which key opens it
        self.key_id = key_id_of(key)

    def seal(self, name: str, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, value, name.encode())

    def open(self, name: str, sealed: bytes, key_id: str) -> bytes:
        """The value ``seal(name, value)`` sealed; SecretUnreadable when this key did
        not seal it for that name, or the bytes were changed."""
        if key_id != self.key_id:
            raise SecretUnreadable(
                f"secret {name!r} was sealed with another key (id {key_id}; this "
                f"scheduler's is {self.key_id}): give every scheduler the same "
                "--secrets-key-file"
            )
        if sealed[:1] != VERSION or len(sealed) < 1 + NONCE_BYTES:
            raise SecretUnreadable(f"secret {name!r} is not stored in a known format")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, name.encode())
        except InvalidTag:
            raise SecretUnreadable(f"secret {name!r} does not open under this key") from None


def load_key(path: Path) -> bytes:
    """The key in ``path``, made (mode 0600) when the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as e:
        raise SecretsKeyError(f"cannot create the secrets key {path}: {e}") from e
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("wrote a new secrets key to %s", path.resolve())
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SecretsKeyError(f"cannot read the secrets key {path}: {e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsKeyError(
            f"the secrets key {path} may be read by others (mode {stat.S_IMODE(mode):o}): "
            f"chmod 600 {path}"
        )
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretsKeyError(
            f"the secrets key {path} must hold {KEY_BYTES} random bytes in base64 "
            "(for example: head -c 32 /dev/urandom | base64)"
        )
    return key


async def open_box(config: SchedulerConfig, store: Store, key_ids: Iterable[str]) -> SecretBox:
    """The scheduler's box: the key of ``--secrets-key-file``, else ``secrets.key`` in
    the state directory (both made on first use). ``key_ids`` are those of the stored
    secrets: any other than this key's is logged, as is a store whose schedulers
    hold different keys (their secrets would not open on a new leader)."""
    path = config.secrets_key_file or config.state_dir / KEY_FILE
    box = SecretBox(await asyncio.to_thread(load_key, path))
    others = sorted(set(key_ids) - {box.key_id})
    if others:
        log.error(
            "stored secrets were sealed with other keys (ids %s) than %s (id %s): they "
            "do not open, and jobs that need them fail with secret_unreadable",
            ", ".join(others),
            path,
            box.key_id,
        )
    first = await store.shared_secret(SHARED_KEY_ID, lambda: box.key_id)
    if first is not None and first != box.key_id:
        log.error(
            "the schedulers sharing this store hold different secrets keys (this one's "
            "id %s, the first one's %s): give every scheduler the same --secrets-key-file",
            box.key_id,
            first,
        )
    return box
