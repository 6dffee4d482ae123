"""Retry, pause and resume, and actions on many jobs at once."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent

SPEC = {"image": "busybox", "command": ["true"]}


async def _running(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> tuple[SimAgent, dict[str, Any]]:
    a = SimAgent(http, sched.url, sched.join_token, "a")
    await a.register()
    _, job = await admin.post("/api/v1/jobs", SPEC)
    await a.poll(wait=5)
    await a.report(job["id"], "running")
    return a, job


async def test_retry_runs_the_same_job_again_and_keeps_its_history(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a, job = await _running(sched, http, admin)
    await a.report(job["id"], "failed", exit_code=3)
    status, retried = await admin.post(f"/api/v1/jobs/{job['id']}/retry")
    assert status == 200 and retried["id"] == job["id"]
    assert retried["state"] == "queued" and retried["attempt"] == 2
    assert retried["reason"] == "retried by admin"
    [first] = retried["attempts"]
    assert first["attempt"] == 1 and first["state"] == "failed" and first["exit_code"] == 3
    assert first["node_id"] == a.node_id
    got = await a.poll(wait=5)
    assert [(x["job_id"], x["attempt"]) for x in got] == [(job["id"], 2)]
    # Only an ended job can be retried.
    status, body = await admin.post(f"/api/v1/jobs/{job['id']}/retry")
    assert status == 409 and body["error"]["code"] == "illegal_transition"


async def test_pause_and_resume_reach_the_agent_and_keep_resources(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a, job = await _running(sched, http, admin)
    status, paused = await admin.post(f"/api/v1/jobs/{job['id']}/pause")
    assert status == 200 and paused["state"] == "paused"
    commands = await a.heartbeat()
    assert [c["action"] for c in commands] == ["pause"]
    _, node = await admin.get(f"/api/v1/nodes/{a.node_id}")
    assert node["allocated"]["cpu"] == 1.0
    # Once the agent shows it paused, it is not told again.
    status, reply = await a.api.post(
        f"/api/v1/nodes/{a.node_id}/heartbeat",
        {"running": [{"job_id": job["id"], "attempt": 1, "paused": True}]},
    )
    assert reply["commands"] == []
    status, resumed = await admin.post(f"/api/v1/jobs/{job['id']}/resume")
    assert status == 200 and resumed["state"] == "running"
    status, reply = await a.api.post(
        f"/api/v1/nodes/{a.node_id}/heartbeat",
        {"running": [{"job_id": job["id"], "attempt": 1, "paused": True}]},
    )
    assert [c["action"] for c in reply["commands"]] == ["resume"]
    status, _ = await admin.post(f"/api/v1/jobs/{job['id']}/resume")
    assert status == 409


async def test_cancel_many_by_filter_and_by_ids(admin: Api) -> None:
    ids = []
    for i in range(4):
        _, j = await admin.post("/api/v1/jobs", {**SPEC, "labels": {"team": "a" if i < 3 else "b"}})
        ids.append(j["id"])
    status, body = await admin.post(
        "/api/v1/jobs/cancel", {"filter": {"state": "queued", "labels": {"team": "a"}}}
    )
    assert status == 200
    assert sorted(r["job_id"] for r in body["results"]) == sorted(ids[:3])
    assert all(r["ok"] and r["state"] == "cancelled" for r in body["results"])
    status, body = await admin.post("/api/v1/jobs/retry", {"ids": [ids[0], ids[3], "nope"]})
    ok, refused, missing = body["results"]
    assert ok["ok"] and ok["state"] == "queued"
    assert not refused["ok"] and refused["error"]["code"] == "illegal_transition"
    assert not missing["ok"] and missing["error"]["code"] == "not_found"
    _, cancelled = await admin.get(f"/api/v1/jobs/{ids[1]}")
    assert cancelled["cancelled_by"] == "admin" and cancelled["cancelled_at"]


async def test_a_selection_needs_ids_or_a_filter(admin: Api) -> None:
    status, body = await admin.post("/api/v1/jobs/cancel", {})
    assert status == 400 and body["error"]["details"]["field"] == "$.ids"


async def test_dependencies_and_groups_over_http(admin: Api) -> None:
    _, first = await admin.post("/api/v1/jobs", {**SPEC, "group": "etl", "group_max_concurrent": 1})
    _, second = await admin.post("/api/v1/jobs", {**SPEC, "depends_on": [first["id"]]})
    status, body = await admin.post(
        "/api/v1/jobs/batch", {"jobs": [SPEC, {**SPEC, "depends_on": ["missing"]}]}
    )
    assert status == 400 and body["error"]["details"]["field"] == "$.jobs[1].depends_on[0]"
    status, group = await admin.call("PUT", "/api/v1/groups/etl", {"max_concurrent": 3})
    assert status == 200 and group == {"name": "etl", "max_concurrent": 3, "active": 0, "queued": 1}
    _, groups = await admin.get("/api/v1/groups")
    assert groups["groups"]["etl"]["max_concurrent"] == 3
    _, waiting = await admin.get(f"/api/v1/jobs/{second['id']}")
    assert waiting["spec"]["depends_on"] == [first["id"]]
