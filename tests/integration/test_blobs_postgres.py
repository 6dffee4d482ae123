"""Blobs in a real PostgreSQL database (``tests.pg``): chunked, invisible until whole,
swept by the rules of the files, and shared by every scheduler on the database. What
every backend does alike is tested in ``tests/unit/test_blob_sweep.py``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.errors import InvalidRequest, NotFound, Unavailable
from scheduler.blobs import WRITE_BATCH
from scheduler.blobs_pg import PostgresBlobs
from tests.pg import pg_cluster, pg_dsn  # noqa: F401

#: every test here is about PostgreSQL: no run on SQLite
pytestmark = pytest.mark.stores("postgresql")

MIB = 1024 * 1024
GRACE = 3600.0


class Stores:
    """Makes stores on one test's database, as several schedulers would have them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.made: list[PostgresBlobs] = []

    def new(self) -> PostgresBlobs:
        self.made.append(PostgresBlobs(self.dsn))
        return self.made[-1]


@pytest.fixture
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    made = Stores(request.getfixturevalue("pg_dsn"))
    yield made
    for store in made.made:
        await store.close()


async def _rows(dsn: str, sql: str, *args: object) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _counts(dsn: str) -> tuple[int, int, int]:
    """Rows of blobs, chunks and uploads in flight."""
    rows = await _rows(
        dsn,
        """SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM blob_chunks),
                  (SELECT count(*) FROM blob_uploads)""",
    )
    return tuple(rows[0])  # type: ignore[return-value]


