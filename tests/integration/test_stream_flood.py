"""One token at every documented limit of the event stream must not freeze the
scheduler for everyone else.

The attacker (tests/integration/flood.py, its own process) holds the most WebSockets a
token may open, each with the most subscriptions a socket may hold, and reads none of
them; a read token holds the most SSE streams, each replaying the whole history (tens
of thousands of events) and reading as fast as it is sent. Meanwhile another user
submits 1,000-job batches and a node heartbeats through the agent protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from scheduler.config import MAX_STREAMS_PER_TOKEN, MAX_SUBSCRIPTIONS_PER_TOKEN
from scheduler.routes.socket import MAX_SOCKET_SUBSCRIPTIONS
from tests.support import REPO, Api, SchedulerProcess, SimAgent

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memory_mb": 64}}
#: a job no node matches: it stays queued until cancelled
UNPLACED = {**SPEC, "constraints": {"labels": {"pool": "nowhere"}}}
BATCH = 1000
#: rounds of submit + cancel that fill the history the streams replay (2 events a job)
SEED_ROUNDS = 15
#: batches whose median is the victim's submit latency, without and with the attack
SAMPLES = 7
HEARTBEAT_S = 1.0
DEADLINE_S = 120.0


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    # The documented stream limits stay at their defaults: they are what is attacked.
    proc = SchedulerProcess(
        tmp_path / "state",
        "--log-level",
        "warning",
        "--heartbeat-interval",
        str(HEARTBEAT_S),
        "--node-ttl",
        "600",
        "--submit-rate",
        "0",
    ).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=DEADLINE_S)
    ) as s:
        yield s


async def _token(admin: Api, role: str, name: str) -> str:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name})
    assert status == 201, made
    token: str = made["token"]
    return token


async def _submit_and_cancel(api: Api) -> float:
    """Seconds one 1,000-job batch took to be accepted; the jobs are then cancelled so
    that the queue stays the same size from one sample to the next."""
    started = time.perf_counter()
    status, body = await api.post("/api/v1/jobs/batch", {"jobs": [UNPLACED] * BATCH})
    took = time.perf_counter() - started
    assert status == 201, body
    ids = [j["id"] for j in body["jobs"]]
    status, body = await api.post("/api/v1/jobs/cancel", {"ids": ids})
    assert status == 200, body
    return took


async def _timed_get(api: Api, path: str) -> float:
    started = time.perf_counter()
    status, body = await api.get(path)
    assert status == 200, body
    return time.perf_counter() - started


async def _heartbeats(agent: SimAgent, stop: asyncio.Event) -> None:
    """What a healthy agent does: a heartbeat every interval, whatever the scheduler is
    busy with."""
    while not stop.is_set():
        due = time.monotonic() + HEARTBEAT_S
        await agent.heartbeat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))


async def _measure(victim: Api, admin: Api) -> tuple[float, float]:
    """Median seconds of the victim's batch submits, and the slowest stats read."""
    submits, stats = [], []
    for _ in range(SAMPLES):
        submits.append(await _submit_and_cancel(victim))
        stats.append(await _timed_get(admin, "/api/v1/stats"))
    return statistics.median(submits), max(stats)


def _start_flood(url: str, submit_token: str, read_token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.flood",
            url,
            submit_token,
            read_token,
            str(MAX_STREAMS_PER_TOKEN),
            str(MAX_SOCKET_SUBSCRIPTIONS),
            str(MAX_STREAMS_PER_TOKEN),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_one_token_at_every_stream_limit_does_not_slow_others_or_late_a_node(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    victim = Api(http, sched.url, await _token(admin, "submit", "victim"))
    mallory = await _token(admin, "submit", "mallory")
    watcher = await _token(admin, "read", "watcher")

    agent = SimAgent(http, sched.url, sched.join_token, "steady")
    await agent.register()
    stop = asyncio.Event()
    beating = asyncio.create_task(_heartbeats(agent, stop))
    flood: subprocess.Popen[str] | None = None
    try:
        for _ in range(SEED_ROUNDS):
            await _submit_and_cancel(admin)
        _, page = await admin.get("/api/v1/events", params={"since": 10**12})
        start = page["index"]
        assert start >= 2 * BATCH * SEED_ROUNDS

        quiet_submit, quiet_stats = await _measure(victim, admin)
        assert sched.proc is not None
        scheduler = psutil.Process(sched.proc.pid)
        quiet_rss = scheduler.memory_info().rss

        flood = _start_flood(sched.url, mallory, watcher)
        assert flood.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(flood.stdout.readline), DEADLINE_S)
        assert ready.startswith("ready"), ready
        _, sockets, subscriptions, streams = ready.split()
        assert int(sockets) == MAX_STREAMS_PER_TOKEN
        assert int(streams) == MAX_STREAMS_PER_TOKEN

        busy_submit, busy_stats = await _measure(victim, admin)
        busy_rss = scheduler.memory_info().rss
        assert flood.stdin is not None
        flood.stdin.close()
        received = await asyncio.wait_for(asyncio.to_thread(flood.stdout.readline), DEADLINE_S)

        figures: dict[str, Any] = {
            "quiet_submit_s": round(quiet_submit, 3),
            "busy_submit_s": round(busy_submit, 3),
            "quiet_stats_s": round(quiet_stats, 3),
            "busy_stats_s": round(busy_stats, 3),
            "subscriptions_held": int(subscriptions),
            "rss_mib": (quiet_rss >> 20, busy_rss >> 20),
            "stream": received.strip(),
        }
        print(figures)

        stop.set()
        await beating
        status, page = await admin.get("/api/v1/events", params={"since": start, "topics": "nodes"})
        assert status == 200, page
        states = [
            e["data"]["state"]
            for e in page["events"]
            if e["type"] == "node.state" and e["node_id"] == agent.node_id
        ]
        assert "unhealthy" not in states, (states, figures)
        # Loose on purpose: test machines are shared and noisy; a flood that did slow
        # others would cost many times more, not a few.
        assert busy_submit <= 4 * quiet_submit + 0.1, figures
        # Every socket asked for the most a socket may hold; the token got its cap.
        assert int(subscriptions) == min(
            MAX_SUBSCRIPTIONS_PER_TOKEN, MAX_STREAMS_PER_TOKEN * MAX_SOCKET_SUBSCRIPTIONS
        )
    finally:
        stop.set()
        beating.cancel()
        with contextlib.suppress(BaseException):
            await beating
        if flood is not None:
            flood.kill()
            flood.wait()
