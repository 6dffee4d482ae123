"""The cluster's history and jobs' usage samples over HTTP, on both stores: what the
leader samples is served by GET /api/v1/stats/history and survives a restart; usage
samples an agent reports are served per attempt; both are told live on the event
stream without taking an event index of their own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.ha import READY_S, ready, start_standby
from tests.integration.conftest import StartAgent
from tests.support import REPO, Api, SchedulerProcess, SimAgent, wait_until

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memory_mb": 64}}
DEADLINE_S = 60.0


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path / "state", "--history-interval", "0.5", "--heartbeat-interval", "0.5"
    ).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def _history(api: Api, **params: Any) -> dict[str, Any]:
    status, body = await api.get("/api/v1/stats/history", params={"since": "10m", **params})
    assert status == 200, body
    return dict(body)


async def _sse_frames(
    http: aiohttp.ClientSession, url: str, token: str, wanted: set[str]
) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of the stream's frames until one of each wanted type came."""
    frames: list[tuple[str | None, str, Any]] = []
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    buf = b""
    async with asyncio.timeout(DEADLINE_S), http.get(url, headers=headers) as resp:
        assert resp.status == 200
        while not wanted <= {f[1] for f in frames}:
            chunk = await resp.content.readany()
            assert chunk, "the stream ended early"
            buf += chunk.replace(b"\r\n", b"\n")
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if line and not line.startswith(":"):
                        name, _, value = line.partition(": ")
                        fields[name] = value
                if "data" in fields:
                    frames.append((fields.get("id"), fields["event"], orjson.loads(fields["data"])))
    return frames


