"""Dashboard sessions in PostgreSQL: every scheduler sharing the database knows every
session, so a browser stays logged in when a load balancer or a failover sends it to
another scheduler, a standby included.

The rules are those of the in-memory sessions (:mod:`scheduler.sessions`). A session is
a row of ``sessions``:

- ``id_digest``: sha256 of the session id. The id is the cookie's value, a secret that
  logs a browser in; the database keeps only what cannot be turned back into it.
- ``csrf``, ``token_digest``: as in :class:`scheduler.sessions.Session`.
- ``expires``: when it ends, in seconds since the epoch on the database server's clock,
  so that schedulers on several hosts agree on it.

Logins take a transaction-scoped advisory lock (``OPEN_LOCK``): the per-token and total
caps are counted and kept in one transaction, whichever scheduler the logins reach.
Sessions are not fenced by the leader's epoch: a standby opens and closes them too.

``get`` runs on every cookie-authenticated request, so what it read is kept in this
process for ``cache_s`` seconds (never past the session's end) and most requests ask
nothing of the database. The price: a session closed on one scheduler (a logout, or
evicted by its token's cap) may stay usable on another for at most ``cache_s``. A
revoked token is not delayed by it: its token is looked up again on every request.
Closing a session on this scheduler ends it here at once.

Parameters of :class:`PostgresSessions` and their defaults:

- ``dsn``: the database (a ``postgresql://`` DSN, as ``--store`` takes it).
- ``per_token``, ``total``: the caps (``MAX_SESSIONS_PER_TOKEN``, ``MAX_SESSIONS``).
- ``cache_s``: how long a lookup is trusted in this process (``CACHE_S``).
- ``pool_size``: connections of its own pool at most (``POOL_SIZE``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import asyncpg

from common.errors import Unavailable
from scheduler import pgconnect
from scheduler.sessions import (
    MAX_SESSIONS,
    MAX_SESSIONS_PER_TOKEN,
    SESSION_TTL_S,
    Session,
    SessionBackend,
    new_session,
    too_many_sessions,
)

log = logging.getLogger(__name__)

#: how long a lookup is trusted without asking the database again (seconds): the most
#: a session closed on another scheduler stays usable here
CACHE_S = 2.0
#: lookups kept at most (a memory bound; the oldest go first)
CACHE_MAX = 4096
#: connections of the sessions' own pool at most: a lookup or a login holds one only
#: for its queries
POOL_SIZE = 3
#: longest one statement, or the wait for a connection, may take (seconds): past it the
#: request answers 503 rather than hang
COMMAND_TIMEOUT_S = 10.0
#: how the server knows these connections, and how long a transaction left idle may
#: keep the login lock (a hung scheduler must not stop everyone's logins for long)
SERVER_SETTINGS = {
    "application_name": "berth-sessions",
    "idle_in_transaction_session_timeout": "5000",
}
#: the transaction-scoped advisory lock held while the table is created: two schedulers
#: opening a new database at once would otherwise race on the catalogue ("sessions")
SCHEMA_LOCK = 0x73657373696F6E73
#: the transaction-scoped advisory lock every login holds while it counts and evicts
#: ("login")
OPEN_LOCK = 0x6C6F67696E
#: the database server's clock, in seconds since the epoch
NOW_SQL = "extract(epoch FROM clock_timestamp())::double precision"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_digest text PRIMARY KEY,
    csrf text NOT NULL,
    token_digest text NOT NULL,
    expires double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_token ON sessions (token_digest, expires);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires);
"""

#: what a database that went away, or cannot be reached, raises
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)


class _Seen(NamedTuple):
    #: None: no live session has this id
    session: Session | None
    #: trusted until then (monotonic)
    until: float


