"""SIGKILL of a real scheduler process loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent, wait_until


async def _keep_heartbeating(agent: SimAgent, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, AssertionError, OSError):
            await agent.heartbeat()
        await asyncio.sleep(0.3)


async def test_sigkill_during_a_burst_keeps_every_acknowledged_job(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    agent = SimAgent(http, sched.url, sched.join_token, "worker", cpu=8, max_parallel=3)
    await agent.register()
    running = []
    for _ in range(3):
        _, job = await admin.post("/api/v1/jobs", {"image": "busybox"})
        running.append(job["id"])
    await wait_until(lambda: _has_assignments(agent, 3), timeout=10)
    for job_id in running:
        assert (await agent.report(job_id, "running"))[0] == 200
    stop = asyncio.Event()
    beats = asyncio.create_task(_keep_heartbeating(agent, stop))

    acknowledged: list[str] = []

    async def submit(i: int) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            status, body = await admin.post(
                "/api/v1/jobs", {"image": "busybox", "name": f"burst-{i}"}
            )
            if status == 201:
                acknowledged.append(body["id"])

    burst = [asyncio.create_task(submit(i)) for i in range(400)]
    await wait_until(lambda: len(acknowledged) >= 50, timeout=20, interval=0.005)
    sched.kill(signal.SIGKILL)
    await asyncio.gather(*burst)
    assert len(acknowledged) >= 50

    sched.start()
    # Every acknowledged job is there, queued (no node has room for it).
    for job_id in acknowledged:
        status, job = await admin.get(f"/api/v1/jobs/{job_id}")
        assert status == 200, job_id
        assert job["state"] == "queued"

    # The jobs that were running carry on: the agent's heartbeats re-attach them and
    # they are not requeued, even well past the restart grace and the node TTL.
    await asyncio.sleep(4.0)
    for job_id in running:
        _, job = await admin.get(f"/api/v1/jobs/{job_id}")
        assert job["state"] == "running" and job["attempt"] == 1, job
    for job_id in running:
        status, body = await agent.report(job_id, "completed", exit_code=0)
        assert status == 200, body
    for job_id in running:
        _, job = await admin.get(f"/api/v1/jobs/{job_id}")
        assert job["state"] == "completed" and job["attempts"] == []
    stop.set()
    await beats


async def _has_assignments(agent: SimAgent, n: int) -> bool:
    await agent.poll()
    return len(agent.running) >= n
