"""Who leads, on a PostgreSQL store: a session advisory lock held on a connection of
its own, and the list of schedulers sharing the database.

The lock is the election: PostgreSQL gives it to one session at a time and takes it
back when that session ends, whether the scheduler stopped, crashed or its host went
away. The connection is never one from a pool (a pool's reset unlocks advisory locks).
The server ends it when it stays idle for ``IDLE_SESSION_TIMEOUT_MS``: a scheduler that
hangs (paused, swapped out, partitioned) loses the lock within that time, and a standby
takes it. The hung one cannot write after that: every write transaction checks the
epoch the new leader bumped (``scheduler.store.postgres``). It also stops acting as
leader as soon as its last good round trip is older than ``LEASE_S``.

The lock's liveness is kept apart from the scheduler's event loop, which may be busy
for seconds at a time with work that is not a hang (building a 100,000-task array,
loading 100,000 jobs when taking the lead):

- The lock's connection lives on a thread of its own with its own event loop (asyncpg
  connections belong to the loop that made them), and every use of it runs there:
  the main loop hands the campaign, the note, the listing and the drop over to it and
  awaits the answer. The thread pings the connection every ``PING_S``, so the server
  never sees the session idle while the process runs, however long the main loop is
  busy; and each good round trip renews the lease.
- The main loop proves that it runs: a small task of its own notes the time every
  ``PING_S``. When the main loop has not noted it for ``STALL_S`` (a deadlocked or
  runaway loop: no request is answered), the thread stops pinging and closes the
  connection, which lets the lock go at once (``keeps_session``).
- A process that stops as a whole (SIGSTOP, swapped out) stops its thread too: the
  server ends the idle session after ``IDLE_SESSION_TIMEOUT_MS`` as before, and when
  the process runs again its lease has run out and its first ping fails. A killed
  process's session ends with its socket.

So a busy main loop keeps the lead for up to ``STALL_S``; a hung, dead or cut-off
process loses it within seconds. Safety never depended on this timing: the epoch check
in every write transaction fences a leader that was replaced, whatever it believes.

Every scheduler, leading or not, notes itself in the ``schedulers`` table once a
``NOTE_S`` (``scheduler.roles``): id, advertised URL, role, epoch, applied index and
when it was last seen, which ``GET /api/v1/schedulers`` lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from datetime import UTC
from typing import Any, TypeVar

import asyncpg

from common.codec import rfc3339
from scheduler import pgconnect

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the advisory lock's key: "berthlead" in ASCII (the schema's lock is another key)
LOCK_KEY = 0x62657274686C656164 & 0x7FFFFFFFFFFFFFFF
#: how often a standby tries to take the lock, the lock's thread pings its connection,
#: and the main loop notes that it runs
PING_S = 0.25
#: the server ends the lock's session when it stays idle this long (milliseconds)
IDLE_SESSION_TIMEOUT_MS = 2000
#: a leader whose last good round trip is older than this stops acting as leader
LEASE_S = 3.0
#: the main loop not seen running for this long lets the lock go: long enough for the
#: longest work it does in one go (a 100,000-job load or array), short enough that a
#: loop that hangs for good does not keep the lead from a standby for long
STALL_S = 15.0
#: a scheduler not seen for this long is left out of the list
FORGET_AFTER_S = 60.0
#: an answer from the database slower than this counts as lost
ROUND_TRIP_TIMEOUT_S = 2.0
#: how long stopping waits for the lock's thread to let go and end
CLOSE_TIMEOUT_S = 5.0

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
_LOST = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def keeps_session(last_tick: float, now: float, stall_s: float = STALL_S) -> bool:
    """Whether the lock's thread keeps the session (and the lock) alive: the main loop
    noted that it runs (``last_tick``, monotonic) less than ``stall_s`` before ``now``."""
    return now - last_tick < stall_s


class LeaderLock:
    """The advisory lock on its own connection and thread, and this scheduler's line
    in the list.

    The public methods are called from the scheduler's event loop; what touches the
    connection runs on the lock's thread (see the module docstring). ``start`` begins
    the thread and the main loop's tick (the first call that needs them does too);
    ``close`` lets the lock go and ends both.
    """

    def __init__(self, dsn: str, scheduler_id: str, url: str, stall_s: float = STALL_S) -> None:
        self.dsn = dsn
        self.scheduler_id = scheduler_id
        self.url = url
        #: the main loop not seen running for this long lets the lock go
        self.stall_s = stall_s
        #: True from a successful campaign until the lock's session is let go or lost
        self.held = False
        #: monotonic time of the last round trip that succeeded while holding the lock
        self.last_ok = 0.0
        #: monotonic time the main loop last noted that it runs
        self.last_tick = time.monotonic()
        # Only ever touched on the lock's thread.
        self._conn: Any = None
        # One operation at a time on the connection: pings, campaigns, notes and
        # listings come from different tasks of the lock's loop.
        self._busy = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # --- on the main loop --------------------------------------------------------------

    async def start(self) -> None:
        """Start the lock's thread and the main loop's tick (once)."""
        if self._thread is not None or self._closed:
            return
        self.last_tick = time.monotonic()
        self._ticker = asyncio.create_task(self._tick(), name="berth-lock-tick")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name="berth-leader-lock", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._keep(), loop)

    async def close(self) -> None:
        """Let go of the lock and end the lock's thread and the tick; no more use."""
        self.held = False
        self._closed = True
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        thread, loop = self._thread, self._loop
        self._thread = self._loop = None
        if thread is None or loop is None:
            return
        ended = asyncio.run_coroutine_threadsafe(self._shut_down(), loop)
        try:
            await asyncio.wait_for(asyncio.wrap_future(ended), CLOSE_TIMEOUT_S)
        except Exception as e:  # a thread that does not answer is left to the process
            log.warning("the leader lock's thread did not shut down: %r", e)
        with contextlib.suppress(RuntimeError):  # its loop already closed
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, CLOSE_TIMEOUT_S)

    async def try_take(self) -> bool:
        """Take the lock if nobody holds it; True once this scheduler holds it."""
        try:
            return await self._on_thread(self._try_take())
        except _LOST as e:  # the lock was closed
            log.warning("cannot campaign: %s", e)
            return False

    def fresh(self) -> bool:
        """Whether the lock is held and was confirmed within the lease."""
        return self.held and time.monotonic() - self.last_ok < LEASE_S

    async def drop(self) -> None:
        """Let go of the lock (closing its session releases it)."""
        self.held = False
        if self._loop is None or self._closed:
            return
        with contextlib.suppress(*_LOST):
            await self._on_thread(self._drop_soon())

    async def note(self, role: str, epoch: int, applied_index: int) -> None:
        """Say who this scheduler is and how far it got (best effort)."""
        try:
            await self._on_thread(self._note(role, epoch, applied_index))
        except _LOST as e:
            log.warning("cannot note this scheduler in the database: %s", e)

    async def listing(self) -> list[dict[str, Any]]:
        """Every scheduler seen lately, as GET /api/v1/schedulers lists them."""
        rows = await self._on_thread(self._list())
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

    async def _on_thread(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the lock's loop and wait for its outcome here."""
        await self.start()
        if self._closed or self._loop is None:
            coro.close()
            raise ConnectionError("the leader lock is closed")
        done = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # Ended by ``close`` on the lock's loop, not by this task's canceller.
                raise ConnectionError("the leader lock is closed") from None
            raise

    async def _tick(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(PING_S)

    # --- on the lock's thread ----------------------------------------------------------

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _keep(self) -> None:
        """Ping while connected; let the lock go when the main loop stalls."""
        while True:
            await asyncio.sleep(PING_S)
            if self._conn is None:
                continue
            if not keeps_session(self.last_tick, time.monotonic(), self.stall_s):
                if self.held:
                    log.error(
                        "the event loop has not run for %.1f s: letting the lead go",
                        time.monotonic() - self.last_tick,
                    )
                self._drop_now()
                continue
            try:
                await self._ping()
            except Exception:
                # Whatever it was, the lock is not known to be held any more: let it go
                # rather than hold it unpinged (the roles would wait on it for good).
                log.exception("pinging the lock's connection failed")
                self._drop_now()

    async def _ping(self) -> None:
        try:
            async with self._busy:
                conn = self._conn
                if conn is None or conn.is_closed():
                    raise ConnectionError("the connection is closed")
                await conn.fetchval("SELECT 1", timeout=ROUND_TRIP_TIMEOUT_S)
        except _LOST as e:
            if self.held:
                log.error("lost the database connection that holds the lead: %s", e)
            self._drop_now()
            return
        if self.held:
            self.last_ok = time.monotonic()

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self.held = False
            self._conn = await pgconnect.connect(self.dsn, server_settings=dict(_SETTINGS))
            await self._conn.execute(_SCHEMA)
        return self._conn

    async def _try_take(self) -> bool:
        try:
            async with self._busy:
                conn = await self._connection()
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", LOCK_KEY, timeout=ROUND_TRIP_TIMEOUT_S
                )
        except _LOST as e:
            log.warning("cannot reach the database to campaign: %s", e)
            self._drop_now()
            return False
        if got:
            self.last_ok = time.monotonic()
            self.held = True
        return bool(got)

    async def _note(self, role: str, epoch: int, applied_index: int) -> None:
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
        except _LOST:
            if not self.held:
                self._drop_now()
            raise
        if self.held:
            self.last_ok = time.monotonic()

    async def _list(self) -> list[Any]:
        async with self._busy:
            conn = await self._connection()
            return list(await conn.fetch(_LIST, FORGET_AFTER_S, timeout=ROUND_TRIP_TIMEOUT_S))

    async def _drop_soon(self) -> None:
        self._drop_now()

    def _drop_now(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _shut_down(self) -> None:
        """Let go of the lock, and end every other task of the lock's loop (their
        waiters on the main loop get their answer: cancelled)."""
        self._drop_now()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the closed transport's callbacks run before the loop stops.
        await asyncio.sleep(0)
