from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A real scheduler process with short liveness intervals."""
    proc = SchedulerProcess(
        tmp_path / "state",
        "--heartbeat-interval",
        "0.5",
        "--node-ttl",
        "2",
        "--restart-grace",
        "3",
    ).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def admin(sched: SchedulerProcess, http: aiohttp.ClientSession) -> Api:
    return Api(http, sched.url, sched.admin_token)
