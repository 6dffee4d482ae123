"""A schedule across a failover: only the leader fires, and a SIGKILL of the leader
neither doubles nor skips a run.

Two real `berth scheduler` processes share one PostgreSQL database (``pair`` of
tests/ha.py). A schedule fires every two seconds (a six-field cron expression) with
``catch_up: one``. While the leader fires, the standby shows the schedule as the store
holds it and refuses changes and runs (it never fires: a run of its own would be a
second job for one firing time). The leader
is SIGKILLed; the standby takes the lead, loads the schedule with the last
``next_run_at`` the old leader committed with its last run, and goes on.

What must hold: every run is a job labelled with the schedule, listed once in the
schedule's recent runs; no firing time has two runs; the first run of the new leader
stands for the first firing time after the old leader's last run (the times that fell
during the failover are missed, and ``catch_up: one`` runs once for them), and from
there every firing time has its run.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.ha import ready
from tests.support import Api, SchedulerProcess, wait_until

EVERY_S = 2
SPEC = {
    "name": "beat",
    "cron": f"* * * * * */{EVERY_S}",
    "catch_up": "one",
    "job": {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.1, "memory_mb": 16}},
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


def _at(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def _runs(api: Api) -> list[dict[str, Any]]:
    status, page = await api.get("/api/v1/jobs", params={"limit": 1000})
    assert status == 200, page
    return [j for j in page["jobs"] if j["spec"]["labels"].get("berth.schedule") == "beat"]


async def _schedule(api: Api) -> dict[str, Any]:
    status, body = await api.get("/api/v1/schedules/beat")
    assert status == 200, body
    return body


async def test_only_the_leader_fires_and_a_failover_neither_skips_nor_doubles(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    leader, standby = pair
    on_leader = Api(http, leader.url, leader.admin_token)
    on_standby = Api(http, standby.url, leader.admin_token)

    status, made = await on_leader.post("/api/v1/schedules", SPEC)
    assert status == 201, made
    await wait_until(lambda: _at_least(on_leader, 3), timeout=20)
    # The standby shows what the leader committed, and sends changes to the leader.
    seen = await _schedule(on_standby)
    assert seen["recent_runs"][0] == (await _schedule(on_leader))["recent_runs"][0]
    status, refused = await on_standby.post("/api/v1/schedules/beat/run")
    assert status == 503 and refused["error"]["code"] == "not_leader"
    assert refused["error"]["details"]["leader_url"] == leader.url

    before = await _schedule(on_leader)
    leader.kill()
    await ready(http, standby, "ready")
    # The new leader goes on firing.
    after = await wait_until(
        lambda: _fired_since(on_standby, len(before["recent_runs"]) + 3), timeout=30
    )

    jobs = await _runs(on_standby)
    runs = after["recent_runs"]
    assert len(runs) < 20, "the test runs too long to see every run"
    # Every run is one job, and every job a run listed once.
    assert sorted(j["id"] for j in jobs) == sorted(r["job_id"] for r in runs)
    assert len({r["job_id"] for r in runs}) == len(runs)
    dues = [_at(r["due"]) for r in runs]
    assert len(set(dues)) == len(dues), "a firing time has two runs"
    assert dues == sorted(dues)
    # What the old leader committed is kept as it was.
    assert runs[: len(before["recent_runs"])] == before["recent_runs"]
    # The first run after the failover stands for the first firing time after the last
    # run before it: nothing was skipped, however long the failover took.
    step = timedelta(seconds=EVERY_S)
    last_before = _at(before["recent_runs"][-1]["due"])
    first_after = dues[len(before["recent_runs"])]
    assert first_after == last_before + step, (last_before, first_after)
    # The times missed during the failover are run once (catch_up: one); from there on
    # every time has its run.
    gaps = [b - a for a, b in itertools.pairwise(dues) if b - a != step]
    assert len(gaps) <= 1, dues
    assert all(g > step and g.total_seconds() % EVERY_S == 0 for g in gaps), dues


async def _at_least(api: Api, n: int) -> bool:
    return len(await _runs(api)) >= n


async def _fired_since(api: Api, n: int) -> dict[str, Any] | None:
    try:
        shown = await _schedule(api)
    except AssertionError:
        return None
    return shown if len(shown["recent_runs"]) >= n else None


async def test_paused_schedule_is_not_fired_by_a_new_leader(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    leader, standby = pair
    on_leader = Api(http, leader.url, leader.admin_token)
    on_standby = Api(http, standby.url, leader.admin_token)
    status, made = await on_leader.post("/api/v1/schedules", {**SPEC, "paused": True})
    assert status == 201, made
    leader.kill()
    await ready(http, standby, "ready")
    await asyncio.sleep(EVERY_S * 1.5)
    shown = await _schedule(on_standby)
    assert shown["paused"] is True and shown["recent_runs"] == []
    assert await _runs(on_standby) == []
