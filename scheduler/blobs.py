"""Content-addressed blobs: the archives of jobs' inputs, outputs and checkpoints.

A blob is named by the sha256 of its content. :class:`BlobStore` is what the scheduler
asks of wherever blobs live; :func:`open_blobs` picks the backend:

- :class:`FileBlobs`, the default: a file under
  ``<state_dir>/blobs/<first two hex digits>/<sha256>``. A write streams into a
  temporary file while the digest is computed, then the file is fsynced, renamed into
  place and its directory fsynced. Disk I/O runs in threads, never on the event loop.
- :class:`scheduler.blobs_pg.PostgresBlobs` with ``--store postgresql://...``: chunks
  in the database, so that every scheduler sharing it serves every blob.

Either way a blob is durable before the writer hears of it, a half-written upload is
never visible, and the same content always gives the same digest: storing it again
changes nothing but the time it was last stored. What every backend must refuse (the
digest's form, the largest blob, a body longer than announced, content that is not
what its sender said) is checked here, in :class:`BlobStore`, once for all of them.

Parameters of :class:`BlobStore` and their defaults:

- ``max_bytes``: the largest blob accepted (``MAX_BLOB_BYTES``); past it the write
  fails with PayloadTooLarge and nothing is kept.

Blobs nothing refers to are swept (:meth:`BlobStore.sweep`): a blob no kept job names
(as its input archive, outputs or checkpoint) and last stored more than a grace period
ago is deleted, and so is an upload abandoned that long ago. The grace is what lets a
client upload an input and then submit the job that names it. Which blobs go is
decided by :func:`unreferenced`, a pure function. Every backend sweeps the same way: a
blob to delete is first moved aside (gone for readers), then the scheduler is asked
again whether a job names it, and it is put back when one does or when the same
content was stored meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from aiohttp import web

from common.errors import InvalidRequest, NotFound, PayloadTooLarge

if TYPE_CHECKING:
    from scheduler.config import SchedulerConfig

#: the largest blob accepted
MAX_BLOB_BYTES = 256 * 1024 * 1024
#: incoming bytes gathered before one write (and hash update): a file write in a thread,
#: or one chunk row in the database
WRITE_BATCH = 1024 * 1024
#: the directory below the state dir
BLOBS_DIR = "blobs"
#: where uploads are written before they are placed, below the blobs directory
TMP_DIR = "tmp"
#: an upload being written, in TMP_DIR
PART_SUFFIX = ".part"
#: a blob the sweep has moved aside (into TMP_DIR) before deleting it
ASIDE_SUFFIX = ".swept"

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Stored:
    digest: str
    size: int
    #: False when a blob with that content was there already
    created: bool


@dataclass(frozen=True)
class BlobFile:
    """A stored blob as the sweep sees it."""

    digest: str
    size: int
    #: when it was last stored (a file's mtime, a row's ``stored_at``; storing the same
    #: content again refreshes it)
    stored_at: float


@dataclass(frozen=True)
class Swept:
    """What one sweep deleted."""

    #: blobs no kept job named
    blobs: int = 0
    #: uploads abandoned (what they had written)
    uploads: int = 0
    #: bytes the two freed
    freed_bytes: int = 0
    #: blobs moved aside and then kept after all: named or stored again meanwhile
    kept_back: int = 0
    #: the digests of the blobs deleted
    deleted: tuple[str, ...] = ()


def unreferenced(
    blobs: Iterable[BlobFile], named: Callable[[str], bool], cutoff: float
) -> list[BlobFile]:
    """The blobs to delete: those no kept job names, last stored before ``cutoff``.

    ``named`` tells whether a kept job names a digest. A blob stored at or after the
    cutoff stays whatever names it: it may be an input whose job is not submitted yet,
    or outputs or a checkpoint whose report is still on its way.
    """
    return [b for b in blobs if b.stored_at < cutoff and not named(b.digest)]


def check_digest(digest: str) -> str:
    """The digest if it is 64 lowercase hex digits, else InvalidRequest."""
    if not _DIGEST.match(digest):
        raise InvalidRequest("a blob digest is 64 lowercase hex digits", {"field": "digest"})
    return digest


class Upload(ABC):
    """One upload as a backend writes it: invisible until :meth:`place`."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Keep the next bytes of the body."""

    @abstractmethod
    async def place(self, digest: str, size: int) -> bool:
        """Make the whole body durable and visible as the blob ``digest``; False when
        that blob was there already (then its time of last store is refreshed)."""

    @abstractmethod
    async def discard(self) -> None:
        """Drop what was written (the upload failed); it may be placed or gone."""


