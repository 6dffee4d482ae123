"""Leading and standing by, for schedulers that share a PostgreSQL store.

A scheduler starts as a standby: it loads the state, follows the leader's commits
(``NOTIFY`` wakes it, polling every ``POLL_S`` backs that up, since notifications are
lost while a connection is down) and serves reads, while it tries for the lead
(``scheduler.leadership``). Once it holds the lock it takes over: it bumps the epoch,
which fences the old leader out of every later write, loads the state afresh from that
point, as a restart does (so every node gets the restart grace before it is called
offline), starts the loops, and only then takes requests. It steps down when it loses
the lock, when its last round trip is older than the lease, or when a write finds that
another scheduler took the lead: it stops the loops, fails what was waiting for a
commit (none of it was written), loads the state again (until that succeeds it follows
nothing) and follows. Each load ends the event streams open on this scheduler, which
resume from the index they reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from scheduler.leadership import PING_S, LeaderLock
from scheduler.state import Followed
from scheduler.store.postgres import NOTIFY_CHANNEL, ChangesSince, PostgresStore

if TYPE_CHECKING:
    from scheduler.service import Service

log = logging.getLogger(__name__)

#: a standby reads what changed at least this often, notified or not
POLL_S = 0.5
#: how often a scheduler notes itself in the list of schedulers
NOTE_S = 1.0
LEADER = "leader"
STANDBY = "standby"


class Roles:
    def __init__(self, svc: Service, store: PostgresStore, lock: LeaderLock) -> None:
        self.svc = svc
        self.store = store
        self.lock = lock
        self.role = STANDBY
        self.epoch = 0
        #: the seq of the last write transaction applied to this scheduler's state
        self.seq = store.loaded_seq
        #: where the leader is, as the leader row says (None while nobody leads)
        self.leader_url: str | None = None
        #: monotonic time the state last caught up with the database (0: not yet, so a
        #: new standby is not ready before it knows what it follows and who leads)
        self.caught_up_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None
        #: memory may hold changes that were never written: load it again before following
        self._reload_owed = False

    async def start(self) -> None:
        """Lead at once when nobody does (a scheduler alone on its database is ready
        to take writes when it starts listening), else stand by."""
        # Nothing this scheduler holds may be written unless it takes the lead: an
        # epoch no leader ever has fences every write until then.
        self.store.epoch = -1
        await self.lock.start()
        leading = await self.lock.try_take()
        if leading:
            try:
                await self._take_over()
            except Exception:
                log.exception("taking the lead failed; standing by")
                await self._step_down()
                leading = False
        self._task = asyncio.create_task(self._run(leading), name="berth-roles")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._unlisten()
        await self.lock.close()

    def figures(self) -> tuple[str, int, float]:
        """(role, epoch, apply lag in seconds) for the metrics."""
        lag = 0.0 if self.role == LEADER else time.monotonic() - self.caught_up_at
        return self.role, self.epoch, lag

    def leading(self) -> bool:
        """Whether this scheduler may act as leader now (the lease is fresh)."""
        return self.role == LEADER and self.lock.fresh() and not self.store.deposed

    def following(self) -> bool:
        """Whether this standby keeps up (it read the database within a few polls)."""
        return self.role == STANDBY and time.monotonic() - self.caught_up_at < 10 * POLL_S

    # --- the loop ------------------------------------------------------------------

    async def _run(self, leading: bool) -> None:
        while True:
            try:
                if not leading:
                    await self._stand_by()
                    await self._take_over()
                leading = False
                await self._hold()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leadership failed; standing by")
                await asyncio.sleep(PING_S)
            await self._step_down()

    async def _stand_by(self) -> None:
        """Follow the leader until this scheduler takes the lock."""
        await self._listen()
        noted = 0.0
        while True:
            if await self.lock.try_take():
                return
            try:
                await (self._reload() if self._reload_owed else self._catch_up())
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("cannot follow the leader: %s", e)
            if time.monotonic() - noted >= NOTE_S:
                noted = time.monotonic()
                await self.lock.note(STANDBY, self.epoch, self.svc.state.events.committed_index)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(PING_S, POLL_S)):
                    await self._wake.wait()
            self._wake.clear()

    async def _take_over(self) -> None:
        await self._unlisten()
        self.epoch = await self.store.take_leadership(self.lock.scheduler_id, self.lock.url)
        self.leader_url = self.lock.url
        log.info("leading, epoch %d", self.epoch)
        # From the point the epoch moved: everything the old leader committed is in it.
        await self._reload()
        self.store.resume()
        await self.svc.lead()
        # Only now does the guard let requests through. One taken while the state
        # loaded would be answered from the memory being replaced: a submit committed
        # meanwhile is missing from the loaded snapshot (acknowledged and stored, yet
        # never placed), and one answered from memory alone (a resent submit whose key
        # is there after a failed reload) could acknowledge a job never written.
        self.role = LEADER

    async def _hold(self) -> None:
        """Lead while the lock holds and no write found the lead taken (the lock's own
        thread keeps it, and lets it go when it is lost or this loop stalls)."""
        noted = 0.0
        while self.lock.held and not self.store.deposed:
            if time.monotonic() - noted >= NOTE_S:
                noted = time.monotonic()
                await self.lock.note(LEADER, self.epoch, self.svc.state.events.committed_index)
            await asyncio.sleep(PING_S)

    async def _step_down(self) -> None:
        was = self.role
        self.role = STANDBY
        if was == LEADER:
            log.warning("stepping down (epoch %d)", self.epoch)
        await self.svc.stop_leading()
        self.store.discard()
        await self.lock.drop()
        # What memory holds may never have been written: until a reload succeeds the
        # standby loads the state again instead of applying changes on top of it.
        self._reload_owed = True
        for _ in range(3):
            try:
                await self._reload()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("cannot load the state to stand by: %s", e)
                await asyncio.sleep(POLL_S)

    async def _reload(self) -> None:
        """Load the whole state afresh from the database, in place of memory.

        Event streams open on this scheduler end here: the events committed between
        the last one they were sent and the reloaded state were never published to
        them, so they reconnect and replay from the index they reached. Agents' long
        polls parked here answer now, from the loaded state, rather than when their
        wait runs out: after a step-down their agents go on to the new leader at once.
        """
        loaded = await self.store.load_state()
        await self.svc.reload(loaded)
        self.svc.bus.close_all()
        for node_id in list(self.svc.state.nodes):
            self.svc.wake_node(node_id)
        self.seq = self.store.loaded_seq
        self._reload_owed = False

    # --- following -----------------------------------------------------------------

    async def _catch_up(self) -> None:
        since = await self.store.read_since(self.seq)
        row = await self.store.leader_row()
        self.leader_url = row.get("url") or None
        self.epoch = int(row.get("epoch") or 0)
        if since.seq > self.seq:
            self.svc.apply_followed(followed_of(since), since.events)
            self.svc.state.events_pruned_below = since.events_pruned_below
            self.seq = since.seq
        self.caught_up_at = time.monotonic()

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(self.store.dsn)
            await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as e:
            # Polling carries on without it.
            log.warning("cannot listen for commits: %s", e)
            self._listener = None

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()


def followed_of(since: ChangesSince) -> Followed:
    """What the store read back, as the state follows it."""
    from scheduler.state.following import heard_of, pending_of

    followed = Followed(
        jobs=since.jobs,
        nodes=since.nodes,
        tokens=since.tokens,
        groups=since.groups,
        pending=pending_of(since.events),
        heard=heard_of(since.events),
    )
    present_jobs = {j.id for j in since.jobs}
    present_nodes = {n.id for n in since.nodes}
    present_tokens = {t.digest for t in since.tokens}
    for _seq, table, key in since.tombstones:
        if table == "jobs" and key not in present_jobs:
            followed.deleted_jobs.append(key)
        elif table == "nodes" and key not in present_nodes:
            followed.forgotten_nodes.append(key)
        elif table == "tokens" and key not in present_tokens:
            followed.dropped_tokens.append(key)
    return followed
