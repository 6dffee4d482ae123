"""The database host is lost under a running scheduler; its synchronous standby is
promoted and Berth carries on with no acknowledged job lost.

A real scheduler process runs on a PostgreSQL primary that waits for a streaming
standby on every commit (``tests.pg_standby``); its ``--store`` DSN names both servers
with ``target_session_attrs=read-write``. A submitter sends jobs one at a time through
``BerthClient`` (each under an Idempotency-Key, sent again with the same key until it
is answered 2xx) and records every acknowledged job id. After ``BEFORE_KILL``
acknowledged submits the primary's postmaster and backends are SIGKILLed at once; once
the scheduler has noticed (it no longer says it leads) and a submit was refused even
after the client's own retries, the standby is promoted, and the submitter goes on until
``AFTER_KILL`` more are acknowledged.

What it pins down: every acknowledged job is on the scheduler (GET /api/v1/jobs/{id})
and in the promoted database's jobs table, and again after the scheduler is SIGKILLed
and started anew on the same DSN, so the database, not memory, kept them; each key
made one job, no more; and the scheduler found the promoted server by itself, with no
restart. How long submits were refused around the promotion is printed and recorded.

Not covered: a primary that hangs instead of dying (a frozen host, or one whose packets
are dropped), whose socket accepts and never answers. asyncpg's connect ``timeout``
spans the whole host list, so such a first host uses it up and the standby is never
tried.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from common.client import BerthClient
from common.errors import BerthError, NotFound
from common.models import JobSpec
from tests.chaos.conftest import Figures
from tests.pg_standby import PgStandbyPair, pg_pair  # noqa: F401 - the fixture
from tests.support import QUIET, UNLIMITED, SchedulerProcess, wait_until

#: acknowledged submits before the primary is killed
BEFORE_KILL = 40
#: acknowledged submits wanted after the kill (all of them after the promotion)
AFTER_KILL = 40
#: the bound of every phase of the test
PHASE_TIMEOUT_S = 90.0
#: pause between two tries of one refused submit, on top of the client's own backoff
RETRY_PAUSE_S = 0.05


@dataclass
class Submitter:
    """Submits jobs one at a time until stopped, each until it is acknowledged."""

    client: BerthClient
    #: acknowledged job ids in submit order
    acked: list[str] = field(default_factory=list)
    #: (first sent, acknowledged) of each acknowledged job, monotonic
    times: list[tuple[float, float]] = field(default_factory=list)
    #: calls that raised after the client's own retries (503s, unreachable scheduler)
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        # The stop flag is read between jobs only: every key sent is acknowledged.
        while not self.stop.is_set():
            n += 1
            key = uuid.uuid4().hex
            spec = JobSpec(name=f"ha-{n}", image="busybox", command=["true"])
            sent = time.monotonic()
            while True:
                try:
                    job = await self.client.submit_job(spec, idempotency_key=key)
                except (BerthError, aiohttp.ClientError, TimeoutError) as e:
                    self.refused += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                break
            self.acked.append(job.id)
            self.times.append((sent, time.monotonic()))


async def _leads(http: aiohttp.ClientSession, sched: SchedulerProcess) -> bool:
    """Whether the scheduler says it is the leader (and takes writes)."""
    try:
        async with http.get(f"{sched.url}/readyz", params={"leader": "1"}) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _not_leading(http: aiohttp.ClientSession, sched: SchedulerProcess) -> bool:
    return not await _leads(http, sched)


async def _missing_on(sched: SchedulerProcess, ids: list[str]) -> list[str]:
    """The ids the scheduler answers 404 for (its reads, through the client)."""
    missing = []
    async with BerthClient(sched.url, sched.admin_token, timeout=10) as client:
        for job_id in ids:
            try:
                job = await client.get_job(job_id)
            except NotFound:
                missing.append(job_id)
                continue
            assert job.id == job_id
    return missing


@dataclass
class Failover:
    """When each step of the failover happened (monotonic seconds)."""

    #: every process of the primary is gone
    killed_at: float = 0.0
    #: the scheduler no longer says it leads
    noticed_at: float = 0.0
    #: the promotion was started, and returned
    promoting_at: float = 0.0
    promoted_at: float = 0.0


async def _fail_over(
    pair: PgStandbyPair, http: aiohttp.ClientSession, sched: SchedulerProcess, sub: Submitter
) -> Failover:
    """Kill the primary; promote the standby once the scheduler has noticed and a submit
    was refused even after the client's own retries, as an operator or a failover
    manager acts some time after a host went away. Meanwhile the scheduler fails its
    commits, steps down and keeps trying a database that is not there."""
    times = Failover()
    # Off the event loop, so that the submitter keeps sending meanwhile.
    await asyncio.to_thread(pair.kill_primary)
    times.killed_at = time.monotonic()
    await wait_until(lambda: _not_leading(http, sched), timeout=PHASE_TIMEOUT_S)
    times.noticed_at = time.monotonic()
    refused = sub.refused
    await wait_until(lambda: sub.refused > refused, timeout=PHASE_TIMEOUT_S)
    times.promoting_at = time.monotonic()
    await asyncio.to_thread(pair.promote)
    times.promoted_at = time.monotonic()
    return times


async def _server_port(dsn: str) -> int:
    """The port of the server a connection with ``dsn`` lands on; it must take writes."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        return int(await conn.fetchval("SELECT current_setting('port')"))
    finally:
        await conn.close()


