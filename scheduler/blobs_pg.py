"""Blobs in PostgreSQL: every scheduler sharing the database serves every blob.

A blob is a row of ``blobs`` (digest, size, when it was last stored) and its content
the rows of ``blob_chunks``, about ``WRITE_BATCH`` (1 MiB) each, numbered from 0. The
rules are those of the files (:mod:`scheduler.blobs`), kept by transactions:

- An upload writes its chunks under its own id (a row of ``blob_uploads``, whose
  ``written_at`` each chunk refreshes). Once the whole body arrived and its digest is
  known, one transaction inserts the ``blobs`` row and renames the chunks to the
  digest, or, when that blob is there already, refreshes its ``stored_at`` and drops
  them. Chunks are under a digest exactly when its ``blobs`` row is, so a half upload
  is never visible. An upload not written to for the grace is abandoned: the sweep
  deletes it, and its writer, should it come back, is refused.
- The sweep moves a blob aside (its row into ``blob_aside``, its chunks renamed) in one
  transaction, asks again whether a job names it, then puts it back or deletes it, as
  the files are renamed into ``tmp/``. A crash in between leaves it aside, and the next
  sweep puts it back.
- A download reads one chunk at a time, each in its own short query: a slow client
  holds no connection and no transaction open. A blob deleted while it is sent (no job
  named it) ends the response short; the client's digest check refuses it.

Times are the database server's clock, so that schedulers on several hosts agree on
when a blob was stored.

Parameters of :class:`PostgresBlobs` and their defaults:

- ``dsn``: the database (a ``postgresql://`` DSN, as ``--store`` takes it).
- ``max_bytes``: as for every blob store (``MAX_BLOB_BYTES``).
- ``pool_size``: connections of its own pool at most (``POOL_SIZE``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import asyncpg
from aiohttp import web

from common.errors import NotFound, Unavailable
from scheduler import pgconnect
from scheduler.blobs import MAX_BLOB_BYTES, BlobFile, BlobStore, Swept, Upload, unreferenced

log = logging.getLogger(__name__)

#: connections of the blob store's own pool at most: each upload, download and sweep
#: step takes one only for a query at a time
POOL_SIZE = 4
#: the transaction-scoped advisory lock held while the tables are created: two
#: schedulers opening a new database at once would otherwise race on the catalogue
#: ("blobs" in ASCII)
SCHEMA_LOCK = 0x626C6F6273
#: the prefix of the id chunks are kept under while their upload is written
PART_PREFIX = "part:"
#: the prefix of the id a swept blob's chunks are kept under while they are aside
ASIDE_PREFIX = "swept:"
#: the database server's clock, in seconds since the epoch
NOW_SQL = "extract(epoch FROM clock_timestamp())::double precision"

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest text PRIMARY KEY, size bigint NOT NULL, stored_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_stored_at ON blobs (stored_at);
CREATE TABLE IF NOT EXISTS blob_chunks (
    digest text, seq int, data bytea, PRIMARY KEY (digest, seq)
);
CREATE TABLE IF NOT EXISTS blob_uploads (
    id text PRIMARY KEY, size bigint NOT NULL DEFAULT 0,
    written_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_aside (
    digest text PRIMARY KEY, size bigint NOT NULL, stored_at double precision NOT NULL
);
"""
# Blobs are archives, compressed already: storing chunks as they are spares
# PostgreSQL an attempt at compressing each. Only on a new table: ALTER TABLE takes
# a lock that would stop the readers of a live one.
NEW_CHUNKS = "ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL"


class _PostgresUpload(Upload):
    def __init__(self, store: PostgresBlobs, upload_id: str) -> None:
        self._store = store
        self._id = upload_id
        self._seq = 0

    async def write(self, data: bytes) -> None:
        # The chunk goes in only while its upload is not swept as abandoned (a chunk
        # without its upload row would never be swept).
        status = await self._store._execute(
            f"""WITH u AS (
                    UPDATE blob_uploads SET written_at = {NOW_SQL}, size = size + $3
                    WHERE id = $1 RETURNING id)
                INSERT INTO blob_chunks (digest, seq, data) SELECT id, $2, $4 FROM u""",
            self._id,
            self._seq,
            len(data),
            data,
        )
        if status != "INSERT 0 1":
            raise _given_up()
        self._seq += 1

    async def place(self, digest: str, size: int) -> bool:
        async with self._store._transaction() as conn:
            mine = await conn.fetchval(
                "DELETE FROM blob_uploads WHERE id = $1 RETURNING id", self._id
            )
            if mine is None:
                raise _given_up()
            created = await _insert_or_refresh(conn, digest, size)
            if created:
                await conn.execute(
                    "UPDATE blob_chunks SET digest = $2 WHERE digest = $1", self._id, digest
                )
            else:
                await conn.execute("DELETE FROM blob_chunks WHERE digest = $1", self._id)
        return created

    async def discard(self) -> None:
        async with self._store._transaction() as conn:
            await conn.execute("DELETE FROM blob_uploads WHERE id = $1", self._id)
            await conn.execute("DELETE FROM blob_chunks WHERE digest = $1", self._id)


