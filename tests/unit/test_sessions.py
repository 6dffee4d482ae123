"""Dashboard sessions: each token's are capped on their own, and one token's logins
never end another token's session. The rules hold in memory and in PostgreSQL alike;
in PostgreSQL, every scheduler sharing the database sees every session."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from common.errors import TooManyRequests, Unavailable
from scheduler.sessions import SESSION_TTL_S, SessionBackend, Sessions
from scheduler.sessions_pg import PostgresSessions
from tests.support import wait_until

Make = Callable[..., SessionBackend]


@pytest.fixture(params=["memory", "postgresql"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Makes a backend with the given caps: in memory, or in a fresh database."""
    made: list[SessionBackend] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else ""

    def backend(**caps: int) -> SessionBackend:
        book = PostgresSessions(dsn, **caps) if dsn else Sessions(**caps)
        made.append(book)
        return book

    yield backend
    for book in made:
        await book.stop()


@pytest.fixture
async def schedulers(pg_dsn: str) -> AsyncIterator[Callable[..., PostgresSessions]]:
    """Makes PostgreSQL sessions on one database, as several schedulers would have."""
    made: list[PostgresSessions] = []

    def scheduler(**options: Any) -> PostgresSessions:
        made.append(PostgresSessions(pg_dsn, **options))
        return made[-1]

    yield scheduler
    for book in made:
        await book.stop()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def test_a_tokens_oldest_session_ends_past_its_cap(make: Make) -> None:
    book = make(per_token=3, total=100)
    other = await book.open("admin")
    opened = [await book.open("reader") for _ in range(5)]
    assert [await book.get(s.id) is not None for s in opened] == [False, False, True, True, True]
    assert await book.get(other.id) == other


async def test_when_every_slot_is_taken_a_new_login_is_refused_not_another_tokens_session(
    make: Make,
) -> None:
    book = make(per_token=2, total=4)
    held = [await book.open(token) for token in ("a", "a", "b", "b")]
    with pytest.raises(TooManyRequests):
        await book.open("c")
    assert [await book.get(s.id) for s in held] == held
    # A token at its own cap still replaces its own oldest session.
    newer = await book.open("a")
    assert await book.get(held[0].id) is None and await book.get(newer.id) == newer


async def test_closing_a_session_frees_its_tokens_slot(make: Make) -> None:
    book = make(per_token=1, total=10)
    first = await book.open("a")
    await book.close(first.id)
    assert await book.get(first.id) is None
    second = await book.open("a")
    assert await book.get(second.id) == second


async def test_an_unknown_or_malformed_id_is_no_session(make: Make) -> None:
    book = make()
    await book.open("a")
    for session_id in ("nope", "", "caf\u00e9", "\udcff"):
        assert await book.get(session_id) is None
        await book.close(session_id)


# --- PostgreSQL: several schedulers on one database ------------------------------------


async def test_a_session_opened_on_one_scheduler_is_found_on_another(
    schedulers: Callable[..., PostgresSessions],
) -> None:
    one, other = schedulers(), schedulers()
    session = await one.open("a")
    assert await other.get(session.id) == session


async def test_a_session_closed_on_one_scheduler_ends_on_another_within_the_cache_time(
    schedulers: Callable[..., PostgresSessions],
) -> None:
    one, other = schedulers(), schedulers(cache_s=0.2)
    session = await one.open("a")
    assert await other.get(session.id) == session
    await one.close(session.id)
    # Here at once, though this scheduler remembered the session it opened.
    assert await one.get(session.id) is None
    assert await wait_until(lambda: _ended(other, session.id), timeout=5.0)


async def _ended(book: SessionBackend, session_id: str) -> bool:
    return await book.get(session_id) is None


async def test_a_lookup_is_trusted_for_the_cache_time_without_asking_the_database(
    schedulers: Callable[..., PostgresSessions], db: Any
) -> None:
    book = schedulers(cache_s=3600.0)
    session = await book.open("a")
    await db.execute("DELETE FROM sessions")
    assert await book.get(session.id) == session
    assert await schedulers().get(session.id) is None


async def test_the_per_token_cap_counts_the_sessions_opened_on_every_scheduler(
    schedulers: Callable[..., PostgresSessions],
) -> None:
    one, other = schedulers(per_token=3), schedulers(per_token=3)
    opened = [await (one if i % 2 else other).open("a") for i in range(5)]
    fresh = schedulers(cache_s=0)
    assert [await fresh.get(s.id) is not None for s in opened] == [False, False, True, True, True]


async def test_logins_on_two_schedulers_at_once_keep_the_cap(
    schedulers: Callable[..., PostgresSessions], db: Any
) -> None:
    # Both make the table on their first login, at once, on a new database.
    one, other = schedulers(per_token=5), schedulers(per_token=5)
    await asyncio.gather(*(book.open("a") for book in (one, other) for _ in range(20)))
    assert await db.fetchval("SELECT count(*) FROM sessions") == 5


async def test_a_session_past_its_end_is_refused_and_deleted(
    schedulers: Callable[..., PostgresSessions], db: Any
) -> None:
    session = await schedulers().open("a")
    now = await db.fetchval("SELECT extract(epoch FROM now())::double precision")
    # Expiry is the database's wall clock, which every scheduler reads alike.
    assert now + SESSION_TTL_S - 60 < session.expires <= now + SESSION_TTL_S + 60
    await db.execute("UPDATE sessions SET expires = $1", now - 1)
    assert await schedulers().get(session.id) is None
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_the_database_keeps_a_digest_of_the_session_id_not_the_id(
    schedulers: Callable[..., PostgresSessions], db: Any
) -> None:
    session = await schedulers().open("tokendigest")
    row = await db.fetchrow("SELECT * FROM sessions")
    assert row["id_digest"] == hashlib.sha256(session.id.encode()).hexdigest()
    assert session.id not in [str(v) for v in row.values()]
    assert (row["csrf"], row["token_digest"]) == (session.csrf, "tokendigest")


async def test_a_database_out_of_reach_answers_unavailable(tmp_path: Any) -> None:
    book = PostgresSessions(f"postgresql://postgres@/none?host={tmp_path}&port=1")
    try:
        with pytest.raises(Unavailable):
            await book.get("some-session-id")
        with pytest.raises(Unavailable):
            await book.open("a")
    finally:
        await book.stop()