async def test_history_and_usage_are_served_told_live_and_survive_a_restart(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    agent = SimAgent(http, sched.url, sched.join_token, "hist-a")
    await agent.register()
    await agent.heartbeat(ram_free_mb=6144)
    stream = asyncio.create_task(
        _sse_frames(
            http, sched.url + "/api/v1/events", sched.admin_token, {"stats.sample", "job.usage"}
        )
    )
    status, job = await admin.post("/api/v1/jobs", SPEC)
    assert status == 201, job
    await wait_until(agent.poll, timeout=DEADLINE_S)
    now = time.time()
    samples = [
        {"t": now - 4, "cpu_percent": 50.0, "memory_mb": 10.5},
        {"t": now - 2, "cpu_percent": 75.0, "memory_mb": 12.0},
    ]
    status, body = await agent.report(job["id"], "running", samples=samples)
    assert status == 200, body
    # A report holds a bounded number of well-formed samples, or is refused whole.
    for bad in ([samples[0]] * 65, [{**samples[0], "cpu_percent": -1}], [{"cpu_percent": 1}]):
        status, err = await agent.report(job["id"], None, samples=bad)
        assert status == 400, err
        assert err["error"]["details"]["field"].startswith("$.samples"), err
    await agent.heartbeat(ram_free_mb=6144)
    status, body = await agent.report(job["id"], "completed", exit_code=0)
    assert status == 200, body

    # Points of the cluster and of the node, with the job's start and end counted.
    async def counted() -> dict[str, Any] | None:
        h = await _history(admin, step="1")
        ends = sum(p["ended"] for p in h["points"])
        starts = sum(p["started"] for p in h["points"])
        # The newest point may average samples from before the end: wait for one after.
        done = h["points"] and h["points"][-1]["jobs"].get("completed") == 1
        return h if starts >= 1 and ends >= 1 and h["nodes"] and done else None

    h = await wait_until(counted, timeout=DEADLINE_S, interval=0.2)
    # Minutes are read from the minute averages, the last one from the samples.
    coarse = await _history(admin, step="60")
    assert coarse["step"] == 60 and coarse["points"]
    for key in ("started", "ended"):
        assert sum(p[key] for p in coarse["points"]) == sum(p[key] for p in h["points"])
    assert h["step"] == 1
    assert h["since"] < h["until"]
    point = h["points"][-1]
    assert point["cpu"]["capacity"] == 4.0
    assert point["memory_mb"]["capacity"] == 8192.0
    assert point["memory_mb"]["used"] == 2048.0
    assert point["jobs"]["completed"] == 1
    assert set(point["gpus"]) == {"capacity", "allocated", "used"}
    (node,) = h["nodes"]
    assert (node["id"], node["name"]) == (agent.node_id, "hist-a")
    assert node["points"][-1]["cpu"]["capacity"] == 4.0
    assert node["points"][-1]["cpu"]["used"] == pytest.approx(0.2)

    # Usage samples of the attempt, by default the latest.
    status, usage = await admin.get(f"/api/v1/jobs/{job['id']}/usage")
    assert status == 200, usage
    assert usage == {
        "job_id": job["id"],
        "attempt": 1,
        "interval_s": 2.0,
        "samples": samples,
    }
    status, same = await admin.get(f"/api/v1/jobs/{job['id']}/usage", params={"attempt": 1})
    assert (status, same) == (200, usage)
    status, err = await admin.get(f"/api/v1/jobs/{job['id']}/usage", params={"attempt": 2})
    assert status == 404, err
    status, err = await admin.get("/api/v1/jobs/nosuchjob/usage")
    assert status == 404, err

    # Told live, neither with an event id of its own.
    frames = await stream
    live = {
        event: (ident, data)
        for ident, event, data in frames
        if event in {"stats.sample", "job.usage"}
    }
    ident, data = live["job.usage"]
    assert ident is None
    assert data["job_id"] == job["id"]
    assert data["data"] == {"attempt": 1, "samples": samples}
    ident, data = live["stats.sample"]
    assert ident is None
    assert data["type"] == "stats.sample"
    assert {"t", "queued", "running", "jobs", "cpu", "memory_mb", "gpus", "nodes"} <= set(
        data["data"]
    )
    assert data["data"]["nodes"][0]["id"] == agent.node_id

    # Bad ranges are refused naming the field.
    for params, field in (
        ({"since": "banana"}, "since"),
        ({"step": "0"}, "step"),
        ({"step": "x"}, "step"),
    ):
        status, err = await admin.get("/api/v1/stats/history", params=params)
        assert status == 400, err
        assert err["error"]["details"]["field"] == field

    # What was stored is there after a restart.
    first = h["points"][0]["t"]
    sched.kill()
    sched.start()
    admin = Api(http, sched.url, sched.admin_token)
    again = await _history(admin, step="1")
    assert again["points"][0]["t"] == first
    assert sum(p["ended"] for p in again["points"]) >= 1
    status, usage_again = await admin.get(f"/api/v1/jobs/{job['id']}/usage")
    assert (status, usage_again) == (200, usage)


def _berth(sched: SchedulerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "120"}
    env.update(BERTH_ADDR=sched.url, BERTH_TOKEN=sched.admin_token)
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.stores("sqlite")
async def test_berth_stats_prints_the_history_as_json_or_a_table(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    agent = SimAgent(http, sched.url, sched.join_token, "stats-a")
    await agent.register()

    async def with_node() -> bool:
        return bool((await _history(admin, step="1"))["nodes"])

    await wait_until(with_node, timeout=DEADLINE_S, interval=0.2)
    done = _berth(sched, "stats", "--since", "5m", "--step", "1", "--json")
    assert done.returncode == 0, done.stderr
    h = orjson.loads(done.stdout)
    assert h["step"] == 1
    assert h["points"] and h["points"][-1]["cpu"]["capacity"] == 4.0
    assert h["nodes"][0]["name"] == "stats-a"

    done = _berth(sched, "stats", "--since", "5m", "--step", "1")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[:5] == ["TIME", "(UTC)", "QUEUED", "RUNNING", "STARTED"]
    assert rows and rows[-1].split()[-2].endswith("/4")

    done = _berth(sched, "stats", "--since", "banana")
    assert done.returncode != 0
    assert "since" in done.stderr


@pytest.mark.stores("sqlite")
async def test_a_real_agent_sends_the_samples_of_the_attempt_it_runs(
    sched: SchedulerProcess, http: aiohttp.ClientSession, agents: StartAgent
) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    agents("usage-a")
    status, job = await admin.post("/api/v1/jobs", {**SPEC, "command": ["sleep", "120"]})
    assert status == 201, job

    # The first sample goes out at once, the next ones with the next usage report.
    async def samples() -> list[dict[str, Any]] | None:
        status, usage = await admin.get(f"/api/v1/jobs/{job['id']}/usage")
        assert status == 200, usage
        assert (usage["attempt"], usage["interval_s"]) == (1, 2.0)
        return usage["samples"] if len(usage["samples"]) >= 2 else None

    got = await wait_until(samples, timeout=DEADLINE_S, interval=0.5)
    times = [s["t"] for s in got]
    assert times == sorted(times) and len(set(times)) == len(times)
    _, running = await admin.get(f"/api/v1/jobs/{job['id']}")
    started = datetime.fromisoformat(running["started_at"].replace("Z", "+00:00")).timestamp()
    assert times[0] >= started - 5
    assert all(s["memory_mb"] >= 0 and s["cpu_percent"] >= 0 for s in got)
    status, body = await admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 200, body


@pytest.mark.stores("postgresql")
async def test_a_standby_serves_the_leaders_history_and_keeps_it_going_once_it_leads(
    pg_dsn: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    flags = ("--store", pg_dsn, "--history-interval", "0.5")
    leader = SchedulerProcess(tmp_path / "one", *flags)
    standby = SchedulerProcess(tmp_path / "two", *flags)
    try:
        await asyncio.to_thread(leader.start, READY_S)
        await ready(http, leader, "ready")
        await start_standby(http, leader, standby)
        on_leader = Api(http, leader.url, leader.admin_token)
        on_standby = Api(http, standby.url, leader.admin_token)

        async def sampled() -> dict[str, Any] | None:
            h = await _history(on_leader, step="1")
            return h if len(h["points"]) >= 2 else None

        first = (await wait_until(sampled, timeout=DEADLINE_S, interval=0.2))["points"][0]
        served = await _history(on_standby, step="1")
        assert served["points"][0] == first
        # The standby tells its own subscribers the samples the leader stores.
        frames = await _sse_frames(
            http, standby.url + "/api/v1/events", leader.admin_token, {"stats.sample"}
        )
        (told,) = [data for _, event, data in frames if event == "stats.sample"]
        assert told["data"]["t"] > first["t"]

        leader.kill()
        killed = time.time()
        await ready(http, standby, "ready")

        async def sampled_by_the_new_leader() -> bool:
            h = await _history(on_standby, step="1")
            return h["points"][0] == first and h["points"][-1]["t"] > killed

        await wait_until(sampled_by_the_new_leader, timeout=DEADLINE_S, interval=0.2)
    finally:
        standby.kill()
        leader.kill()
