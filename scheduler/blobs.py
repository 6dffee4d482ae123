"""Content-addressed blobs: the archives of jobs' inputs, outputs and checkpoints.

A blob is a file named by the sha256 of its content, under
``<state_dir>/blobs/<first two hex digits>/<sha256>``. A write streams into a
temporary file while the digest is computed, then the file is fsynced, renamed into
place and its directory fsynced, so a blob is durable before the writer hears of it.
The same content always gives the same digest: storing it again costs a read and
changes nothing. Disk I/O runs in threads, never on the event loop.

Parameters of :class:`BlobStore` and their defaults:

- ``max_bytes``: the largest blob accepted (``MAX_BLOB_BYTES``); past it the write
  fails with PayloadTooLarge and nothing is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.errors import InvalidRequest, NotFound, PayloadTooLarge

#: the largest blob accepted
MAX_BLOB_BYTES = 256 * 1024 * 1024
#: incoming bytes gathered before one write (and hash update) in a thread
WRITE_BATCH = 1024 * 1024
#: the directory below the state dir
BLOBS_DIR = "blobs"

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Stored:
    digest: str
    size: int
    #: False when a blob with that content was there already
    created: bool


def check_digest(digest: str) -> str:
    """The digest if it is 64 lowercase hex digits, else InvalidRequest."""
    if not _DIGEST.match(digest):
        raise InvalidRequest("a blob digest is 64 lowercase hex digits", {"field": "digest"})
    return digest


class BlobStore:
    def __init__(self, root: Path, *, max_bytes: int = MAX_BLOB_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> BlobStore:
        return cls(state_dir / BLOBS_DIR)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def find(self, digest: str) -> Path:
        """The file of a stored blob; NotFound when there is none."""
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"no blob {digest}", {"field": "digest"})
        return path

    async def put(self, chunks: AsyncIterator[bytes], *, declared: int | None = None) -> Stored:
        """Store what ``chunks`` yields; durable when this returns.

        ``declared``: the size announced by the sender (Content-Length), refused at
        once when over the limit.
        """
        if declared is not None and declared > self.max_bytes:
            raise _too_large(self.max_bytes)
        tmp_dir = self.root / "tmp"
        await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
        tmp = tmp_dir / f"{secrets.token_hex(8)}.part"
        h = hashlib.sha256()
        size = 0
        f: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
        try:
            batch = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    raise _too_large(self.max_bytes)
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await asyncio.to_thread(_write, f, h, bytes(batch))
                    batch.clear()
            if batch:
                await asyncio.to_thread(_write, f, h, bytes(batch))
            await asyncio.to_thread(_sync_close, f)
            digest = h.hexdigest()
            created = await asyncio.to_thread(self._place, tmp, digest)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_discard, f, tmp)
            raise
        return Stored(digest, size, created)

    async def put_bytes(self, data: bytes) -> Stored:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one(), declared=len(data))

    def _place(self, tmp: Path, digest: str) -> bool:
        final = self.path(digest)
        if final.is_file():
            tmp.unlink(missing_ok=True)
            return False
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return True

    async def delete(self, digest: str) -> bool:
        """Remove a blob (retention); True if it was there."""
        path = self.path(digest)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            _fsync_dir(path.parent)
            return True

        return await asyncio.to_thread(remove)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a blob may hold at most {max_bytes // (1024 * 1024)} MiB",
        {"field": "$", "max_bytes": max_bytes},
    )


def _write(f: BinaryIO, h: hashlib._Hash, data: bytes) -> None:
    h.update(data)
    f.write(data)


def _sync_close(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _discard(f: BinaryIO, tmp: Path) -> None:
    f.close()
    tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
