"""The leader's history loop, and the reads of the history and of jobs' usage.

Every ``--history-interval`` seconds the leader samples the cluster from memory
(``scheduler.history.sample``), stages the sample as a tier-0 row with the coarser
rows that came due and the cut of rows past keeping, commits that like any change,
and then tells the sample live (``stats.sample``). Only the leader runs the loop (it
is one of the tasks of ``Service.lead``), so a standby never writes; it reads the
rows the leader stored. A sample that could not be written stays staged and is
written with the next batch that succeeds, like any change.

A standby tells its own subscribers the samples the leader stored (``relay``), read
from the store each interval, so a dashboard connected to a standby still sees
``stats.sample``; ``job.usage`` comes from agents' reports, which only the leader
takes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.codec import to_builtins
from common.errors import NotFound
from common.history_models import History, JobUsage, StatsSample
from scheduler import history
from scheduler.events import Event
from scheduler.state.records import dt
from scheduler.store.base import HistoryRow

if TYPE_CHECKING:
    from scheduler.service import Service

log = logging.getLogger(__name__)

#: how often an agent samples a running attempt (agent.config.USAGE_SAMPLE_INTERVAL_S)
USAGE_INTERVAL_S = 2.0
#: a time after every sample (Unix seconds, in the year 33658)
_FAR_FUTURE = 1e12


class Sampler:
    """Parameters: the service whose state it samples, store it writes and bus it tells."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.interval_s = svc.config.history_interval_s
        #: jobs started and ended since the last sample, from committed events
        self.tally = history.Tally()

    async def run(self) -> None:
        """Sample every interval until cancelled (while this scheduler leads)."""
        self.tally.take()
        roller: history.Roller | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if roller is None:
                    roller = await self._roller()
                await self.tick(roller)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("the cluster's history could not be sampled: %s", e)

    async def _roller(self) -> history.Roller:
        """Where the coarser tiers' stored rows end (another leader may have written
        them)."""
        tiers = history.tiers_for(self.interval_s)
        done = []
        for i in range(1, len(tiers)):
            end = await self.svc.store.history_end(i)
            done.append(None if end is None else end + tiers[i].step_s)
        return history.Roller(self.interval_s, done)

    async def tick(self, roller: history.Roller) -> None:
        svc, state = self.svc, self.svc.state
        if svc.guard.refusal() is not None:
            # The disk is full or failing: the history does without this sample (the
            # reserve is for agents' bookkeeping); it is still told live.
            started, ended = self.tally.take()
            now, nodes = self.now(), state.nodes.values()
            svc.publish_live([_event(history.sample(now, state.counts, nodes, started, ended))])
            return
        # Coarser rows first: reading tier 0 awaits, the sample is taken after it.
        due = roller.due(state.clock())
        rolled: list[HistoryRow] = []
        for tier, start, end in due:
            rows = await svc.store.read_history(0, start, end)
            step = roller.tiers[tier].step_s
            rolled += [HistoryRow(tier, r) for r in history.rollup(rows, step)]
        now = state.clock()
        started, ended = self.tally.take()
        sample = history.sample(now, state.counts, state.nodes.values(), started, ended)
        changes = state.changes
        changes.history.append(HistoryRow(0, sample))
        changes.history += rolled
        changes.history_cut.update(roller.cutoffs(now))
        state.effects.live.append(_event(sample))
        await svc.commit()
        for tier, _, end in due:
            roller.stored(tier, end)

    async def relay(self) -> None:
        """While this scheduler stands by, tell the samples the leader stored since the
        last look; until cancelled (for every scheduler sharing a store)."""
        #: the time of the newest sample told (the leader's clock); None: not known yet
        seen: float | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            if self.svc.leading():
                # Its own samples are told as they are taken.
                seen = None
                continue
            store = self.svc.store
            try:
                if seen is None:
                    seen = await store.history_end(0) or 0.0
                    continue
                rows = await store.read_history(0, seen, _FAR_FUTURE)
            except Exception as e:
                log.debug("the leader's samples could not be read: %s", e)
                continue
            fresh = [r for r in rows if r.t > seen]
            if fresh:
                seen = fresh[-1].t
                self.svc.publish_live([_event(r) for r in fresh])

    def now(self) -> float:
        return self.svc.state.clock()

    async def history(self, since: float, until: float, step: int | None) -> History:
        """The reply of GET /api/v1/stats/history; ValueError for a step too small."""
        tier, step = history.choose(since, until, self.interval_s, step)
        store, end = self.svc.store, until + 1e-6
        rows = await store.read_history(tier, since, end)
        if tier > 0:
            # A coarser tier holds complete steps only: the samples after its last one
            # (the last minutes) come from tier 0.
            covered = rows[-1].t + history.TIERS[tier].step_s if rows else since
            rows += await store.read_history(0, covered, end)
        return history.history(rows, since, until, step)

    async def usage(self, job_id: str, attempt: int | None) -> JobUsage:
        """An attempt's usage samples (the job is visible to the caller); the latest
        attempt by default."""
        job = self.svc.state.find(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", {"job_id": job_id})
        if attempt is None:
            attempt = job.attempt
        if not 1 <= attempt <= job.attempt:
            raise NotFound(
                f"job {job_id} has no attempt {attempt}", {"field": "attempt", "job_id": job_id}
            )
        samples = await self.svc.store.read_usage(job_id, attempt)
        return JobUsage(job_id, attempt, USAGE_INTERVAL_S, samples)


def _event(sample: StatsSample) -> Event:
    return Event(index=0, type="stats.sample", ts=dt(sample.t), data=to_builtins(sample))