class BlobStore(ABC):
    """Where blobs live. The public methods check what a caller hands them and call
    the backend's hooks (``_begin``, ``_present``, ``_read``, ``_response``,
    ``_delete``) and :meth:`sweep`."""

    def __init__(self, *, max_bytes: int = MAX_BLOB_BYTES) -> None:
        self.max_bytes = max_bytes

    def check_declared(self, declared: int | None) -> None:
        """PayloadTooLarge when the size a sender announced is over the limit."""
        if declared is not None and declared > self.max_bytes:
            raise _too_large(self.max_bytes)

    async def put(
        self,
        chunks: AsyncIterator[bytes],
        *,
        declared: int | None = None,
        wrote: Callable[[int], None] | None = None,
        expect: str | None = None,
    ) -> Stored:
        """Store what ``chunks`` yields; durable when this returns.

        ``declared``: the size announced by the sender (Content-Length), refused at
        once when over the limit; past it the write fails too. ``wrote`` is told how
        many bytes each write kept (the upload's space reservation shrinks by them).
        ``expect``: the digest the sender says the content has; content with another
        is refused. A refused or failed upload leaves nothing visible.
        """
        self.check_declared(declared)
        if expect is not None:
            check_digest(expect)
        upload = await self._begin()
        h = hashlib.sha256()
        size = 0
        try:
            async for batch in _batches(chunks, declared, self.max_bytes):
                await asyncio.to_thread(h.update, batch)
                await upload.write(batch)
                size += len(batch)
                if wrote is not None:
                    wrote(len(batch))
            digest = h.hexdigest()
            if expect is not None and digest != expect:
                raise InvalidRequest(
                    f"the body's sha256 is {digest}, not {expect}; nothing was stored",
                    {"field": "digest"},
                )
            created = await upload.place(digest, size)
        except BaseException:
            # Shielded: a cancelled request still drops what it wrote. What a crash
            # leaves is an abandoned upload, for the sweep.
            with contextlib.suppress(Exception):
                await asyncio.shield(upload.discard())
            raise
        return Stored(digest, size, created)

    async def put_bytes(self, data: bytes) -> Stored:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put(one(), declared=len(data))

    async def exists(self, digest: str) -> bool:
        return digest in await self.exists_many([digest])

    async def exists_many(self, digests: Iterable[str]) -> set[str]:
        """Those of ``digests`` that are stored."""
        wanted = [check_digest(d) for d in digests]
        return await self._present(wanted) if wanted else set()

    def read(self, digest: str) -> AsyncIterator[bytes]:
        """The content of a blob in pieces, never whole in memory; NotFound (at the
        first piece) when there is none."""
        return self._read(check_digest(digest))

    async def response(
        self, request: web.Request, digest: str, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        """The answer to a download of a blob, with its Content-Length and ``headers``;
        NotFound, before anything is sent, when there is no such blob."""
        return await self._response(request, check_digest(digest), headers)

    async def delete(self, digest: str) -> bool:
        """Remove a blob (retention); True if it was there."""
        return await self._delete(check_digest(digest))

    @abstractmethod
    async def sweep(
        self, named: Callable[[str], bool], *, grace_s: float, now: float | None = None
    ) -> Swept:
        """Delete the blobs no kept job names that were last stored over ``grace_s``
        seconds ago, and uploads abandoned (not written to) that long ago.

        ``named`` is asked on the event loop only, so it may read the scheduler's
        state. A blob to delete is first moved aside, then ``named`` is asked again: a
        job that came to name it meanwhile gets it back, and so does a blob stored
        again meanwhile. Once moved aside it is gone for readers and for jobs
        submitted after: a blob is never deleted while a kept job names it. What a
        crash leaves aside is put back by the next sweep.
        """

    @abstractmethod
    async def close(self) -> None:
        """Let go of what the backend holds open."""

    @abstractmethod
    async def _begin(self) -> Upload: ...

    @abstractmethod
    async def _present(self, digests: list[str]) -> set[str]: ...

    @abstractmethod
    def _read(self, digest: str) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def _response(
        self, request: web.Request, digest: str, headers: Mapping[str, str]
    ) -> web.StreamResponse: ...

    @abstractmethod
    async def _delete(self, digest: str) -> bool: ...


def open_blobs(config: SchedulerConfig) -> BlobStore:
    """The blobs of the store ``--store`` names: in PostgreSQL for a DSN, else files in
    the state directory."""
    if config.postgres:
        # Only then: asyncpg is not loaded by a scheduler on SQLite.
        from scheduler.blobs_pg import PostgresBlobs

        return PostgresBlobs(config.store)
    return FileBlobs.in_state_dir(config.state_dir)


async def _batches(
    chunks: AsyncIterator[bytes], declared: int | None, max_bytes: int
) -> AsyncIterator[bytes]:
    """The body in batches of about WRITE_BATCH bytes, cut short by an error as soon
    as it is over the limit or longer than ``declared``."""
    size = 0
    batch = bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if declared is not None and size > declared:
            # Its space was reserved by the declared size: no more.
            raise InvalidRequest(
                f"the body is longer than its Content-Length of {declared} bytes",
                {"field": "Content-Length"},
            )
        batch += chunk
        if len(batch) >= WRITE_BATCH:
            yield bytes(batch)
            batch.clear()
    if batch:
        yield bytes(batch)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a blob may hold at most {max_bytes // (1024 * 1024)} MiB",
        {"field": "$", "max_bytes": max_bytes},
    )


# --- files in the state directory ----------------------------------------------------


class _FileUpload(Upload):
    def __init__(self, store: FileBlobs, tmp: Path, f: BinaryIO) -> None:
        self._store = store
        self._tmp = tmp
        self._f = f

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._f.write, data)

    async def place(self, digest: str, size: int) -> bool:
        def sync_and_place() -> bool:
            _sync_close(self._f)
            return self._store._place(self._tmp, digest)

        return await asyncio.to_thread(sync_and_place)

    async def discard(self) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_discard, self._f, self._tmp)