async def _pieces(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def _content(store: PostgresBlobs, digest: str) -> bytes:
    return b"".join([piece async for piece in store.read(digest)])


class _Stalled:
    """An upload body that sends ``first`` and then waits for :meth:`go_on`;
    ``written`` is set once all of ``first`` is kept."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.kept = 0
        self.written = asyncio.Event()
        self._go_on = asyncio.Event()

    def wrote(self, n: int) -> None:
        self.kept += n
        if self.kept >= len(self.first):
            self.written.set()

    def go_on(self) -> None:
        self._go_on.set()

    async def body(self) -> AsyncIterator[bytes]:
        async for piece in _pieces(self.first):
            yield piece
        await self._go_on.wait()
        async for piece in _pieces(self.rest):
            yield piece


async def test_a_5_mib_blob_round_trips_in_chunks_of_about_1_mib(
    stores: Stores,
) -> None:
    store = stores.new()
    data = os.urandom(5 * MIB)
    stored = await store.put(_pieces(data), declared=len(data))
    assert (stored.digest, stored.size, stored.created) == (
        hashlib.sha256(data).hexdigest(),
        len(data),
        True,
    )
    chunks = await _rows(
        stores.dsn,
        "SELECT seq, length(data) AS n FROM blob_chunks WHERE digest = $1 ORDER BY seq",
        stored.digest,
    )
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
    assert all(c["n"] == WRITE_BATCH for c in chunks)
    pieces = [piece async for piece in store.read(stored.digest)]
    assert len(pieces) == 5 and b"".join(pieces) == data


async def test_a_download_is_streamed_with_its_length_and_a_missing_blob_is_not_found(
    stores: Stores,
) -> None:
    store = stores.new()
    data = os.urandom(3 * MIB + 7)
    digest = (await store.put(_pieces(data))).digest

    async def download(request: web.Request) -> web.StreamResponse:
        try:
            return await store.response(request, request.match_info["digest"], {"X-Mine": "1"})
        except NotFound:
            raise web.HTTPNotFound() from None

    app = web.Application()
    app.router.add_get("/{digest}", download)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        async with http.get(server.make_url(f"/{digest}")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert resp.headers["X-Mine"] == "1"
            assert await resp.read() == data
        async with http.head(server.make_url(f"/{digest}")) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
        async with http.get(server.make_url("/" + "0" * 64)) as resp:
            assert resp.status == 404


async def test_a_blob_deleted_while_it_is_downloaded_ends_the_download_short(
    stores: Stores,
) -> None:
    store, other = stores.new(), stores.new()
    data = os.urandom(24 * MIB)
    digest = (await store.put(_pieces(data, MIB))).digest

    async def download(request: web.Request) -> web.StreamResponse:
        return await store.response(request, request.match_info["digest"], {})

    app = web.Application()
    app.router.add_get("/{digest}", download)
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as http,
        http.get(server.make_url(f"/{digest}")) as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readexactly(MIB)
        # Far more is left than the socket buffers hold: most chunks are still to be
        # read from the database.
        assert await other.delete(digest)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert first == data[:MIB]


async def test_a_digest_mismatch_leaves_nothing_visible(
    stores: Stores,
) -> None:
    store, other = stores.new(), stores.new()
    data = os.urandom(3 * MIB)
    with pytest.raises(InvalidRequest):
        await store.put(_pieces(data), expect=hashlib.sha256(b"something else").hexdigest())
    assert await _counts(stores.dsn) == (0, 0, 0)
    assert not await other.exists(hashlib.sha256(data).hexdigest())


async def test_half_an_upload_is_seen_by_no_store_until_it_is_whole(
    stores: Stores,
) -> None:
    store, other = stores.new(), stores.new()
    data = os.urandom(3 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    body = _Stalled(data[: 2 * MIB], data[2 * MIB :])
    upload = asyncio.create_task(store.put(body.body(), wrote=body.wrote))
    await body.written.wait()
    assert await _counts(stores.dsn) == (0, 2, 1)
    assert not await other.exists(digest)
    with pytest.raises(NotFound):
        await _content(other, digest)
    body.go_on()
    assert (await upload).digest == digest
    assert await _counts(stores.dsn) == (1, 3, 0)
    assert await _content(other, digest) == data


async def test_an_abandoned_upload_is_swept_after_the_grace(
    stores: Stores,
) -> None:
    store, sweeper = stores.new(), stores.new()
    body = _Stalled(os.urandom(2 * MIB), b"the rest")
    upload = asyncio.create_task(store.put(body.body(), wrote=body.wrote))
    await body.written.wait()
    # Written to within the grace: under way.
    assert (await sweeper.sweep(lambda d: False, grace_s=GRACE)).uploads == 0
    # Its writer went quiet longer ago than the grace (as one whose scheduler died).
    await _rows(stores.dsn, "UPDATE blob_uploads SET written_at = $1", time.time() - 2 * GRACE)
    swept = await sweeper.sweep(lambda d: False, grace_s=GRACE)
    assert (swept.blobs, swept.uploads, swept.freed_bytes) == (0, 1, 2 * MIB)
    assert await _counts(stores.dsn) == (0, 0, 0)
    # Should the writer come back after all, it is refused and leaves nothing.
    body.go_on()
    with pytest.raises(Unavailable):
        await upload
    assert await _counts(stores.dsn) == (0, 0, 0)


async def test_two_stores_on_one_database_see_each_others_blobs(
    stores: Stores,
) -> None:
    first, second = stores.new(), stores.new()
    data = os.urandom(MIB + 3)
    stored = await first.put(_pieces(data))
    assert await second.exists_many([stored.digest, "0" * 64]) == {stored.digest}
    assert await _content(second, stored.digest) == data
    again = await second.put(_pieces(data))
    assert (again.digest, again.created) == (stored.digest, False)
    assert await second.delete(stored.digest)
    assert not await first.exists(stored.digest)
    assert await _counts(stores.dsn) == (0, 0, 0)


async def test_the_same_content_stored_at_once_by_two_stores_is_kept_once(
    stores: Stores,
) -> None:
    first, second = stores.new(), stores.new()
    data = os.urandom(2 * MIB + 1)
    both = await asyncio.gather(first.put(_pieces(data)), second.put(_pieces(data)))
    assert {s.digest for s in both} == {hashlib.sha256(data).hexdigest()}
    assert sorted(s.created for s in both) == [False, True]
    assert await _counts(stores.dsn) == (1, 3, 0)


async def test_a_blob_stored_again_while_it_is_aside_stays_and_its_old_copy_goes(
    stores: Stores,
) -> None:
    sweeper, uploader = stores.new(), stores.new()
    data = os.urandom(MIB + 5)
    digest = (await sweeper.put(_pieces(data))).digest
    await _rows(stores.dsn, "UPDATE blobs SET stored_at = $1", time.time() - 2 * GRACE)
    asked: list[str] = []
    storing: list[asyncio.Task[Any]] = []

    def named(d: str) -> bool:
        # Asked the third time once the blob is aside: an agent stores the same
        # content then (another scheduler, so it is not named here yet).
        asked.append(d)
        if len(asked) == 3:
            storing.append(asyncio.create_task(uploader.put(_pieces(data))))
        return False

    swept = await sweeper.sweep(named, grace_s=GRACE)
    again = await storing[0]
    # The old copy went; the new one is a blob of its own, whole, and stays.
    assert (swept.blobs, swept.kept_back, again.created) == (1, 0, True)
    assert await sweeper.exists(digest)
    assert await _content(sweeper, digest) == data
    assert await _counts(stores.dsn) == (1, 2, 0)
