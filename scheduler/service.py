"""The scheduler's running machinery around the Cluster: durable commits, the
coalesced placement loop, the liveness loop, and long-poll wake-ups for agents."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from common.errors import TooManyRequests, Unavailable
from common.models import Job, WebhookDelivery
from common.states import JobState
from scheduler.blobs import BlobStore, Swept
from scheduler.bus import EventBus
from scheduler.cluster import Cluster
from scheduler.config import SchedulerConfig
from scheduler.events import Event
from scheduler.limits import FairSlots, RateLimiter, StreamSlots
from scheduler.metrics import Metrics
from scheduler.store.base import Changes, Store, TokenRow
from scheduler.webhooks import WebhookSender
from scheduler.writeguard import WriteGuard

log = logging.getLogger("berth.scheduler")

#: ended jobs deleted per retention step
RETENTION_BATCH = 1000


def _rfc3339(dt: datetime) -> str:
    # The form msgspec writes timestamps in, so that stored strings compare in order.
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


ADMIN_TOKEN_FILE = "admin.token"
JOIN_TOKEN_FILE = "join.token"
WEBHOOK_KEY_FILE = "webhook.key"


class Service:
    def __init__(self, config: SchedulerConfig, store: Store, cluster: Cluster) -> None:
        self.config = config
        self.store = store
        self.cluster = cluster
        self.ready = False
        self.stopping = False
        self._placement_wanted = asyncio.Event()
        self._node_waiters: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_commit: asyncio.Future[None] | None = None
        #: batches the store failed to write and keeps staged, announced once written
        self._unannounced: list[Changes] = []
        #: refuses writes up front while the state directory cannot take them
        self.guard = WriteGuard(config.state_dir, store)
        store.on_recovered = self._written_again
        cluster.on_placement_wanted = self._placement_wanted.set
        cluster.on_node_changed = self.wake_node
        self.bus = EventBus(owner_of=self._job_owner)
        self.metrics = Metrics(cluster)
        cluster.events.on_commit = self._published
        self._job_waiters: dict[str, asyncio.Event] = {}
        self.webhooks: WebhookSender | None = None
        #: called with the jobs retention deleted (they let go of their input archives)
        self.deletion_hooks: list[Callable[[list[Job]], Awaitable[None]]] = []
        self.blobs = BlobStore.in_state_dir(config.state_dir)
        self.submit_rate = RateLimiter(config.submit_rate_per_s, config.submit_burst)
        self.streams = StreamSlots(config.max_streams_per_token)
        self.subscriptions = StreamSlots(config.max_subscriptions_per_token, "subscriptions")
        #: replays reading and encoding history at once; the rest wait their turn
        self.replays = FairSlots(config.max_concurrent_replays)

    def _job_owner(self, job_id: str) -> str | None:
        """Who submitted a job (the event bus indexes on it), without decoding an ended
        one."""
        job = self.cluster.jobs.get(job_id)
        if job is not None:
            return job.submitted_by
        archive = self.cluster.archive
        return archive.owner(job_id) if job_id in archive else None

    def admit_jobs(self, who: TokenRow, n: int, spec_bytes: int = 0) -> None:
        """Refuse, before anything changes, ``n`` new jobs (of ``spec_bytes`` encoded
        specs together) past the queue's cap, the token's share of the queue, the
        token's stored spec bytes or its submit rate (429 with Retry-After)."""
        self.admit_queued(who, n)
        self._admit_spec_bytes(who, spec_bytes)
        wait = self.submit_rate.take(who.digest, n)
        if math.isinf(wait):
            raise TooManyRequests(
                f"{n} jobs at once is more than this token's burst of {self.submit_rate.burst}",
                {"limit": self.submit_rate.burst},
            )
        if wait > 0:
            raise TooManyRequests(
                "this token is creating jobs too fast",
                {"rate_per_s": self.submit_rate.rate},
                retry_after_s=max(1, int(wait + 0.999)),
            )

    def admit_queued(self, who: TokenRow, n: int) -> None:
        """Refuse ``n`` more queued jobs past the queue's cap or, but for an admin
        token, past the token's quota of queued jobs (429 with Retry-After)."""
        queued = self.cluster.counts[JobState.QUEUED]
        if queued + n > self.config.max_queued_jobs:
            raise TooManyRequests(
                f"the queue is full ({queued} of {self.config.max_queued_jobs} jobs waiting)",
                {"queued": queued, "limit": self.config.max_queued_jobs},
                retry_after_s=10,
            )
        if who.role == "admin":
            return
        quota = self.config.queued_jobs_per_token
        mine = self.cluster.queued_by.get(who.name, 0)
        if mine + n > quota:
            raise TooManyRequests(
                f"this token has {mine} jobs waiting in the queue; {n} more would pass its "
                f"quota of {quota} (--max-queued-jobs-per-token)",
                {"queued": mine, "limit": quota},
                retry_after_s=10,
            )

    def _admit_spec_bytes(self, who: TokenRow, size: int) -> None:
        if who.role == "admin":
            return
        budget = self.config.max_spec_bytes_per_token
        held = self.cluster.spec_bytes_of(who.name)
        if held + size > budget:
            raise TooManyRequests(
                f"this token's kept jobs hold {held} bytes of specs; {size} more would pass "
                f"its budget of {budget} (--max-spec-bytes-per-token); an ended job gives "
                "its share back when retention deletes it",
                {"spec_bytes": held, "limit": budget},
                retry_after_s=60,
            )

    def write_join_token(self, token: str) -> None:
        """Keep the state directory's join.token the live one (local agents read it)."""
        path = self.config.state_dir / JOIN_TOKEN_FILE
        tmp = path.with_suffix(".tmp")
        _write_secret(tmp, token)
        tmp.replace(path)

    async def start(self) -> None:
        loaded = await self.store.open()
        self.cluster.load(loaded)
        # What was loaded lives long: keep it out of every later collection.
        gc.collect()
        gc.freeze()
        await self._ensure_tokens()
        await self._drop_holds_of_swept_blobs()
        await self.commit()
        self.webhooks = WebhookSender(
            self._webhook_key(),
            self._record_delivery,
            self.commit,
            allow_private=self.config.webhook_allow_private,
        )
        await self.webhooks.start()
        for job_id in loaded.webhooks_pending:
            pending = self.cluster.find(job_id)
            if pending is not None and pending.webhook_pending:
                self.webhooks.send(pending)
        self._tasks = [
            asyncio.create_task(self._placement_loop(), name="berth-placement"),
            asyncio.create_task(self._liveness_loop(), name="berth-liveness"),
            asyncio.create_task(self._retention_loop(), name="berth-retention"),
        ]
        self._placement_wanted.set()
        self.ready = True
        log.info(
            "scheduler ready: %d jobs, %d nodes, event index %d",
            len(self.cluster.jobs),
            len(self.cluster.nodes),
            self.cluster.events.last_index,
        )

    async def stop(self) -> None:
        self.ready = False
        if self.webhooks is not None:
            await self.webhooks.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await self.commit()
        await self.store.close()

    async def commit(self) -> None:
        """Return once every change made so far is durable (and its events published).

        Changes made by one request may have been taken by another request's commit
        still under way; batches commit in order, so waiting for the latest one covers
        them too.
        """
        changes = self.cluster.take_changes()
        if changes:
            self._last_commit = asyncio.ensure_future(self._commit(changes))
        if self._last_commit is not None and not self._last_commit.done():
            await asyncio.shield(self._last_commit)
        elif self._last_commit is not None and self.store.failure is not None:
            # What the failed batch held is still only in memory.
            self._last_commit.result()

    async def _commit(self, changes: Changes) -> None:
        try:
            await self.store.commit(changes)
        except Unavailable:
            if self.store.failure is not None:
                # The store keeps these changes and writes them ahead of its next
                # batch; they are announced when it has (_written_again).
                self._unannounced.append(changes)
            raise
        self._announce(changes)

    def _written_again(self) -> None:
        """The store wrote what it had kept from failed batches: announce those, in
        order, before the batch that succeeded."""
        held, self._unannounced = self._unannounced, []
        for earlier in held:
            self._announce(earlier)

    def _announce(self, changes: Changes) -> None:
        """What follows a durable batch: webhooks, log followers, event subscribers."""
        if self.webhooks is not None:
            for job in changes.jobs.values():
                if job.webhook_pending:
                    self.webhooks.send(job)
        for chunk in changes.logs:
            self._wake_job(chunk.job_id)
        top = changes.events[-1].index if changes.events else self.cluster.events.committed_index
        self.cluster.events.committed(changes.events, top)

    def _record_delivery(self, job_id: str, delivery: WebhookDelivery, done: bool) -> None:
        self.cluster.record_delivery(job_id, delivery, done=done)

    def _webhook_key(self) -> bytes:
        """The key webhook bodies are signed with, made on first use (mode 0600)."""
        path = self.config.state_dir / WEBHOOK_KEY_FILE
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
                # A token revoked through the API stays revoked; one the store has
                # never seen (a fresh database beside old files) is taken in.
                if token and not self.cluster.tokens.known(token):
                    self.cluster.add_token(token, role, role)
                continue
            token = secrets.token_urlsafe(32)
            _write_secret(path, token)
            self.cluster.add_token(token, role, role)
            log.info("wrote the %s token to %s", role, path.resolve())

    # --- agents' long polls ----------------------------------------------------------

    def release_waiters(self) -> None:
        """Answer every long poll and blocking query now: the scheduler is stopping."""
        self.stopping = True
        for ev in self._node_waiters.values():
            ev.set()
        for ev in self._job_waiters.values():
            ev.set()
        self.cluster.events.wake_all()
        self.bus.close_all()

    # --- followers of one job (its logs, its end) --------------------------------------

    def _published(self, events: list[Event]) -> None:
        self.bus.publish(events)
        for e in events:
            self.metrics.events.labels(e.type).inc()
        for e in events:
            if e.job_id is not None:
                self._wake_job(e.job_id)

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
                    touched = self.cluster.place()
                self.metrics.placements.inc(len(touched))
                await self.commit()
            except Exception:
                log.exception("placement pass failed")
                await asyncio.sleep(1.0)
                continue
            # Agents hear of their assignments only once those are durable.
            for node_id in set(touched):
                self.wake_node(node_id)

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.expire_jobs()
                below = await self.store.prune_events(self.config.event_window)
                self.cluster.events_pruned_below = below
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
        held = self.cluster.blob_holds.digests()
        gone = await asyncio.to_thread(lambda: [d for d in held if not self.blobs.exists(d)])
        for digest in gone:
            self.cluster.blob_holds.drop(digest, self.cluster.changes)

    async def sweep_blobs(self) -> Swept:
        """Delete the blobs no kept job names, once past their grace (and uploads
        abandoned that long ago)."""
        swept = await self.blobs.sweep(self.cluster.names_blob, grace_s=self.config.blob_grace_s)
        # Nobody holds a deleted blob any more, and its bytes leave its uploaders'
        # quotas; unless it was stored again meanwhile (then its new holds stay).
        for digest in swept.deleted:
            if not self.blobs.exists(digest):
                self.cluster.blob_holds.drop(digest, self.cluster.changes)
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
        cutoff = datetime.fromtimestamp(self.cluster.clock() - self.config.job_retention_s, UTC)
        total = 0
        while True:
            ids = await self.store.ended_before(_rfc3339(cutoff), RETENTION_BATCH)
            gone = self.cluster.forget(ids)
            if gone:
                await self.store.delete_jobs([j.id for j in gone])
                await self.on_jobs_deleted(gone)
                total += len(gone)
                log.info("retention: deleted %d ended jobs", len(gone))
            if len(ids) < RETENTION_BATCH:
                return total

    async def on_jobs_deleted(self, jobs: list[Job]) -> None:
        """Hook for what else a deleted job owned (its blobs)."""
        for hook in self.deletion_hooks:
            await hook(jobs)

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.liveness_interval_s)
            try:
                if self.cluster.check_liveness():
                    self._placement_wanted.set()
                await self.commit()
            except Exception:
                log.exception("liveness check failed")


def _write_secret(path: Path, secret: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(secret + "\n")