class FileBlobs(BlobStore):
    """Blobs as files below ``root``."""

    def __init__(self, root: Path, *, max_bytes: int = MAX_BLOB_BYTES) -> None:
        super().__init__(max_bytes=max_bytes)
        self.root = root

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> FileBlobs:
        return cls(state_dir / BLOBS_DIR)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def find(self, digest: str) -> Path:
        """The file of a stored blob; NotFound when there is none."""
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f"no blob {digest}", {"field": "digest"})
        return path

    async def close(self) -> None:
        pass  # files hold nothing open between calls

    async def _begin(self) -> Upload:
        tmp_dir = self.root / TMP_DIR
        await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
        tmp = tmp_dir / f"{secrets.token_hex(8)}{PART_SUFFIX}"
        f: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
        return _FileUpload(self, tmp, f)

    async def _present(self, digests: list[str]) -> set[str]:
        return await asyncio.to_thread(lambda: {d for d in digests if self.path(d).is_file()})

    async def _read(self, digest: str) -> AsyncIterator[bytes]:
        try:
            f: BinaryIO = await asyncio.to_thread(open, self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {digest}", {"field": "digest"}) from None
        try:
            # An open file outlives a sweep that deletes it: the reader gets it whole.
            while data := await asyncio.to_thread(f.read, WRITE_BATCH):
                yield data
        finally:
            f.close()

    async def _response(
        self, request: web.Request, digest: str, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        return web.FileResponse(self.find(digest), headers=headers)

    def _place(self, tmp: Path, digest: str) -> bool:
        final = self.path(digest)
        try:
            # Stored already: refresh its time, so that the sweep's grace counts from
            # this store (the job that will name it has not been told of it yet).
            os.utime(final)
        except FileNotFoundError:
            pass
        else:
            tmp.unlink(missing_ok=True)
            return False
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return True

    async def _delete(self, digest: str) -> bool:
        path = self.path(digest)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            _fsync_dir(path.parent)
            return True

        return await asyncio.to_thread(remove)

    async def sweep(
        self, named: Callable[[str], bool], *, grace_s: float, now: float | None = None
    ) -> Swept:
        cutoff = (time.time() if now is None else now) - grace_s
        await asyncio.to_thread(self._put_back_aside)
        on_disk = await asyncio.to_thread(self._digests)
        # Only blobs nothing names are worth a stat.
        maybe = await asyncio.to_thread(self._stat, [d for d in on_disk if not named(d)])
        doomed = unreferenced(maybe, named, cutoff)
        aside = await asyncio.to_thread(self._move_aside, doomed)
        wanted = {b.digest for b in aside if named(b.digest)}
        deleted, freed, kept_back = await asyncio.to_thread(self._finish, aside, wanted, cutoff)
        uploads, upload_bytes = await asyncio.to_thread(self._drop_abandoned, cutoff)
        return Swept(len(deleted), uploads, freed + upload_bytes, kept_back, tuple(deleted))

    def _digests(self) -> list[str]:
        """Every blob on disk (names only: a listing, no stat)."""
        found: list[str] = []
        try:
            shards = list(os.scandir(self.root))
        except FileNotFoundError:
            return found
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            with os.scandir(shard.path) as entries:
                for e in entries:
                    if e.name[:2] == shard.name and _DIGEST.match(e.name):
                        found.append(e.name)
        return found

    def _stat(self, digests: list[str]) -> list[BlobFile]:
        out = []
        for digest in digests:
            try:
                st = os.stat(self.path(digest))
            except FileNotFoundError:
                continue
            out.append(BlobFile(digest, st.st_size, st.st_mtime))
        return out

    def _aside_path(self, digest: str) -> Path:
        return self.root / TMP_DIR / (digest + ASIDE_SUFFIX)

    def _move_aside(self, doomed: list[BlobFile]) -> list[BlobFile]:
        if not doomed:
            return []
        (self.root / TMP_DIR).mkdir(parents=True, exist_ok=True)
        moved = []
        for blob in doomed:
            try:
                os.replace(self.path(blob.digest), self._aside_path(blob.digest))
            except FileNotFoundError:
                continue  # deleted meanwhile
            moved.append(blob)
        return moved

    def _finish(
        self, aside: list[BlobFile], wanted: set[str], cutoff: float
    ) -> tuple[list[str], int, int]:
        """Delete what was moved aside, but put back what is named or was stored again
        since. Returns (the digests deleted, bytes freed, how many were put back)."""
        deleted: list[str] = []
        freed = kept_back = 0
        for blob in aside:
            path = self._aside_path(blob.digest)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if blob.digest in wanted or st.st_mtime >= cutoff:
                self._put_back(blob.digest, path)
                kept_back += 1
                continue
            path.unlink(missing_ok=True)
            deleted.append(blob.digest)
            freed += st.st_size
        return deleted, freed, kept_back

    def _put_back(self, digest: str, aside: Path) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            # A link, not a rename: a copy stored again meanwhile (fresher) stays.
            os.link(aside, final)
        except FileExistsError:
            pass
        except OSError:
            os.replace(aside, final)
            return
        aside.unlink(missing_ok=True)

    def _put_back_aside(self) -> None:
        """Put back what a sweep that did not finish left aside."""
        try:
            entries = list(os.scandir(self.root / TMP_DIR))
        except FileNotFoundError:
            return
        for e in entries:
            digest = e.name.removesuffix(ASIDE_SUFFIX)
            if e.name.endswith(ASIDE_SUFFIX) and _DIGEST.match(digest):
                self._put_back(digest, Path(e.path))

    def _drop_abandoned(self, cutoff: float) -> tuple[int, int]:
        """Delete uploads not written to since ``cutoff`` (their writer went away)."""
        dropped = freed = 0
        try:
            entries = list(os.scandir(self.root / TMP_DIR))
        except FileNotFoundError:
            return 0, 0
        for e in entries:
            if not e.name.endswith(PART_SUFFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_mtime < cutoff:
                Path(e.path).unlink(missing_ok=True)
                dropped += 1
                freed += st.st_size
        return dropped, freed


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
