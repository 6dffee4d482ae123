"""The scheduler's running machinery around the state: durable commits and what follows
them, the coalesced placement loop, the liveness and retention loops, and long-poll
wake-ups. The commands clients and agents call are in ``scheduler.commands``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from pathlib import Path

from common.errors import Unavailable
from common.models import WebhookDelivery
from scheduler.blobs import BlobStore, Swept
from scheduler.bus import EventBus
from scheduler.config import SchedulerConfig
from scheduler.limits import FairSlots, RateLimiter, StreamSlots
from scheduler.metrics import Metrics
from scheduler.state import Effects, State
from scheduler.store.base import Changes, Store
from scheduler.webhooks import WebhookSender
from scheduler.writeguard import WriteGuard

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
        self.metrics = Metrics(state)
        self._job_waiters: dict[str, asyncio.Event] = {}
        self.webhooks: WebhookSender | None = None
        self.blobs = BlobStore.in_state_dir(config.state_dir)
        self.submit_rate = RateLimiter(config.submit_rate_per_s, config.submit_burst)
        self.streams = StreamSlots(config.max_streams_per_token)
        self.subscriptions = StreamSlots(config.max_subscriptions_per_token, "subscriptions")
        #: replays reading and encoding history at once; the rest wait their turn
        self.replays = FairSlots(config.max_concurrent_replays)

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
        loaded = await self.store.open()
        self.state.load(loaded)
        # What was loaded lives long: keep it out of every later collection.
        gc.collect()
        gc.freeze()
        await self._ensure_tokens()
        await self._drop_holds_of_swept_blobs()
        await self.commit()
        self.webhooks = WebhookSender(
            self._webhook_key(),
            self._record_delivery,
            allow_private=self.config.webhook_allow_private,
        )
        await self.webhooks.start()
        await self.fetch_ended(loaded.webhooks_pending)
        for job_id in loaded.webhooks_pending:
            pending = self.state.find(job_id)
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
            len(self.state.jobs) + len(self.state.archive),
            len(self.state.nodes),
            self.state.events.last_index,
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
        if changes or effects.wake_nodes:
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
        events = changes.events
        top = events[-1].index if events else self.state.events.committed_index
        self.state.events.committed(events, top)
        if events:
            self.bus.publish(events)
            for e in events:
                self.metrics.events.labels(e.type).inc()
            for e in events:
                if e.job_id is not None:
                    self._wake_job(e.job_id)

    async def _record_delivery(self, job_id: str, delivery: WebhookDelivery, done: bool) -> None:
        """Note one try to deliver a job's end to its webhook, durably."""
        await self.fetch_ended([job_id])
        self.state.record_delivery(job_id, delivery, done=done)
        await self.commit()

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
                if token and not self.state.tokens.known(token):
                    self.state.add_token(token, role, role)
                continue
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
        gone = await asyncio.to_thread(lambda: [d for d in held if not self.blobs.exists(d)])
        for digest in gone:
            self.state.blob_holds.drop(digest, self.state.changes)

    async def sweep_blobs(self) -> Swept:
        """Delete the blobs no kept job names, once past their grace (and uploads
        abandoned that long ago)."""
        swept = await self.blobs.sweep(self.state.names_blob, grace_s=self.config.blob_grace_s)
        # Nobody holds a deleted blob any more, and its bytes leave its uploaders'
        # quotas; unless it was stored again meanwhile (then its new holds stay).
        for digest in swept.deleted:
            if not self.blobs.exists(digest):
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


def _write_secret(path: Path, secret: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(secret + "\n")
