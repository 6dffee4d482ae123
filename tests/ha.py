"""Schedulers sharing one PostgreSQL database, for the tests of leading and standing by."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import SchedulerProcess, wait_until

#: how long a scheduler may take to lead, or to stand by and follow (seconds)
READY_S = 30.0


async def ready(http: aiohttp.ClientSession, sched: SchedulerProcess, status: str) -> None:
    """Wait until ``sched``'s /readyz says ``status`` ("ready" leads, "standby" follows)."""

    async def answers() -> bool:
        try:
            async with http.get(sched.url + "/readyz") as r:
                return r.status == 200 and (await r.json())["status"] == status
        except aiohttp.ClientError:
            return False

    await wait_until(answers, timeout=READY_S, interval=0.1)


async def start_standby(
    http: aiohttp.ClientSession, leader: SchedulerProcess, standby: SchedulerProcess
) -> None:
    """Start ``standby`` beside a leading ``leader`` and wait until it follows."""
    # Only a scheduler that has led writes admin.token, which start() waits for: the
    # standby gets the leader's (the same token, from the same database).
    standby.state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(leader.state_dir / "admin.token", standby.state_dir / "admin.token")
    await asyncio.to_thread(standby.start, READY_S)
    await ready(http, standby, "standby")


@pytest.fixture
async def pair(
    pg_dsn: str, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[SchedulerProcess, SchedulerProcess]]:
    """A leader and a standby on one database."""
    leader = SchedulerProcess(tmp_path / "one", "--store", pg_dsn)
    standby = SchedulerProcess(tmp_path / "two", "--store", pg_dsn)
    try:
        await asyncio.to_thread(leader.start, READY_S)
        await ready(http, leader, "ready")
        await start_standby(http, leader, standby)
        yield leader, standby
    finally:
        standby.kill()
        leader.kill()