async def test_the_two_host_dsn_connects_to_whichever_server_takes_writes(
    pg_pair: PgStandbyPair,  # noqa: F811 - the fixture
) -> None:
    """asyncpg with ``target_session_attrs=read-write`` passes over the read-only
    standby, finds nothing while only the standby is left, and the standby once it is
    promoted; the scheduler's store relies on it."""
    dsns = [pg_pair.dsn(), pg_pair.dsn(standby_first=True)]
    for dsn in dsns:
        assert await _server_port(dsn) == pg_pair.primary.port
    await asyncio.to_thread(pg_pair.kill_primary)
    for dsn in dsns:
        # The primary's socket is there but nobody listens; the standby is read-only.
        with pytest.raises(OSError):
            await asyncpg.connect(dsn, timeout=10)
    await asyncio.to_thread(pg_pair.promote)
    for dsn in dsns:
        assert await _server_port(dsn) == pg_pair.standby.port


async def test_acknowledged_jobs_survive_the_loss_of_the_database_host(
    pg_pair: PgStandbyPair,  # noqa: F811 - the fixture
    tmp_path: Path,
    figures: Figures,
) -> None:
    """No acknowledged submit is lost when the primary dies and the synchronous standby
    is promoted; the scheduler carries on on the promoted server by itself."""
    db = pg_pair.primary.new_database()
    sched = SchedulerProcess(
        tmp_path / "state", "--store", pg_pair.dsn(db), *UNLIMITED, *QUIET
    ).start()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            BerthClient(sched.url, sched.admin_token, timeout=10) as client,
        ):
            await wait_until(lambda: _leads(http, sched), timeout=PHASE_TIMEOUT_S)
            sub = Submitter(client)
            task = asyncio.create_task(sub.run())
            try:
                await wait_until(lambda: len(sub.acked) >= BEFORE_KILL, timeout=PHASE_TIMEOUT_S)
                acked_before = len(sub.acked)
                times = await _fail_over(pg_pair, http, sched, sub)
                figures.faults += 1
                await wait_until(
                    lambda: len(sub.acked) >= acked_before + AFTER_KILL, timeout=PHASE_TIMEOUT_S
                )
            finally:
                sub.stop.set()
                await asyncio.wait_for(task, PHASE_TIMEOUT_S)

        # Nothing commits with the primary gone and the standby read-only: a submit sent
        # after the kill is acknowledged only once the promotion is under way.
        after = [acked for sent, acked in sub.times if sent > times.killed_at]
        assert after and min(after) > times.promoting_at, "acknowledged with no database"
        refused_s = min(after) - times.killed_at
        figures.extra.update(
            {
                "acked_before_kill": acked_before,
                "noticed_s": round(times.noticed_at - times.killed_at, 3),
                "promoted_s": round(times.promoted_at - times.killed_at, 3),
                "promote_s": round(times.promoted_at - times.promoting_at, 3),
                "refused_s": round(refused_s, 3),
                "after_promotion_s": round(min(after) - times.promoted_at, 3),
                "refused_calls": sub.refused,
            }
        )
        print(
            f"\nsubmits refused for {refused_s:.2f} s, from the primary's SIGKILL to the "
            "acknowledgement of the first submit sent after it: the scheduler noticed after "
            f"{times.noticed_at - times.killed_at:.2f} s, the standby was promoted after "
            f"{times.promoted_at - times.killed_at:.2f} s (pg_promote returned), the first "
            f"submit was acknowledged {min(after) - times.promoted_at:+.2f} s from then; "
            f"{sub.refused} calls raised after the client's own retries, e.g. {sub.errors[:2]}"
        )

        acked = sub.acked
        figures.jobs = figures.acknowledged = len(acked)
        # One job per key: a resend after a lost answer found the job it had made.
        figures.duplicates = len(acked) - len(set(acked))
        # The promoted server holds every acknowledged job, and no job no key made.
        rows = pg_pair.standby.psql("SELECT id FROM jobs ORDER BY id", db=db).split()
        lost_in_db = sorted(set(acked) - set(rows))
        figures.duplicates += len(set(rows) - set(acked))
        missing = await _missing_on(sched, acked)
        figures.losses = len(set(missing) | set(lost_in_db))
        assert lost_in_db == [], f"acknowledged but not in the promoted database: {lost_in_db}"
        assert missing == [], f"acknowledged but unknown to the scheduler: {missing}"
        assert figures.duplicates == 0, "jobs that no acknowledgement named, or named twice"

        # Memory goes; what the promoted database kept is all there is.
        sched.kill()
        sched.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await wait_until(lambda: _leads(http, sched), timeout=PHASE_TIMEOUT_S)
        missing = await _missing_on(sched, acked)
        figures.losses = len(set(missing) | set(lost_in_db))
        assert missing == [], f"acknowledged but gone after a restart: {missing}"
    finally:
        sched.kill()
