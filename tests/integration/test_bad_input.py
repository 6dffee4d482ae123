"""Bad requests get a 4xx naming the field, change nothing, and the daemon keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess, SimAgent

BAD_SPECS: list[tuple[Any, str]] = [
    ({"command": ["true"]}, "$.image"),
    ({"image": ""}, "$.image"),
    ({"image": "busybox", "resources": {"cpu": -1}}, "$.resources.cpu"),
    ({"image": "busybox", "resources": {"cpu": 1e9}}, "$.resources.cpu"),
    ({"image": "busybox", "resources": {"memory_mb": 10**12}}, "$.resources.memory_mb"),
    ({"image": "busybox", "resources": {"gpus": -2}}, "$.resources.gpus"),
    ({"image": "busybox", "resources": {"cpu": "lots"}}, "$.resources.cpu"),
    ({"image": "busybox", "priority": 101}, "$.priority"),
    ({"image": "busybox", "timeout_s": 0}, "$.timeout_s"),
    ({"image": "busybox", "max_retries": -1}, "$.max_retries"),
    ({"image": "busybox", "network": "overlay"}, "$.network"),
    ({"image": "busybox", "env": {"1BAD": "x"}}, "$.env"),
    ({"image": "busybox", "command": 42}, "$.command"),
    ({"image": "busybox", "surprise": True}, "$.surprise"),
    ([], "$"),
    ("busybox", "$"),
]


async def _counts(admin: Api) -> Any:
    _, stats = await admin.get("/api/v1/stats")
    return stats["jobs"], stats["index"]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS)
async def test_invalid_spec_is_refused_naming_the_field(admin: Api, spec: Any, field: str) -> None:
    before = await _counts(admin)
    status, body = await admin.post("/api/v1/jobs", spec)
    assert status == 400, body
    assert body["error"]["code"] == "invalid"
    assert body["error"]["details"]["field"].startswith(field)
    assert await _counts(admin) == before


async def test_malformed_json_is_a_400(admin: Api) -> None:
    before = await _counts(admin)
    for raw in (b"{", b"not json", b"\xff\xfe", b""):
        status, body = await admin.call(
            "POST", "/api/v1/jobs", data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, raw
        assert body["error"]["details"]["field"] == "$"
    assert await _counts(admin) == before


async def test_oversized_body_is_a_413(admin: Api) -> None:
    before = await _counts(admin)
    huge = {"image": "busybox", "env": {"BIG": "x" * (2 * 1024 * 1024)}}
    status, body = await admin.post("/api/v1/jobs", huge)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert await _counts(admin) == before
    assert (await admin.get("/api/v1/stats"))[0] == 200


async def test_unknown_ids_are_404(admin: Api) -> None:
    for method, path in [
        ("GET", "/api/v1/jobs/nope"),
        ("POST", "/api/v1/jobs/nope/cancel"),
        ("GET", "/api/v1/nodes/nope"),
        ("POST", "/api/v1/nodes/nope/drain"),
    ]:
        status, body = await admin.call(method, path)
        assert status == 404, path
        assert body["error"]["code"] == "not_found"


async def test_illegal_transition_is_a_409_and_changes_nothing(admin: Api) -> None:
    _, job = await admin.post("/api/v1/jobs", {"image": "busybox"})
    assert (await admin.post(f"/api/v1/jobs/{job['id']}/cancel"))[0] == 200
    before = await _counts(admin)
    status, body = await admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 409 and body["error"]["code"] == "conflict"
    assert await _counts(admin) == before


async def test_bad_query_parameters_name_the_parameter(admin: Api) -> None:
    for params, field in [
        ({"state": "sleeping"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"index": "0", "wait": "-1"}, "wait"),
    ]:
        status, body = await admin.get("/api/v1/jobs", params=params)
        assert status == 400 and body["error"]["details"]["field"] == field


async def test_every_route_but_healthz_needs_a_token(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    anon = Api(http, sched.url, None)
    assert (await anon.get("/healthz"))[0] == 200
    for path in ["/api/v1/jobs", "/api/v1/nodes", "/api/v1/stats"]:
        status, body = await anon.get(path)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    wrong = Api(http, sched.url, "not-a-token")
    assert (await wrong.get("/api/v1/jobs"))[0] == 401


async def test_tokens_on_disk_are_private(sched: SchedulerProcess) -> None:
    for name in ("admin.token", "join.token"):
        assert (sched.state_dir / name).stat().st_mode & 0o777 == 0o600


async def test_a_node_token_acts_only_for_its_own_node(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "a")
    b = SimAgent(http, sched.url, sched.join_token, "b")
    await a.register()
    await b.register()
    as_a = Api(http, sched.url, a.token)
    before = await _counts(admin)
    for method, path, body in [
        ("POST", f"/api/v1/nodes/{b.node_id}/heartbeat", {}),
        ("GET", f"/api/v1/nodes/{b.node_id}/assignments", None),
        ("POST", f"/api/v1/nodes/{b.node_id}/jobs/x/report", {"attempt": 1}),
        ("POST", "/api/v1/jobs", {"image": "busybox"}),
        ("POST", f"/api/v1/nodes/{b.node_id}/drain", {"drain": True}),
    ]:
        status, reply = await as_a.call(method, path, body)
        assert status == 403, (path, reply)
    assert await _counts(admin) == before
    # The join token registers nodes and nothing else.
    join = Api(http, sched.url, sched.join_token)
    assert (await join.get("/api/v1/jobs"))[0] == 403


async def test_malformed_agent_messages_are_refused(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "a")
    await a.register()
    api = a.api
    for path, body, field in [
        (f"/api/v1/nodes/{a.node_id}/heartbeat", {"metrics": {"cpu_percent": 400}}, "$.metrics"),
        (f"/api/v1/nodes/{a.node_id}/heartbeat", {"running": [{"job_id": 1}]}, "$.running"),
        (f"/api/v1/nodes/{a.node_id}/jobs/x/report", {"attempt": 0}, "$.attempt"),
        (
            f"/api/v1/nodes/{a.node_id}/jobs/x/report",
            {"attempt": 1, "state": "exploded"},
            "$.state",
        ),
    ]:
        status, reply = await api.post(path, body)
        assert status == 400, (path, reply)
        assert reply["error"]["details"]["field"].startswith(field)
    join = Api(http, sched.url, sched.join_token)
    status, reply = await join.post(
        "/api/v1/nodes/register", {"name": "x", "capacity": {"cpu": -4}}
    )
    assert status == 400 and reply["error"]["details"]["field"] == "$.capacity.cpu"


async def test_a_nul_in_a_stored_name_is_refused_naming_the_field(
    admin: Api, sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    """Names are stored as text (PostgreSQL's holds no NUL): one with a NUL is a 400 that
    changes nothing, on either store, and a filter with one matches nothing."""
    _, before = await admin.get("/api/v1/stats")
    joiner = Api(http, sched.url, sched.join_token)
    refused = (
        (joiner, "POST", "/api/v1/nodes/register", {"name": "a\x00b", "capacity": {"cpu": 1}}),
        (admin, "POST", "/api/v1/tokens", {"role": "read", "name": "x\x00y"}),
        (admin, "POST", "/api/v1/jobs", {"image": "busybox", "group": "g\x00"}),
        (admin, "PUT", "/api/v1/groups/g%00h", {"max_concurrent": 1}),
    )
    for api, method, path, body in refused:
        status, reply = await api.call(method, path, body)
        assert status == 400, (path, reply)
        assert reply["error"]["details"]["field"] in ("$.name", "$.group", "name"), reply
    _, after = await admin.get("/api/v1/stats")
    assert after["index"] == before["index"]
    status, found = await admin.get("/api/v1/audit", params={"action": "x\x00"})
    assert status == 200 and found["entries"] == []


async def test_an_attempt_past_what_the_stores_hold_is_refused_naming_it(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    """Attempts are 32-bit in PostgreSQL: a larger one in a log append made the store's
    lookup fail with a 500; now every agent route refuses it as a bad request."""
    a = SimAgent(http, sched.url, sched.join_token, "big-attempt")
    await a.register()
    queued = {"image": "busybox", "constraints": {"labels": {"pool": "none"}}}
    status, job = await admin.post("/api/v1/jobs", queued)
    assert status == 201, job
    huge = 2**31 + 5
    base = f"/api/v1/nodes/{a.node_id}/jobs/{job['id']}"
    for path, params in [
        (f"{base}/logs", {"attempt": huge, "offset": 0}),
        (f"{base}/logs", {"attempt": 1, "offset": 2**64}),
        (f"{base}/checkpoint", {"attempt": huge}),
    ]:
        status, reply = await a.api.post(path, data=b"x", params=params)
        assert status == 400, (path, params, reply)
        assert reply["error"]["details"]["field"] in params, reply
    status, reply = await a.api.post(f"{base}/report", {"attempt": huge, "state": "running"})
    assert status == 400 and reply["error"]["details"]["field"] == "$.attempt", reply
    hb = {"running": [{"job_id": job["id"], "attempt": huge}]}
    status, reply = await a.api.post(f"/api/v1/nodes/{a.node_id}/heartbeat", hb)
    assert status == 400 and reply["error"]["details"]["field"].startswith("$.running"), reply
    status, same = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert status == 200 and same["state"] == job["state"]
