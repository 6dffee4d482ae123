"""Ended jobs live in the store: memory keeps an index entry each and the documents of
the most recently used. Every read and action on them works as if all were in memory,
also after a restart and while many of them change at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess, SimAgent, wait_until

#: the fewest documents the scheduler may keep; these tests end more jobs than that
CACHED = 1100
JOBS = 2400
SPEC = {"image": "busybox", "labels": {"wave": "one"}}


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path / "state",
        "--ended-jobs-cached",
        str(CACHED),
        "--submit-rate",
        "0",
        "--submit-burst",
        "100000",
    ).start()
    yield proc
    proc.kill()


async def _submit(admin: Api, n: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        batch = [SPEC] * min(800, n - len(ids))
        status, body = await admin.post("/api/v1/jobs/batch", {"jobs": batch})
        assert status == 201, body
        ids += [j["id"] for j in body["jobs"]]
    return ids


async def _all(admin: Api, state: str) -> list[dict[str, object]]:
    jobs: list[dict[str, object]] = []
    cursor = None
    while True:
        params = {"state": state, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        status, page = await admin.get("/api/v1/jobs", params=params)
        assert status == 200, page
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return jobs


async def _given(agent: SimAgent, job_id: str) -> bool:
    await agent.poll()
    return job_id in agent.running


async def _append(agent: SimAgent, job_id: str, offset: int, data: bytes) -> tuple[int, Any]:
    return await agent.api.call(
        "POST",
        f"/api/v1/nodes/{agent.node_id}/jobs/{job_id}/logs",
        data=data,
        params={"attempt": 1, "offset": offset},
    )


async def test_more_ended_jobs_than_memory_keeps_read_and_act_as_usual(
    lean: SchedulerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        admin = Api(http, lean.url, lean.admin_token)
        ids = await _submit(admin, JOBS)
        status, body = await admin.post(
            "/api/v1/jobs/cancel", {"filter": {"labels": {"wave": "one"}}}
        )
        assert status == 200 and all(r["ok"] for r in body["results"])
        assert len(body["results"]) == JOBS

    lean.stop()
    lean.start()
    async with aiohttp.ClientSession() as http:
        admin = Api(http, lean.url, lean.admin_token)
        cancelled = await _all(admin, "cancelled")
        assert sorted(str(j["id"]) for j in cancelled) == sorted(ids)
        assert {j["reason"] for j in cancelled} == {"cancelled by admin"}
        for job_id in random.sample(ids, 50):
            status, job = await admin.get(f"/api/v1/jobs/{job_id}")
            assert status == 200 and job["state"] == "cancelled", job

        # Many at once, from documents read back from the store while others change.
        retried, again = await asyncio.gather(
            admin.post("/api/v1/jobs/retry", {"filter": {"state": "cancelled"}}),
            admin.post("/api/v1/jobs/cancel", {"ids": ids[:500]}),
        )
        assert retried[0] == 200 and again[0] == 200
        queued = await _all(admin, "queued")
        ended = await _all(admin, "cancelled")
        assert len(queued) + len(ended) == JOBS
        assert all(j["attempt"] == 2 for j in queued)


async def test_an_ended_job_read_back_from_the_store_takes_its_late_logs(
    lean: SchedulerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        admin = Api(http, lean.url, lean.admin_token)
        agent = SimAgent(http, lean.url, lean.join_token, "worker", cpu=8, max_parallel=1)
        await agent.register()
        _, job = await admin.post("/api/v1/jobs", {"image": "busybox"})
        await wait_until(lambda: _given(agent, job["id"]), timeout=10)
        assert (await agent.report(job["id"], "running"))[0] == 200
        status, body = await _append(agent, job["id"], 0, b"first\n")
        assert status == 200
        assert (await agent.report(job["id"], "completed", exit_code=0))[0] == 200
        # Its document leaves memory: more jobs end than memory keeps.
        await _submit(admin, CACHED + 100)
        await admin.post("/api/v1/jobs/cancel", {"filter": {"state": "queued"}})

        status, body = await _append(agent, job["id"], body["offset"], b"late\n")
        assert status == 200, body
        status, text = await admin.get(f"/api/v1/jobs/{job['id']}/logs")
        assert status == 200 and text == b"first\nlate\n"
