"""A leader whose event loop is busy for seconds with honest work keeps the lead.

Two real `berth scheduler` processes share one PostgreSQL database (a database of its
own on the suite's throwaway cluster). Building a 100,000-task array in one submit, and
loading 100,000 queued jobs when taking the lead, each keep the leader's event loop
busy for seconds, longer than the server lets the lock's session stay idle: the lock
is kept by a thread of its own (``scheduler.leadership``), so neither ends the lead.
The epoch in the ``leader`` row is what would move if it did: every takeover bumps it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.ha import READY_S, ready, start_standby
from tests.support import QUIET, Api, SchedulerProcess

TASKS = 100_000
#: how long the test watches a leader after its long stretch of work (seconds): the
#: lease is 3 s and the server ends an idle session after 2 s, so a lead lost to the
#: stretch shows within it
WATCH_S = 6.0
#: one submit the leader must acknowledge, and the time allowed for it
SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.1, "memory_mb": 16}}
REQUEST_S = 60.0
FLAGS = ("--submit-rate", "0", "--log-level", "warning", *QUIET)


async def leader_row(dsn: str) -> tuple[int, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT epoch, holder FROM leader WHERE id = 1")
    finally:
        await conn.close()
    assert row is not None
    return int(row["epoch"]), row["holder"]


def scheduler_id(sched: SchedulerProcess) -> str:
    return (sched.state_dir / "scheduler.id").read_text().strip()


async def submit(api: Api, spec: dict[str, Any]) -> dict[str, Any]:
    status, body = await api.post("/api/v1/jobs", spec)
    assert status == 201, body
    return dict(body)


async def keeps_leading(
    api: Api, dsn: str, sched: SchedulerProcess, epoch: int, watch_s: float = WATCH_S
) -> int:
    """Submit one job after another to ``sched`` for ``watch_s``: each is acknowledged,
    and the leader row names ``sched`` at ``epoch`` throughout. Returns the submits."""
    holder = scheduler_id(sched)
    submitted = 0
    end = time.monotonic() + watch_s
    while time.monotonic() < end:
        await submit(api, SPEC)
        submitted += 1
        assert await leader_row(dsn) == (epoch, holder)
        await asyncio.sleep(0.1)
    return submitted


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_S)) as s:
        yield s


@pytest.fixture
async def two(
    pg_dsn: str, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[SchedulerProcess, SchedulerProcess]]:
    """A leader and a standby on one database."""
    leader = SchedulerProcess(tmp_path / "one", "--store", pg_dsn, *FLAGS)
    standby = SchedulerProcess(tmp_path / "two", "--store", pg_dsn, *FLAGS)
    try:
        await asyncio.to_thread(leader.start, READY_S)
        await ready(http, leader, "ready")
        await start_standby(http, leader, standby)
        yield leader, standby
    finally:
        standby.kill()
        leader.kill()


async def test_long_array_submit_and_long_load_leave_the_lead_where_it_is(
    two: tuple[SchedulerProcess, SchedulerProcess], pg_dsn: str, http: aiohttp.ClientSession
) -> None:
    leader, standby = two
    token = leader.admin_token
    on_leader = Api(http, leader.url, token)
    epoch, holder = await leader_row(pg_dsn)
    assert holder == scheduler_id(leader)

    # One submit builds 100,000 tasks in one go on the leader's event loop.
    started = time.monotonic()
    array = await submit(on_leader, {**SPEC, "array": {"count": TASKS}})
    print(f"a {TASKS}-task array acknowledged after {time.monotonic() - started:.2f} s")
    assert await leader_row(pg_dsn) == (epoch, holder)
    await keeps_leading(on_leader, pg_dsn, leader, epoch)
    status, summary = await on_leader.get(f"/api/v1/arrays/{array['array_id']}")
    assert status == 200, summary
    status, body = await on_leader.get("/api/v1/schedulers")
    assert status == 200, body
    listed = {s["id"]: s for s in body["schedulers"]}
    assert listed[holder]["role"] == "leader" and listed[holder]["epoch"] == epoch, listed

    # The standby takes over with 100,000 queued jobs to load, and keeps the lead it
    # took: its epoch stays once taken.
    started = time.monotonic()
    leader.kill()
    await ready(http, standby, "ready")
    print(f"the standby led with {TASKS} jobs loaded {time.monotonic() - started:.2f} s after")
    new_epoch, new_holder = await leader_row(pg_dsn)
    assert new_holder == scheduler_id(standby)
    assert new_epoch == epoch + 1
    on_standby = Api(http, standby.url, token)
    await keeps_leading(on_standby, pg_dsn, standby, new_epoch)

    # The old leader, started again on its state directory, loads them too and stands
    # by; the lead stays where it is.
    await asyncio.to_thread(leader.start, READY_S)
    await ready(http, leader, "standby")
    await keeps_leading(on_standby, pg_dsn, standby, new_epoch)

    # And it leads again, once the other is gone, after one more load: it keeps that
    # lead too.
    standby.kill()
    await ready(http, leader, "ready")
    assert await leader_row(pg_dsn) == (new_epoch + 1, holder)
    await keeps_leading(on_leader, pg_dsn, leader, new_epoch + 1)