class PostgresBlobs(BlobStore):
    """Blobs in chunks in the PostgreSQL database ``dsn``; its pool and tables are
    made on first use."""

    def __init__(
        self, dsn: str, *, max_bytes: int = MAX_BLOB_BYTES, pool_size: int = POOL_SIZE
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        self.dsn = dsn
        self._pool = pgconnect.LazyPool(dsn, _prepare, min_size=1, max_size=pool_size)

    async def close(self) -> None:
        await self._pool.close()

    async def _connected(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = await self._pool.get()
        return pool

    async def _execute(self, sql: str, *args: Any) -> str:
        pool = await self._connected()
        return str(await pool.execute(sql, *args))

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = await self._connected()
        return list(await pool.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        pool = await self._connected()
        return await pool.fetchval(sql, *args)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._connected()
        async with pool.acquire() as conn, conn.transaction():
            yield conn

    # --- uploads and reads -----------------------------------------------------------

    async def _begin(self) -> Upload:
        upload_id = PART_PREFIX + secrets.token_hex(8)
        await self._execute(
            f"INSERT INTO blob_uploads (id, written_at) VALUES ($1, {NOW_SQL})", upload_id
        )
        return _PostgresUpload(self, upload_id)

    async def _present(self, digests: list[str]) -> set[str]:
        rows = await self._fetch("SELECT digest FROM blobs WHERE digest = ANY($1::text[])", digests)
        return {r["digest"] for r in rows}

    async def _size(self, digest: str) -> int:
        size = await self._fetchval("SELECT size FROM blobs WHERE digest = $1", digest)
        if size is None:
            raise NotFound(f"no blob {digest}", {"field": "digest"})
        return int(size)

    async def _chunks(self, digest: str, size: int) -> AsyncIterator[bytes]:
        """The ``size`` bytes of a blob, a chunk per query; NotFound when it is deleted
        before they all came."""
        sent = seq = 0
        while sent < size:
            data = await self._fetchval(
                "SELECT data FROM blob_chunks WHERE digest = $1 AND seq = $2", digest, seq
            )
            if data is None:
                raise NotFound(f"blob {digest} was deleted while it was read", {"field": "digest"})
            sent += len(data)
            seq += 1
            yield data

    async def _read(self, digest: str) -> AsyncIterator[bytes]:
        size = await self._size(digest)
        async for data in self._chunks(digest, size):
            yield data

    async def _response(
        self, request: web.Request, digest: str, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        size = await self._size(digest)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            async for data in self._chunks(digest, size):
                await resp.write(data)
        except NotFound as e:
            # The status is sent: all that is left is to end the body short.
            log.warning("%s; the download is cut short", e.message)
            resp.force_close()
            return resp
        await resp.write_eof()
        return resp

    async def _delete(self, digest: str) -> bool:
        async with self._transaction() as conn:
            gone = await conn.fetchval(
                "DELETE FROM blobs WHERE digest = $1 RETURNING digest", digest
            )
            if gone is not None:
                await conn.execute("DELETE FROM blob_chunks WHERE digest = $1", digest)
        return gone is not None

    # --- the sweep -------------------------------------------------------------------

    async def sweep(
        self, named: Callable[[str], bool], *, grace_s: float, now: float | None = None
    ) -> Swept:
        if now is None:
            now = float(await self._fetchval(f"SELECT {NOW_SQL}"))
        cutoff = now - grace_s
        leftovers = await self._fetch("SELECT digest FROM blob_aside")
        await self._put_back([r["digest"] for r in leftovers])
        # Only blobs stored before the cutoff can go: the young are not even listed.
        old = await self._fetch(
            "SELECT digest, size, stored_at FROM blobs WHERE stored_at < $1", cutoff
        )
        maybe = [BlobFile(r["digest"], r["size"], r["stored_at"]) for r in old]
        doomed = unreferenced([b for b in maybe if not named(b.digest)], named, cutoff)
        aside, stored_again = await self._move_aside(doomed, cutoff)
        wanted = {b.digest for b in aside if named(b.digest)}
        kept_back = stored_again + await self._put_back(list(wanted))
        unwanted = [b.digest for b in aside if b.digest not in wanted]
        deleted, freed = await self._drop_aside(unwanted)
        uploads, upload_bytes = await self._drop_abandoned(cutoff)
        return Swept(len(deleted), uploads, freed + upload_bytes, kept_back, tuple(deleted))

    async def _move_aside(
        self, doomed: list[BlobFile], cutoff: float
    ) -> tuple[list[BlobFile], int]:
        """Move aside those of ``doomed`` still last stored before ``cutoff``; returns
        them and how many others were stored again since they were listed."""
        if not doomed:
            return [], 0
        digests = [b.digest for b in doomed]
        async with self._transaction() as conn:
            # The row lock makes a store of the same content wait for this transaction,
            # then find no blob and place its own chunks.
            rows = await conn.fetch(
                """DELETE FROM blobs WHERE digest = ANY($1::text[]) AND stored_at < $2
                   RETURNING digest, size, stored_at""",
                digests,
                cutoff,
            )
            moved = [r["digest"] for r in rows]
            await conn.execute(
                """INSERT INTO blob_aside (digest, size, stored_at)
                   SELECT * FROM unnest($1::text[], $2::bigint[], $3::double precision[])""",
                moved,
                [r["size"] for r in rows],
                [r["stored_at"] for r in rows],
            )
            await conn.execute(
                "UPDATE blob_chunks SET digest = $2 || digest WHERE digest = ANY($1::text[])",
                moved,
                ASIDE_PREFIX,
            )
            still = await conn.fetchval(
                "SELECT count(*) FROM blobs WHERE digest = ANY($1::text[])",
                list(set(digests) - set(moved)),
            )
        return [BlobFile(r["digest"], r["size"], r["stored_at"]) for r in rows], int(still)

    async def _put_back(self, digests: list[str]) -> int:
        """Put back blobs moved aside, unless the same content was stored meanwhile
        (that fresher copy stays); returns how many were aside."""
        if not digests:
            return 0
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "DELETE FROM blob_aside WHERE digest = ANY($1::text[]) RETURNING *", digests
            )
            for r in rows:
                back = await conn.fetchval(
                    """INSERT INTO blobs (digest, size, stored_at) VALUES ($1, $2, $3)
                       ON CONFLICT (digest) DO NOTHING RETURNING digest""",
                    r["digest"],
                    r["size"],
                    r["stored_at"],
                )
                if back is not None:
                    await conn.execute(
                        "UPDATE blob_chunks SET digest = $2 WHERE digest = $1",
                        ASIDE_PREFIX + r["digest"],
                        r["digest"],
                    )
                else:
                    await conn.execute(
                        "DELETE FROM blob_chunks WHERE digest = $1", ASIDE_PREFIX + r["digest"]
                    )
        return len(rows)

    async def _drop_aside(self, digests: list[str]) -> tuple[list[str], int]:
        """Delete what was moved aside; returns the digests deleted and bytes freed."""
        if not digests:
            return [], 0
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "DELETE FROM blob_aside WHERE digest = ANY($1::text[]) RETURNING digest, size",
                digests,
            )
            await conn.execute(
                "DELETE FROM blob_chunks WHERE digest = ANY($1::text[])",
                [ASIDE_PREFIX + r["digest"] for r in rows],
            )
        return [r["digest"] for r in rows], sum(r["size"] for r in rows)

    async def _drop_abandoned(self, cutoff: float) -> tuple[int, int]:
        """Delete uploads not written to since ``cutoff`` (their writer went away)."""
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "DELETE FROM blob_uploads WHERE written_at < $1 RETURNING id, size", cutoff
            )
            if rows:
                await conn.execute(
                    "DELETE FROM blob_chunks WHERE digest = ANY($1::text[])",
                    [r["id"] for r in rows],
                )
        return len(rows), sum(r["size"] for r in rows)


async def _prepare(conn: asyncpg.Connection) -> None:
    """Create the tables that are missing, in one transaction under ``SCHEMA_LOCK``."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        new = await conn.fetchval("SELECT to_regclass('blob_chunks') IS NULL")
        await conn.execute(SCHEMA)
        if new:
            await conn.execute(NEW_CHUNKS)


async def _insert_or_refresh(conn: asyncpg.Connection, digest: str, size: int) -> bool:
    """Make the blob ``digest`` be there, last stored now; True when it is new.

    Two statements, each retried once the other found its row gone: a sweep may move
    the blob aside between them, and then this store places it anew."""
    while True:
        inserted = await conn.fetchval(
            f"""INSERT INTO blobs (digest, size, stored_at) VALUES ($1, $2, {NOW_SQL})
                ON CONFLICT (digest) DO NOTHING RETURNING digest""",
            digest,
            size,
        )
        if inserted is not None:
            return True
        # Stored already: refresh its time, so that the sweep's grace counts from this
        # store (the job that will name it has not been told of it yet).
        refreshed = await conn.fetchval(
            f"UPDATE blobs SET stored_at = {NOW_SQL} WHERE digest = $1 RETURNING digest", digest
        )
        if refreshed is not None:
            return False


def _given_up() -> Unavailable:
    return Unavailable(
        "the upload was swept as abandoned before it was finished; send it again",
        {"field": "$"},
    )