def id_digest(session_id: str) -> str:
    """What the database keeps of a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class PostgresSessions(SessionBackend):
    """Sessions in the PostgreSQL database ``dsn``; its pool and table are made on
    first use."""

    def __init__(
        self,
        dsn: str,
        *,
        per_token: int = MAX_SESSIONS_PER_TOKEN,
        total: int = MAX_SESSIONS,
        cache_s: float = CACHE_S,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.dsn = dsn
        self.per_token = per_token
        self.total = total
        self.cache_s = cache_s
        self._pool = pgconnect.LazyPool(
            dsn,
            _prepare,
            min_size=1,
            max_size=pool_size,
            server_settings=dict(SERVER_SETTINGS),
            command_timeout=COMMAND_TIMEOUT_S,
            timeout=COMMAND_TIMEOUT_S,
        )
        #: id digest -> what a lookup found, oldest first
        self._seen: dict[str, _Seen] = {}
        #: bumped whenever this process ends a session: a lookup under way when it
        #: did is not remembered (it may have read the row before it was deleted)
        self._ended = 0

    async def open(self, token_digest: str) -> Session:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", OPEN_LOCK)
            # A statement of its own after the lock: one that also took it would count
            # from a snapshot made before it waited.
            now, own, total = await conn.fetchrow(
                f"""SELECT {NOW_SQL},
                        (SELECT count(*) FROM sessions WHERE token_digest = $1),
                        (SELECT count(*) FROM sessions)""",
                token_digest,
            )
            evicted: list[str] = []
            if own >= self.per_token:
                evicted = [
                    r["id_digest"]
                    for r in await conn.fetch(
                        """DELETE FROM sessions WHERE id_digest IN (
                               SELECT id_digest FROM sessions WHERE token_digest = $1
                               ORDER BY expires, id_digest LIMIT $2)
                           RETURNING id_digest""",
                        token_digest,
                        own - self.per_token + 1,
                    )
                ]
                total -= len(evicted)
            if total >= self.total:
                total -= await conn.fetchval(
                    """WITH gone AS (DELETE FROM sessions WHERE expires < $1 RETURNING 1)
                       SELECT count(*) FROM gone""",
                    now,
                )
            # Refused only once the evictions and the sweep are committed, as in memory.
            session: Session | None = None
            if total < self.total:
                session = new_session(token_digest, now + SESSION_TTL_S)
                await conn.execute(
                    """INSERT INTO sessions (id_digest, csrf, token_digest, expires)
                       VALUES ($1, $2, $3, $4)""",
                    id_digest(session.id),
                    session.csrf,
                    token_digest,
                    session.expires,
                )
        self._forget(evicted)
        if session is None:
            raise too_many_sessions()
        self._remember(id_digest(session.id), session, SESSION_TTL_S)
        return session

    async def get(self, session_id: str) -> Session | None:
        # Ids are URL-safe base64: anything else was never one (and may not encode).
        if not session_id.isascii():
            return None
        digest = id_digest(session_id)
        seen = self._seen.get(digest)
        if seen is not None and seen.until > time.monotonic():
            return seen.session
        ended = self._ended
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"""SELECT csrf, token_digest, expires, {NOW_SQL} AS now
                    FROM sessions WHERE id_digest = $1""",
                digest,
            )
            if row is not None and row["expires"] < row["now"]:
                await conn.execute(
                    "DELETE FROM sessions WHERE id_digest = $1 AND expires < $2",
                    digest,
                    row["now"],
                )
                row = None
        session: Session | None = None
        left = self.cache_s
        if row is not None:
            session = Session(session_id, row["csrf"], row["token_digest"], row["expires"])
            left = row["expires"] - row["now"]
        if ended == self._ended:
            self._remember(digest, session, left)
        return session

    async def close(self, session_id: str) -> None:
        if not session_id.isascii():
            return
        digest = id_digest(session_id)
        self._forget([digest])
        async with self._connection() as conn:
            await conn.execute("DELETE FROM sessions WHERE id_digest = $1", digest)

    async def stop(self) -> None:
        await self._pool.close()

    # --- the cache -------------------------------------------------------------------

    def _remember(self, digest: str, session: Session | None, left_s: float) -> None:
        if self.cache_s <= 0:
            return
        self._seen.pop(digest, None)
        while len(self._seen) >= CACHE_MAX:
            del self._seen[next(iter(self._seen))]
        self._seen[digest] = _Seen(session, time.monotonic() + min(self.cache_s, left_s))

    def _forget(self, digests: list[str]) -> None:
        if not digests:
            return
        self._ended += 1
        for digest in digests:
            self._seen.pop(digest, None)

    # --- the database ----------------------------------------------------------------

    async def _connected(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = await self._pool.get()
        return pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; a database out of reach is a 503, not a 500."""
        try:
            pool = await self._connected()
            async with pool.acquire(timeout=COMMAND_TIMEOUT_S) as conn:
                yield conn
        except _UNREACHABLE as e:
            log.warning("dashboard sessions: the database cannot be reached: %s", e)
            raise Unavailable(
                "the database that keeps dashboard sessions cannot be reached; try again"
            ) from e


async def _prepare(conn: asyncpg.Connection) -> None:
    """Create what is missing, in one transaction under ``SCHEMA_LOCK``."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(SCHEMA)
