"""A job's way through a real scheduler process, driven by simulated agents over HTTP."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent, wait_until

SPEC = {"image": "busybox", "command": ["echo", "hello"]}


def agent(
    sched: SchedulerProcess, http: aiohttp.ClientSession, name: str, **kw: object
) -> SimAgent:
    return SimAgent(http, sched.url, sched.join_token, name, **kw)  # type: ignore[arg-type]


async def test_submit_assign_report_completes(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    status, job = await admin.post("/api/v1/jobs", SPEC)
    assert status == 201 and job["state"] == "queued"

    assignments = await a.poll(wait=5)
    assert [x["job_id"] for x in assignments] == [job["id"]]
    assert assignments[0]["spec"]["command"] == ["echo", "hello"]
    _, assigned = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert assigned["state"] == "assigned" and assigned["node_id"] == a.node_id

    assert (await a.report(job["id"], "running"))[0] == 200
    status, _ = await a.report(job["id"], "completed", exit_code=0)
    assert status == 200
    _, done = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert done["state"] == "completed" and done["exit_code"] == 0
    assert done["started_at"] and done["finished_at"]
    _, node = await admin.get(f"/api/v1/nodes/{a.node_id}")
    assert node["allocated"] == {"cpu": 0.0, "memory_mb": 0, "gpus": 0}
    assert node["state"] == "idle" and node["running_jobs"] == []


async def test_capacity_is_never_overcommitted_under_concurrent_submits(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    agents = [agent(sched, http, f"n{i}", cpu=4, memory_mb=4096, max_parallel=3) for i in range(3)]
    for a in agents:
        await a.register()
    spec = {"image": "busybox", "resources": {"cpu": 1.5, "memory_mb": 1000}}
    results = await asyncio.gather(*(admin.post("/api/v1/jobs", spec) for _ in range(60)))
    assert all(status == 201 for status, _ in results)

    # Each node fits two such jobs by CPU (3.0 <= 4) though it has three slots.
    async def placed() -> bool:
        _, stats = await admin.get("/api/v1/stats")
        return int(stats["jobs"]["assigned"]) >= 6

    await wait_until(placed, timeout=10)
    await asyncio.sleep(0.3)  # let any further (wrong) placement show up
    _, nodes = await admin.get("/api/v1/nodes")
    for n in nodes["nodes"]:
        assert n["allocated"]["cpu"] <= n["capacity"]["cpu"]
        assert n["allocated"]["memory_mb"] <= n["capacity"]["memory_mb"]
        assert len(n["running_jobs"]) == 2
    _, stats = await admin.get("/api/v1/stats")
    assert stats["jobs"]["assigned"] == 6 and stats["jobs"]["queued"] == 54

    # Finishing jobs frees capacity and the queue drains, never past capacity.
    completed = 0
    while completed < 60:
        for a in agents:
            for x in await a.poll():
                await a.report(x["job_id"], "running")
                await a.report(x["job_id"], "completed", exit_code=0)
                completed += 1
        _, nodes = await admin.get("/api/v1/nodes")
        for n in nodes["nodes"]:
            assert n["allocated"]["cpu"] <= n["capacity"]["cpu"]
    _, stats = await admin.get("/api/v1/stats")
    assert stats["jobs"]["completed"] == 60


async def test_idempotent_submit_returns_the_same_job(admin: Api) -> None:
    key = {"Idempotency-Key": "order-42"}
    s1, j1 = await admin.post("/api/v1/jobs", SPEC, headers=key)
    s2, j2 = await admin.post("/api/v1/jobs", SPEC, headers=key)
    assert (s1, s2) == (201, 200)
    assert j1["id"] == j2["id"]
    _, listing = await admin.get("/api/v1/jobs")
    assert len(listing["jobs"]) == 1


async def test_best_fit_prefers_the_node_the_job_fills_most(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    big = agent(sched, http, "big", cpu=32, memory_mb=65536)
    small = agent(sched, http, "small", cpu=2, memory_mb=2048)
    await big.register()
    await small.register()
    _, job = await admin.post(
        "/api/v1/jobs", {"image": "busybox", "resources": {"cpu": 2, "memory_mb": 1024}}
    )
    assert [x["job_id"] for x in await small.poll(wait=5)] == [job["id"]]
    _, too_big = await admin.post(
        "/api/v1/jobs", {"image": "busybox", "resources": {"cpu": 8, "memory_mb": 1024}}
    )
    assert [x["job_id"] for x in await big.poll(wait=5)] == [too_big["id"]]


async def test_label_constraints_pick_the_matching_node(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    plain = agent(sched, http, "plain")
    gpu = agent(sched, http, "gpu", labels={"zone": "b"})
    await plain.register()
    await gpu.register()
    spec = {"image": "busybox", "constraints": {"labels": {"zone": "b"}}}
    _, job = await admin.post("/api/v1/jobs", spec)
    assert [x["job_id"] for x in await gpu.poll(wait=5)] == [job["id"]]
    assert await plain.poll() == []


async def test_offline_node_requeues_its_running_jobs(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    lost = agent(sched, http, "lost")
    await lost.register()
    _, job = await admin.post("/api/v1/jobs", {**SPEC, "max_retries": 1})
    await lost.poll(wait=5)
    await lost.report(job["id"], "running")

    survivor = agent(sched, http, "survivor")
    await survivor.register()

    # `lost` stops heartbeating; `survivor` keeps going and gets the job again.
    async def survivor_got_it() -> list[dict[str, object]]:
        await survivor.heartbeat()
        return await survivor.poll()

    got = await wait_until(survivor_got_it, timeout=15, interval=0.3)
    assert got[0]["job_id"] == job["id"] and got[0]["attempt"] == 2
    _, node = await admin.get(f"/api/v1/nodes/{lost.node_id}")
    assert node["state"] == "offline" and "heartbeat" in node["reason"]
    _, again = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert again["attempt"] == 2 and again["attempts"][0]["node_id"] == lost.node_id

    # The stale attempt is fenced off: its report is refused with a cancel command.
    status, body = await lost.report(job["id"], "completed", exit_code=0, attempt=1)
    assert status == 409 and body["error"]["code"] == "stale_attempt"
    assert body["error"]["details"]["command"] == "cancel"


async def test_heartbeat_with_a_stale_attempt_is_told_to_cancel(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    _, job = await admin.post("/api/v1/jobs", SPEC)
    await a.poll(wait=5)
    await a.report(job["id"], "running")
    status, _ = await admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 200
    commands = await a.heartbeat()
    assert commands == [
        {"action": "cancel", "job_id": job["id"], "attempt": 1, "reason": "cancelled by admin"}
    ]
    # The resources stay held until the agent stops listing the attempt.
    _, node = await admin.get(f"/api/v1/nodes/{a.node_id}")
    assert node["allocated"]["cpu"] == 1.0
    a.running.clear()
    await a.heartbeat()
    _, node = await admin.get(f"/api/v1/nodes/{a.node_id}")
    assert node["allocated"]["cpu"] == 0.0


async def test_blocking_get_returns_when_the_job_changes(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    _, job = await admin.post("/api/v1/jobs", SPEC)
    # The first placement pass says why it waits: that is a change of the job too.
    _, job = await admin.get(
        f"/api/v1/jobs/{job['id']}", params={"index": job["index"], "wait": 10}
    )
    assert job["state"] == "queued" and job["reason"].startswith("no node is taking jobs")
    waiter = asyncio.create_task(
        admin.get(f"/api/v1/jobs/{job['id']}", params={"index": job["index"], "wait": 20})
    )
    await asyncio.sleep(0.3)
    assert not waiter.done()
    a = agent(sched, http, "a")
    await a.register()
    status, changed = await asyncio.wait_for(waiter, 10)
    assert status == 200 and changed["state"] == "assigned"
    assert changed["index"] > job["index"]
    # With nothing newer the call returns when the wait runs out.
    status, same = await admin.get(
        f"/api/v1/jobs/{job['id']}", params={"index": changed["index"], "wait": 0.2}
    )
    assert status == 200 and same["index"] == changed["index"]


async def test_list_filters_by_state_and_pages_with_a_cursor(admin: Api) -> None:
    ids = []
    for _ in range(7):
        _, j = await admin.post("/api/v1/jobs", SPEC)
        ids.append(j["id"])
    await admin.post(f"/api/v1/jobs/{ids[0]}/cancel")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        _, page = await admin.get("/api/v1/jobs", params=params)
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    _, cancelled = await admin.get("/api/v1/jobs", params={"state": "cancelled"})
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]


async def test_drained_node_takes_no_new_jobs(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    status, node = await admin.post(
        f"/api/v1/nodes/{a.node_id}/drain", {"drain": True, "reason": "kernel upgrade"}
    )
    assert status == 200 and node["draining"] is True
    _, job = await admin.post("/api/v1/jobs", SPEC)
    assert await a.poll(wait=0.5) == []
    await admin.post(f"/api/v1/nodes/{a.node_id}/drain", {"drain": False})
    assert [x["job_id"] for x in await a.poll(wait=5)] == [job["id"]]


async def test_live_free_ram_keeps_jobs_off_a_node_short_of_memory(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a", memory_mb=8192)
    await a.register()
    await a.heartbeat(ram_free_mb=100)
    _, job = await admin.post(
        "/api/v1/jobs", {"image": "busybox", "resources": {"cpu": 1, "memory_mb": 512}}
    )
    assert await a.poll(wait=0.5) == []
    await a.heartbeat(ram_free_mb=6000)
    assert [x["job_id"] for x in await a.poll(wait=5)] == [job["id"]]


async def test_batch_submit_is_all_or_nothing(admin: Api) -> None:
    specs = [{"image": "busybox", "name": f"b{i}"} for i in range(5)]
    status, body = await admin.post("/api/v1/jobs/batch", {"jobs": specs})
    assert status == 201 and [j["name"] for j in body["jobs"]] == [f"b{i}" for i in range(5)]
    bad = [*specs, {"image": "busybox", "resources": {"cpu": -1}}]
    status, body = await admin.post("/api/v1/jobs/batch", {"jobs": bad})
    assert status == 400 and body["error"]["details"]["field"] == "$.jobs[5].resources.cpu"
    _, stats = await admin.get("/api/v1/stats")
    assert sum(stats["jobs"].values()) == 5


async def test_batch_reports_are_accepted_or_refused_one_by_one(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    _, body = await admin.post("/api/v1/jobs/batch", {"jobs": [SPEC, SPEC]})
    ids = [j["id"] for j in body["jobs"]]
    await wait_until(lambda: _polled(a, 2), timeout=10)
    reports = [
        {"job_id": ids[0], "attempt": 1, "state": "completed", "exit_code": 0},
        {"job_id": ids[1], "attempt": 7, "state": "completed", "exit_code": 0},
    ]
    status, reply = await a.api.post(f"/api/v1/nodes/{a.node_id}/reports", {"reports": reports})
    assert status == 200
    ok, stale = reply["results"]
    assert ok == {"job_id": ids[0], "ok": True, "state": "completed", "error": None}
    assert stale["ok"] is False and stale["error"]["code"] == "stale_attempt"
    _, second = await admin.get(f"/api/v1/jobs/{ids[1]}")
    assert second["state"] == "assigned"


async def _polled(a: SimAgent, n: int) -> bool:
    await a.poll()
    return len(a.running) >= n


async def test_an_agent_shutting_down_gets_no_new_jobs_until_it_registers_again(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    status, _ = await a.api.post(
        f"/api/v1/nodes/{a.node_id}/heartbeat", {"running": [], "draining": True}
    )
    assert status == 200
    _, node = await admin.get(f"/api/v1/nodes/{a.node_id}")
    assert node["draining"] is True and node["drain_reason"] == "its agent is shutting down"
    _, job = await admin.post("/api/v1/jobs", SPEC)
    assert await a.poll(wait=0.5) == []
    await a.register()
    assert [x["job_id"] for x in await a.poll(wait=5)] == [job["id"]]


async def test_heartbeats_publish_node_metrics_events(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = agent(sched, http, "a")
    await a.register()
    await a.heartbeat(ram_free_mb=1234)
    _, page = await admin.get("/api/v1/events", params={"since": 0, "topics": "nodes"})
    metrics = [e for e in page["events"] if e["type"] == "node.metrics"]
    assert metrics and metrics[-1]["data"]["ram_free_mb"] == 1234
    assert metrics[-1]["node_id"] == a.node_id
