"""The scheduler's running machinery around the state: durable commits and what follows
them, the coalesced placement loop, the liveness and retention loops, and long-poll
wake-ups. The commands clients and agents call are in ``scheduler.commands``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.codec import rfc3339
from common.errors import Unavailable
from common.models import WebhookDelivery
from scheduler.blobs import Swept, open_blobs
from scheduler.bus import EventBus
from scheduler.config import SchedulerConfig
from scheduler.events import Event
from scheduler.limits import FairSlots, RateLimiter, StreamSlots
from scheduler.metrics import Metrics
from scheduler.sampler import Sampler
from scheduler.secretbox import SecretBox, open_box
from scheduler.state import Effects, Followed, State
from scheduler.store.base import Changes, Loaded, Store
from scheduler.webhooks import WebhookSender
from scheduler.writeguard import WriteGuard

if TYPE_CHECKING:
    from scheduler.roles import Roles

log = logging.getLogger(__name__)

#: ended jobs deleted per retention step
RETENTION_BATCH = 1000


#: reads of ended jobs' documents one command makes at most before it gives up
FETCH_ROUNDS = 8


ADMIN_TOKEN_FILE = "admin.token"
JOIN_TOKEN_FILE = "join.token"
WEBHOOK_KEY_FILE = "webhook.key"


class Service:
    def __init__(self, config: SchedulerConfig, store: Store, state: State) -> None:
        self.config = config
        self.store = store
        self.state = state
        # Ended jobs live in the store: memory keeps their index and recent documents.
        state.archive.cache_size = config.ended_jobs_cached
        state.store_behind = True
        self.ready = False
        self.stopping = False
        self._placement_wanted = asyncio.Event()
        self._node_waiters: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_commit: asyncio.Future[None] | None = None
        #: refuses writes up front while the state directory cannot take them
        self.guard = WriteGuard(config.state_dir, store)
        self.bus = EventBus(owner_of=state.submitter_of)
        self.metrics = Metrics(state, self.bus, store)
        self._job_waiters: dict[str, asyncio.Event] = {}
        self.webhooks: WebhookSender | None = None
        self.blobs = open_blobs(config)
        self.submit_rate = RateLimiter(config.submit_rate_per_s, config.submit_burst)
        self.streams = StreamSlots(config.max_streams_per_token)
        self.subscriptions = StreamSlots(config.max_subscriptions_per_token, "subscriptions")
        #: replays reading and encoding history at once; the rest wait their turn
        self.replays = FairSlots(config.max_concurrent_replays)
        self._webhooks_pending: list[str] = []
        #: the cluster's history: the leader's sampling loop, and its reads
        self.sampler = Sampler(self)
        #: a standby's telling of the leader's samples (only with a shared store)
        self._relay: asyncio.Task[None] | None = None
        #: seals and opens stored secrets' values; its key is read at start
        self.secret_box: SecretBox | None = None
        #: who leads, when several schedulers share the store (None: this one alone)
        self.roles: Roles | None = None
        if config.postgres:
            self.roles = _roles(self, store)
            self.metrics.watch_roles(self.roles.figures)

    async def fetch_ended(self, job_ids: list[str]) -> None:
        """Bring the documents of those ids that are ended jobs into memory, so that the
        state can read them in the step that follows (no await in between). At most
        ``--ended-jobs-cached`` ids: more would push the first ones out again."""
        archive = self.state.archive
        for _ in range(FETCH_ROUNDS):
            # Again after each read: jobs that ended meanwhile may have left memory.
            missing = archive.missing(job_ids)
            if not missing:
                return
            archive.take(await self.store.read_jobs(missing[: self.config.ended_jobs_cached]))
        raise Unavailable("ended jobs change too fast to be read back; try again")

    def write_join_token(self, token: str) -> None:
        """Keep the state directory's join.token the live one (local agents read it)."""
        path = self.config.state_dir / JOIN_TOKEN_FILE
        tmp = path.with_suffix(".tmp")
        _write_secret(tmp, token)
        tmp.replace(path)

    async def start(self) -> None:
        await self.reload(await self.store.open())
        keys = (s.key_id for s in self.state.secrets.values())
        self.secret_box = await open_box(self.config, self.store, keys)
        if self.roles is not None:
            # Shared by several schedulers: lead, or stand by until elected.
            self._relay = asyncio.create_task(self.sampler.relay(), name="berth-history-relay")
            await self.roles.start()
            self.ready = True
            return
        await self.lead()

    async def reload(self, loaded: Loaded) -> None:
        """Take the state read from the store, in place of what memory held."""
        # What an earlier load froze may be garbage now: let collections see it again.
        gc.unfreeze()
        self.state.reset()
        self.state.load(loaded)
        self._webhooks_pending = loaded.webhooks_pending
        # What was loaded lives long: keep it out of every later collection.
        gc.collect()
        gc.freeze()

    async def lead(self) -> None:
        """Act on the state: tokens, webhooks, placement, liveness and retention."""
        await self._ensure_tokens()
        await self._drop_holds_of_swept_blobs()
        await self.commit()
        self.webhooks = WebhookSender(
            await self._webhook_key(),
            self._record_delivery,
            allow_private=self.config.webhook_allow_private,
        )
        await self.webhooks.start()
        pending_webhooks, self._webhooks_pending = self._webhooks_pending, []
        await self.fetch_ended(pending_webhooks)
        for job_id in pending_webhooks:
            pending = self.state.find(job_id)
            if pending is not None and pending.webhook_pending:
                self.webhooks.send(pending)
        self._tasks = [
            asyncio.create_task(self._placement_loop(), name="berth-placement"),
            asyncio.create_task(self._liveness_loop(), name="berth-liveness"),
            asyncio.create_task(self._retention_loop(), name="berth-retention"),
            asyncio.create_task(self.sampler.run(), name="berth-history"),
        ]
        self._placement_wanted.set()
        self.ready = True
        log.info(
            "scheduler ready: %d jobs, %d nodes, event index %d",
            len(self.state.jobs) + len(self.state.archive),
            len(self.state.nodes),
            self.state.events.last_index,
        )

    async def stop_leading(self) -> None:
        """Stop acting on the state (the loops and webhooks); it stays readable."""
        if self.webhooks is not None:
            await self.webhooks.stop()
            self.webhooks = None
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        last, self._last_commit = self._last_commit, None
        if last is not None:
            # Its waiters were answered (a fenced commit fails them all); nobody reads
            # it any more.
            last.add_done_callback(_retrieved)

    def leading(self) -> bool:
        """Whether this scheduler takes writes and agents now."""
        return self.roles is None or self.roles.leading()

    async def schedulers(self) -> list[dict[str, Any]]:
        """The schedulers sharing the store, as GET /api/v1/schedulers lists them."""
        if self.roles is not None:
            return await self.roles.lock.listing()
        return [
            {
                "id": scheduler_id(self.config.state_dir),
                "url": advertised_url(self.config),
                "role": "leader",
                "epoch": 0,
                "applied_index": self.state.events.committed_index,
                "seen": rfc3339(datetime.now(UTC)),
            }
        ]

    @property
    def leader_url(self) -> str | None:
        """Where the leader is: this scheduler when it leads alone."""
        if self.roles is None:
            return None
        return self.roles.leader_url

    @property
    def role(self) -> str:
        return "leader" if self.roles is None else self.roles.role

    def apply_followed(self, followed: Followed, events: list[Event]) -> None:
        """A standby applies what the leader committed, and tells its own followers."""
        self.state.follow(followed)
        for job in followed.jobs:
            self._wake_job(job.id)
        self._publish(events)

    async def stop(self) -> None:
        self.ready = False
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
        await self.stop_leading()
        # What the leader staged is written (fenced) before the lead is let go.
        with contextlib.suppress(Exception):
            await self.commit()
        if self.roles is not None:
            await self.roles.stop()
        await self.store.close()
        await self.blobs.close()

    async def commit(self) -> None:
        """Return once every change made so far is durable (and what follows it done).

        Changes made by one request may have been taken by another request's commit
        still under way; batches commit in order, so waiting for the latest one covers
        them too.
        """
        changes = self.state.take_changes()
        effects = self.state.take_effects()
        if effects.placement_wanted:
            # A pass works on memory, and what it changes commits after this batch:
            # it need not wait for this one to be written.
            self._placement_wanted.set()
        if changes or effects.wake_nodes or effects.live:
            # Staged now: ended jobs' documents may leave memory at once, and reads of
            # the store must find them.
            written = self.store.stage(changes)
            self._last_commit = asyncio.ensure_future(self._commit(written, changes, effects))
        if self._last_commit is not None and not self._last_commit.done():
            await asyncio.shield(self._last_commit)
        elif self._last_commit is not None and self.store.failure is not None:
            # What the failed batch held is still only in memory.
            self._last_commit.result()

    async def _commit(
        self, written: asyncio.Future[None], changes: Changes, effects: Effects
    ) -> None:
        await written
        self._announce_recovered()
        self._announce(changes)
        self.publish_live(effects.live)
        # Agents hear of assignments and commands only once those are durable.
        for node_id in effects.wake_nodes:
            self.wake_node(node_id)

    def _announce_recovered(self) -> None:
        """Batches that failed to commit and were written since are announced, in
        order, before anything newer."""
        for earlier in self.store.take_recovered():
            self._announce(earlier)

    def _announce(self, changes: Changes) -> None:
        """What follows a durable batch: webhooks, log followers, event subscribers."""
        if self.webhooks is not None:
            for job in changes.jobs.values():
                if job.webhook_pending:
                    self.webhooks.send(job)
        for chunk in changes.logs:
            self._wake_job(chunk.job_id)
        self._publish(changes.events)

    def _publish(self, events: list[Event]) -> None:
        """Committed events: blocking queries, subscribers, metrics, job followers."""
        top = events[-1].index if events else self.state.events.committed_index
        self.state.events.committed(events, top)
        if events:
            self.sampler.tally.see(events)
            self.bus.publish(events)
            self.metrics.observe(events)
            for e in events:
                if e.job_id is not None:
                    self._wake_job(e.job_id)

    def publish_live(self, events: list[Event]) -> None:
        """Live-only events (scheduler.bus), after the stored ones committed with them."""
        if events:
            index = self.state.events.committed_index
            for e in events:
                e.index = index
            self.bus.publish_live(events)

    async def _record_delivery(self, job_id: str, delivery: WebhookDelivery, done: bool) -> None:
        """Note one try to deliver a job's end to its webhook, durably."""
        await self.fetch_ended([job_id])
        self.state.record_delivery(job_id, delivery, done=done)
        await self.commit()

    async def _webhook_key(self) -> bytes:
        """The key webhook bodies are signed with, made on first use: in the store when
        it keeps secrets (every scheduler on it signs alike), else in the state
        directory (mode 0600)."""
        shared = await self.store.shared_secret("webhook_key", lambda: secrets.token_urlsafe(32))
        path = self.config.state_dir / WEBHOOK_KEY_FILE
        if shared is not None:
            # A copy where receivers' operators look for it, the same on every host.
            if not path.exists() or path.read_text().strip() != shared:
                _write_secret(path, shared)
            return shared.encode()
        if not path.exists():
            _write_secret(path, secrets.token_urlsafe(32))
            log.info("wrote the webhook signing key to %s", path.resolve())
        return path.read_text().strip().encode()

    async def _ensure_tokens(self) -> None:
        """On first start write admin.token and join.token (mode 0600) into the state dir."""
        state_dir = self.config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        for filename, role in ((ADMIN_TOKEN_FILE, "admin"), (JOIN_TOKEN_FILE, "join")):
            path = state_dir / filename
            if path.exists():
                token = path.read_text().strip()
                if token and self.state.tokens.known(token):
                    # Revoked through the API, it stays revoked.
                    continue
                if token and not self.config.postgres:
                    # One the store has never seen (a fresh database beside old files)
                    # is taken in.
                    self.state.add_token(token, role, role)
                    continue
                # A shared database is the one authority on tokens: a file it never
                # heard of (another database's, an earlier SQLite start's) grants
                # nothing and is replaced.
            token = secrets.token_urlsafe(32)
            _write_secret(path, token)
            self.state.add_token(token, role, role)
            log.info("wrote the %s token to %s", role, path.resolve())

    # --- agents' long polls ----------------------------------------------------------

    def release_waiters(self) -> None:
        """Answer every long poll and blocking query now: the scheduler is stopping."""
        self.stopping = True
        for ev in self._node_waiters.values():
            ev.set()
        for ev in self._job_waiters.values():
            ev.set()
        self.state.events.wake_all()
        self.bus.close_all()

    # --- followers of one job (its logs, its end) --------------------------------------

    def _wake_job(self, job_id: str) -> None:
        ev = self._job_waiters.pop(job_id, None)
        if ev is not None:
            ev.set()

    async def wait_for_job(self, job_id: str, timeout: float) -> None:
        """Return when the job changes or gets new log bytes, or after ``timeout``."""
        if self.stopping:
            return
        ev = self._job_waiters.get(job_id)
        if ev is None:
            ev = self._job_waiters[job_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ev.wait()

    def wake_node(self, node_id: str) -> None:
        ev = self._node_waiters.get(node_id)
        if ev is not None:
            ev.set()

    async def wait_for_node(self, node_id: str, timeout: float) -> None:
        if self.stopping:
            return
        ev = self._node_waiters.setdefault(node_id, asyncio.Event())
        ev.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ev.wait()

    # --- loops -----------------------------------------------------------------------

    async def _placement_loop(self) -> None:
        """Runs a placement pass whenever one is wanted.

        A pass is not started before the previous one is committed, so whatever arrives
        meanwhile (a burst of submits) is placed by one pass; and a pass that runs
        before a submit's commit was written shares that commit.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.sweep_interval_s):
                    await self._placement_wanted.wait()
            self._placement_wanted.clear()
            try:
                with self.metrics.placement_seconds.time():
                    touched = self.state.place()
                self.metrics.placements.inc(len(touched))
                # The nodes given jobs are woken once the assignments are durable.
                await self.commit()
            except Exception:
                log.exception("placement pass failed")
                await asyncio.sleep(1.0)

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.expire_jobs()
                below = await self.store.prune_events(self.config.event_window)
                self.state.events_pruned_below = below
            except Exception:
                log.exception("retention failed")
            # After retention: the blobs of the jobs it deleted go in the same pass.
            try:
                await self.sweep_blobs()
            except Exception:
                log.exception("blob sweep failed")
            await asyncio.sleep(self.config.retention_interval_s)

    async def _drop_holds_of_swept_blobs(self) -> None:
        """A sweep deletes a blob before it commits that nobody holds it: a scheduler
        stopped in between comes back with holds (and quota charges) of a blob that is
        gone. They are dropped here, in the first commit after loading."""
        held = self.state.blob_holds.digests()
        gone = set(held) - await self.blobs.exists_many(held)
        for digest in gone:
            self.state.blob_holds.drop(digest, self.state.changes)

    async def sweep_blobs(self) -> Swept:
        """Delete the blobs no kept job names, once past their grace (and uploads
        abandoned that long ago)."""
        swept = await self.blobs.sweep(self.state.names_blob, grace_s=self.config.blob_grace_s)
        # Nobody holds a deleted blob any more, and its bytes leave its uploaders'
        # quotas; unless it was stored again meanwhile (then its new holds stay).
        for digest in set(swept.deleted) - await self.blobs.exists_many(swept.deleted):
            self.state.blob_holds.drop(digest, self.state.changes)
        if swept.deleted:
            await self.commit()
        if swept.blobs or swept.uploads:
            self.metrics.blobs_swept.labels("blob").inc(swept.blobs)
            self.metrics.blobs_swept.labels("upload").inc(swept.uploads)
            self.metrics.blob_bytes_swept.inc(swept.freed_bytes)
            log.info(
                "blob sweep: deleted %d blobs no job names and %d abandoned uploads, "
                "%d bytes freed",
                swept.blobs,
                swept.uploads,
                swept.freed_bytes,
            )
        return swept

    async def expire_jobs(self) -> int:
        """Delete ended jobs past their retention with their events and logs (their
        blobs go with the blob sweep that follows, once no kept job names them).

        Nothing that has not ended is touched. Returns how many jobs were deleted.
        """
        cutoff = self.state.clock() - self.config.job_retention_s
        total = 0
        while True:
            ids = await self.store.ended_before(cutoff, RETENTION_BATCH)
            gone = self.state.forget(ids)
            if gone:
                await self.store.delete_jobs([j.id for j in gone])
                # The deleted jobs no longer name their input archives (forget() took
                # off their outputs and checkpoints). The blob sweep that follows
                # deletes what no kept job names any more: one blob may be the input
                # of one job and the outputs of another, so none is deleted here.
                self.state.release_inputs(gone)
                total += len(gone)
                log.info("retention: deleted %d ended jobs", len(gone))
            if len(ids) < RETENTION_BATCH:
                return total

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.liveness_interval_s)
            try:
                if self.state.check_liveness():
                    self._placement_wanted.set()
                await self.commit()
                # Batches that failed and were written by the store's own retries.
                self._announce_recovered()
            except Exception:
                log.exception("liveness check failed")


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def _write_secret(path: Path, secret: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(secret + "\n")


def _roles(svc: Service, store: Store) -> Roles:
    """Leading and standing by on a shared PostgreSQL store."""
    # Only then: a scheduler on SQLite does not load asyncpg.
    from scheduler.leadership import LeaderLock
    from scheduler.roles import Roles
    from scheduler.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    config = svc.config
    lock = LeaderLock(config.store, scheduler_id(config.state_dir), advertised_url(config))
    return Roles(svc, store, lock)


SCHEDULER_ID_FILE = "scheduler.id"


def scheduler_id(state_dir: Path) -> str:
    """This scheduler's id among those sharing a store, kept in its state directory."""
    path = state_dir / SCHEDULER_ID_FILE
    if path.exists():
        return path.read_text().strip()
    made = f"s{secrets.token_hex(6)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def advertised_url(config: SchedulerConfig) -> str:
    """The URL others are sent to: --advertise-url, else the listen address."""
    if config.advertise_url:
        return config.advertise_url
    host, port = config.host_port
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    scheme = "https" if config.tls_cert is not None else "http"
    return f"{scheme}://{host}:{port}"
