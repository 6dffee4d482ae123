"""Who leads, on a PostgreSQL store: a session advisory lock held on a connection of
its own, and the list of schedulers sharing the database.

The lock is the election: PostgreSQL gives it to one session at a time and takes it
back when that session ends, whether the scheduler stopped, crashed or its host went
away. The connection is never one from a pool (a pool's reset unlocks advisory locks).
It is pinged often, and the server ends it when it stays idle: a scheduler that hangs
(paused, swapped out, partitioned) loses the lock within ``IDLE_SESSION_TIMEOUT_MS``,
and a standby takes it. The hung one cannot write after that: every write transaction
checks the epoch the new leader bumped (``scheduler.store.postgres``). It also stops
acting as leader as soon as its last good round trip is older than ``LEASE_S``.

Every scheduler, leading or not, notes itself in the ``schedulers`` table once a
``PING_S``: id, advertised URL, role, epoch, applied index and when it was last seen,
which ``GET /api/v1/schedulers`` lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC
from typing import Any

import asyncpg

from common.codec import rfc3339
from scheduler import pgconnect

log = logging.getLogger(__name__)

#: the advisory lock's key: "berthlead" in ASCII (the schema's lock is another key)
LOCK_KEY = 0x62657274686C656164 & 0x7FFFFFFFFFFFFFFF
#: how often a standby tries to take the lock, and the leader pings its connection
PING_S = 0.25
#: the server ends the lock's session when it stays idle this long (milliseconds)
IDLE_SESSION_TIMEOUT_MS = 2000
#: a leader whose last good round trip is older than this stops acting as leader
LEASE_S = 3.0
#: a scheduler not seen for this long is left out of the list
FORGET_AFTER_S = 60.0
#: an answer from the database slower than this counts as lost
ROUND_TRIP_TIMEOUT_S = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedulers (
    id text PRIMARY KEY, url text NOT NULL, role text NOT NULL, epoch bigint NOT NULL,
    applied_index bigint NOT NULL, seen timestamptz NOT NULL
)
"""
_NOTE = """
INSERT INTO schedulers (id, url, role, epoch, applied_index, seen)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (id) DO UPDATE SET url = excluded.url, role = excluded.role,
    epoch = excluded.epoch, applied_index = excluded.applied_index, seen = excluded.seen
"""
#: the role as the leader row says: a leader that stopped noting itself may still say
#: "leader" in its own line, but the lead is the holder's of the current epoch
_LIST = """
SELECT s.id, s.url,
    CASE WHEN s.id = l.holder AND s.epoch = l.epoch THEN 'leader' ELSE 'standby' END AS role,
    s.epoch, s.applied_index, s.seen
FROM schedulers s CROSS JOIN (SELECT holder, epoch FROM leader WHERE id = 1) l
WHERE s.seen > now() - make_interval(secs => $1) ORDER BY s.id
"""
#: keepalives bound how long a connection to a host that went away looks alive
_SETTINGS = {
    "application_name": "berth-leader-lock",
    "idle_session_timeout": str(IDLE_SESSION_TIMEOUT_MS),
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "2",
}


class LeaderLock:
    """The advisory lock on its own connection, and this scheduler's line in the list."""

    def __init__(self, dsn: str, scheduler_id: str, url: str) -> None:
        self.dsn = dsn
        self.scheduler_id = scheduler_id
        self.url = url
        self._conn: Any = None
        # One operation at a time on the connection: campaign, ping, note and listing
        # come from different tasks.
        self._busy = asyncio.Lock()
        self.held = False
        #: monotonic time of the last round trip that succeeded while holding the lock
        self.last_ok = 0.0

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self.held = False
            self._conn = await pgconnect.connect(self.dsn, server_settings=dict(_SETTINGS))
            await self._conn.execute(_SCHEMA)
        return self._conn

    async def try_take(self) -> bool:
        """Take the lock if nobody holds it; True once this scheduler holds it."""
        try:
            async with self._busy:
                conn = await self._connection()
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", LOCK_KEY, timeout=ROUND_TRIP_TIMEOUT_S
                )
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            log.warning("cannot reach the database to campaign: %s", e)
            await self.drop()
            return False
        if got:
            self.held = True
            self.last_ok = time.monotonic()
        return bool(got)

    async def ping(self) -> bool:
        """A round trip on the lock's connection; False once the lock is lost."""
        if not self.held or self._conn is None or self._conn.is_closed():
            self.held = False
            return False
        try:
            async with self._busy:
                await self._conn.fetchval("SELECT 1", timeout=ROUND_TRIP_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            log.error("lost the database connection that holds the lead: %s", e)
            await self.drop()
            return False
        self.last_ok = time.monotonic()
        return True

    def fresh(self) -> bool:
        """Whether the lock is held and was confirmed within the lease."""
        return self.held and time.monotonic() - self.last_ok < LEASE_S

    async def drop(self) -> None:
        """Let go of the lock (closing its session releases it)."""
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def note(self, role: str, epoch: int, applied_index: int) -> None:
        """Say who this scheduler is and how far it got (best effort)."""
        try:
            async with self._busy:
                conn = await self._connection()
                await conn.execute(
                    _NOTE,
                    self.scheduler_id,
                    self.url,
                    role,
                    epoch,
                    applied_index,
                    timeout=ROUND_TRIP_TIMEOUT_S,
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
            log.warning("cannot note this scheduler in the database: %s", e)
            if not self.held:
                await self.drop()
            return
        if self.held:
            self.last_ok = time.monotonic()

    async def listing(self) -> list[dict[str, Any]]:
        """Every scheduler seen lately, as GET /api/v1/schedulers lists them."""
        async with self._busy:
            conn = await self._connection()
            rows = await conn.fetch(_LIST, FORGET_AFTER_S, timeout=ROUND_TRIP_TIMEOUT_S)
        return [
            {
                "id": r["id"],
                "url": r["url"],
                "role": r["role"],
                "epoch": r["epoch"],
                "applied_index": r["applied_index"],
                "seen": rfc3339(r["seen"].astimezone(UTC)),
            }
            for r in rows
        ]
