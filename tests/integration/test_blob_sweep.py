"""A real scheduler process sweeps the blobs no kept job names once past their grace,
and never one a kept job names: an input of a queued job, the outputs and checkpoint of
an ended one, also after a restart; once retention deletes a job, its blobs go too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent, wait_until

#: a tiny grace and retention passes five times a second, so sweeps come quickly
SWEEP_FLAGS = ("--blob-grace", "1", "--retention-interval", "0.2")


async def _upload(api: Api, data: bytes) -> str:
    status, body = await api.post("/api/v1/blobs", data=data)
    assert status in (200, 201), body
    digest: str = body["digest"]
    return digest


async def _stored(admin: Api, digest: str) -> bool:
    status, _ = await admin.get(f"/api/v1/blobs/{digest}")
    assert status in (200, 404), status
    return status == 200


async def _gone(admin: Api, digest: str) -> bool:
    return not await _stored(admin, digest)


async def _swept(http: aiohttp.ClientSession, sched: SchedulerProcess) -> dict[str, float]:
    async with http.get(
        f"{sched.url}/metrics", headers={"Authorization": f"Bearer {sched.admin_token}"}
    ) as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith(("berth_blobs_swept_total", "berth_blob_bytes_swept_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _swept_at_least(http: aiohttp.ClientSession, sched: SchedulerProcess, blobs: int) -> bool:
    swept = await _swept(http, sched)
    return swept.get('berth_blobs_swept_total{kind="blob"}', 0) >= blobs


async def _run(agent: SimAgent, admin: Api, spec: dict[str, object]) -> str:
    """Submit a job and have the agent take it and report it running."""
    status, job = await admin.post("/api/v1/jobs", spec)
    assert status == 201, job
    await wait_until(lambda: _assigned(agent, job["id"]), timeout=20)
    assert (await agent.report(job["id"], "running"))[0] == 200
    job_id: str = job["id"]
    return job_id


async def _assigned(agent: SimAgent, job_id: str) -> bool:
    await agent.poll()
    return job_id in agent.running


async def _checkpoint(agent: SimAgent, job_id: str, data: bytes) -> str:
    status, body = await agent.api.post(
        f"/api/v1/nodes/{agent.node_id}/jobs/{job_id}/checkpoint",
        data=data,
        params={"attempt": 1},
    )
    assert status == 200, body
    digest: str = body["digest"]
    return digest


def _file(sched: SchedulerProcess, digest: str) -> Path:
    return sched.state_dir / "blobs" / digest[:2] / digest


async def test_unnamed_blobs_are_swept_and_named_ones_stay_until_retention(
    tmp_path: Path,
) -> None:
    sched = SchedulerProcess(tmp_path / "state", *SWEEP_FLAGS).start()
    # A connection per request: the scheduler restarts under the session.
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await _sweeps_and_retention(sched, http)
    finally:
        sched.kill()


async def _sweeps_and_retention(sched: SchedulerProcess, http: aiohttp.ClientSession) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    agent = SimAgent(http, sched.url, sched.join_token, "worker")
    await agent.register()

    # An input archive named by a job that waits in the queue (no node matches).
    inputs = await _upload(admin, b"the input archive of a queued job")
    status, queued = await admin.post(
        "/api/v1/jobs",
        {"image": "busybox", "inputs": inputs, "constraints": {"labels": {"pool": "none"}}},
    )
    assert status == 201, queued
    # A job that writes two checkpoints (the first is superseded) and outputs.
    ran = await _run(agent, admin, {"image": "busybox"})
    superseded = await _checkpoint(agent, ran, b"checkpoint one")
    checkpoint = await _checkpoint(agent, ran, b"checkpoint two")
    outputs = await _upload(agent.api, b"the outputs of a job")
    status, body = await agent.report(ran, "completed", exit_code=0, outputs=outputs)
    assert status == 200, body
    # A job whose outputs are the very archive the queued job takes as input.
    producer = await _run(agent, admin, {"image": "busybox"})
    assert await _upload(agent.api, b"the input archive of a queued job") == inputs
    status, body = await agent.report(producer, "completed", exit_code=0, outputs=inputs)
    assert status == 200, body
    # Stored last, named by nothing: once it is swept, every blob above was past
    # its grace in the same sweep.
    started = time.monotonic()
    orphan = await _upload(admin, b"an upload no job names")
    await wait_until(lambda: _gone(admin, orphan), timeout=30, interval=0.1)
    swept_after_s = time.monotonic() - started
    assert not _file(sched, orphan).exists()
    assert await _gone(admin, superseded)
    for named in (inputs, checkpoint, outputs):
        assert await _stored(admin, named), named
    status, body = await admin.get(f"/api/v1/jobs/{ran}/outputs")
    assert status == 200 and body == b"the outputs of a job"
    # A blob reads as gone once it is moved aside; the sweep counts it when it ends.
    await wait_until(lambda: _swept_at_least(http, sched, 2), timeout=10, interval=0.1)
    first = await _swept(http, sched)

    # After a restart the names are counted again from the store.
    sched.stop()
    sched.start()
    orphan_again = await _upload(admin, b"another upload no job names")
    await wait_until(lambda: _gone(admin, orphan_again), timeout=30, interval=0.1)
    for named in (inputs, checkpoint, outputs):
        assert await _stored(admin, named), named

    # Retention deletes the ended jobs (ended well over 0.864 s ago) as the
    # scheduler starts; their outputs and checkpoint go, the input stays while
    # the queued job names it, though the deleted producer named it too.
    sched.stop()
    sched.extra = (*SWEEP_FLAGS, "--job-retention-days", "0.00001")
    sched.start()
    for job_id in (ran, producer):
        await wait_until(lambda j=job_id: _job_gone(admin, j), timeout=30, interval=0.1)
    for digest in (outputs, checkpoint):
        await wait_until(lambda d=digest: _gone(admin, d), timeout=30, interval=0.1)
    last = await _upload(admin, b"a last upload no job names")
    await wait_until(lambda: _gone(admin, last), timeout=30, interval=0.1)
    assert await _stored(admin, inputs)
    status, job = await admin.get(f"/api/v1/jobs/{queued['id']}")
    assert status == 200 and job["state"] == "queued"
    print(
        json.dumps(
            {
                "orphan_swept_after_s": round(swept_after_s, 3),
                "grace_s": 1,
                "retention_interval_s": 0.2,
                "swept_before_restart": first,
                "swept_after_retention": await _swept(http, sched),
            }
        )
    )


async def _job_gone(admin: Api, job_id: str) -> bool:
    status, _ = await admin.get(f"/api/v1/jobs/{job_id}")
    return status == 404
