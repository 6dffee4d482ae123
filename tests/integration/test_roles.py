"""Tokens and roles against a real scheduler: who may do what, who sees which jobs,
the join token's rotation, and the audit log of it all."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess, SimAgent

SPEC = {"name": "t", "image": "busybox", "command": ["true"]}


async def _token(admin: Api, role: str, name: str, **extra: Any) -> Api:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name, **extra})
    assert status == 201, made
    assert made["role"] == role and made["name"] == name and len(made["token"]) >= 32
    return Api(admin.session, admin.url, made["token"])


async def _fingerprint(admin: Api) -> tuple[Any, ...]:
    """What a refused request must not change: the event index, the jobs, the tokens."""
    _, stats = await admin.get("/api/v1/stats")
    _, tokens = await admin.get("/api/v1/tokens", params={"revoked": "1"})
    _, audit = await admin.get("/api/v1/audit")
    return stats["index"], stats["jobs"], tokens["tokens"], len(audit["entries"])


async def test_roles_allow_and_refuse(admin: Api) -> None:
    reader = await _token(admin, "read", "ops-viewer")
    alice = await _token(admin, "submit", "alice")
    status, job = await alice.post("/api/v1/jobs", SPEC)
    assert status == 201

    before = await _fingerprint(admin)
    refused = [
        await reader.post("/api/v1/jobs", SPEC),
        await reader.post(f"/api/v1/jobs/{job['id']}/cancel"),
        await reader.post("/api/v1/tokens", {"role": "admin", "name": "x"}),
        await alice.post("/api/v1/tokens", {"role": "admin", "name": "x"}),
        await alice.get("/api/v1/tokens"),
        await alice.get("/api/v1/audit"),
        await alice.post("/api/v1/tokens/join/rotate"),
        await alice.call("PUT", "/api/v1/groups/g", {"max_concurrent": 1}),
        await reader.call("DELETE", "/api/v1/tokens/alice"),
    ]
    for status, body in refused:
        assert status == 403, body
        # Nothing that helps: no role names, no token names, no ids.
        assert body["error"]["message"] == "this token may not do that"
        assert body["error"]["details"] == {}
    for api in (Api(admin.session, admin.url, None), Api(admin.session, admin.url, "x" * 43)):
        status, body = await api.post("/api/v1/jobs", SPEC)
        assert status == 401 and body["error"]["details"] == {}
    assert await _fingerprint(admin) == before

    # What each role may do.
    assert (await reader.get(f"/api/v1/jobs/{job['id']}"))[0] == 200
    assert (await reader.get("/api/v1/nodes"))[0] == 200
    assert (await alice.post(f"/api/v1/jobs/{job['id']}/cancel"))[0] == 200


async def test_submit_token_sees_and_acts_only_on_its_own_jobs(admin: Api) -> None:
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    auditor = await _token(admin, "submit", "batch-ops", all_jobs=True)
    _, mine = await alice.post("/api/v1/jobs", SPEC)
    _, theirs = await bob.post("/api/v1/jobs", {**SPEC, "name": "bobs"})

    _, listing = await alice.get("/api/v1/jobs")
    assert [j["id"] for j in listing["jobs"]] == [mine["id"]]
    _, listing = await auditor.get("/api/v1/jobs")
    assert {j["id"] for j in listing["jobs"]} == {mine["id"], theirs["id"]}

    before = await _fingerprint(admin)
    # Another's job and a job that does not exist look the same.
    for path in (f"/api/v1/jobs/{theirs['id']}", "/api/v1/jobs/0000000000dead"):
        status, body = await alice.get(path)
        assert status == 403, body
        assert (await alice.get(path + "/logs"))[0] == 403
        assert (await alice.get(path + "/events"))[0] == 403
        assert (await alice.post(path + "/cancel"))[0] == 403
    status, body = await alice.post("/api/v1/jobs/cancel", {"filter": {"state": "queued"}})
    assert status == 200 and [r["job_id"] for r in body["results"]] == [mine["id"]]
    assert body["results"][0]["ok"]
    status, body = await alice.post("/api/v1/jobs/cancel", {"ids": [theirs["id"]]})
    assert body["results"][0]["ok"] is False
    assert body["results"][0]["error"]["code"] == "forbidden"
    # A dependency on another's job is refused as if it did not exist.
    status, body = await alice.post("/api/v1/jobs", {**SPEC, "depends_on": [theirs["id"]]})
    assert status == 400 and body["error"]["details"]["field"] == "$.depends_on[0]"
    _, bob_job = await admin.get(f"/api/v1/jobs/{theirs['id']}")
    assert bob_job["state"] == "queued"
    after = await _fingerprint(admin)
    # Only alice's own cancel moved anything.
    assert after[1]["cancelled"] == before[1].get("cancelled", 0) + 1

    # The event stream shows alice her jobs' events and no one else's.
    _, page = await alice.get("/api/v1/events", params={"since": "0"})
    job_ids = {e["job_id"] for e in page["events"] if e["job_id"]}
    assert job_ids == {mine["id"]}
    _, page = await auditor.get("/api/v1/events", params={"since": "0"})
    assert {e["job_id"] for e in page["events"] if e["job_id"]} >= {mine["id"], theirs["id"]}


async def test_live_event_stream_of_a_submit_token_skips_other_jobs(admin: Api) -> None:
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    headers = {"Authorization": f"Bearer {alice.token}", "Accept": "text/event-stream"}
    seen: list[str] = []
    async with admin.session.get(
        admin.url + "/api/v1/events", params={"topics": "jobs"}, headers=headers
    ) as resp:
        assert resp.status == 200
        await bob.post("/api/v1/jobs", {**SPEC, "name": "bobs"})
        _, mine = await alice.post("/api/v1/jobs", SPEC)
        async with asyncio.timeout(10):
            async for line in resp.content:
                if line.startswith(b"data: "):
                    seen.append(line.decode())
                    break
    assert mine["id"] in seen[0]


async def test_revoked_token_stops_at_once_and_stays_revoked(
    sched: SchedulerProcess, admin: Api
) -> None:
    alice = await _token(admin, "submit", "alice")
    status, job = await alice.post("/api/v1/jobs", SPEC)
    assert status == 201
    # Ended, so after the restart it is kept encoded: the owner is read from that.
    assert (await alice.post(f"/api/v1/jobs/{job['id']}/cancel"))[0] == 200
    status, gone = await admin.call("DELETE", "/api/v1/tokens/alice")
    assert status == 200 and gone["revoked_at"]
    assert (await alice.post("/api/v1/jobs", SPEC))[0] == 401
    assert (await admin.call("DELETE", f"/api/v1/tokens/{gone['id']}"))[0] == 409
    _, live = await admin.get("/api/v1/tokens")
    assert "alice" not in [t["name"] for t in live["tokens"]]
    assert all("token" not in t and "digest" not in t for t in live["tokens"])
    # The last admin token cannot be revoked: that would lock everyone out.
    _, listed = await admin.get("/api/v1/tokens")
    admin_id = next(t["id"] for t in listed["tokens"] if t["role"] == "admin")
    assert (await admin.call("DELETE", f"/api/v1/tokens/{admin_id}"))[0] == 409

    sched.kill()
    sched.start()
    async with aiohttp.ClientSession() as fresh:
        admin = Api(fresh, admin.url, admin.token)
        alice = Api(fresh, alice.url, alice.token)
        assert (await alice.post("/api/v1/jobs", SPEC))[0] == 401
        # A new token may reuse a revoked name, and gets that name's jobs back.
        alice2 = await _token(admin, "submit", "alice")
        _, listing = await alice2.get("/api/v1/jobs")
        assert [(j["id"], j["state"]) for j in listing["jobs"]] == [(job["id"], "cancelled")]


async def test_join_token_rotation(
    sched: SchedulerProcess, admin: Api, http: aiohttp.ClientSession
) -> None:
    old_join = sched.join_token
    registered = SimAgent(http, sched.url, old_join, "n-before")
    await registered.register()

    status, new = await admin.post("/api/v1/tokens/join/rotate")
    assert status == 200 and new["token"] != old_join
    path = sched.state_dir / "join.token"
    assert path.read_text().strip() == new["token"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # The old join token no longer registers; the new one does; nodes keep working.
    refused = Api(http, sched.url, old_join)
    assert (await refused.post("/api/v1/nodes/register", {"name": "x"}))[0] == 401
    await SimAgent(http, sched.url, new["token"], "n-after").register()
    assert await registered.heartbeat() == []

    # After a restart the revoked token stays revoked though it was in the file once.
    sched.kill()
    sched.start()
    async with aiohttp.ClientSession() as fresh:
        refused = Api(fresh, sched.url, old_join)
        assert (await refused.post("/api/v1/nodes/register", {"name": "x"}))[0] == 401


async def test_node_token_acts_only_for_its_own_node(
    sched: SchedulerProcess, admin: Api, http: aiohttp.ClientSession
) -> None:
    a = SimAgent(http, sched.url, sched.join_token, "a")
    b = SimAgent(http, sched.url, sched.join_token, "b")
    await a.register()
    await b.register()
    _, job = await admin.post("/api/v1/jobs", {**SPEC, "resources": {"cpu": 0.1}})
    as_a = Api(http, sched.url, a.token)
    for method, path, body in (
        ("POST", f"/api/v1/nodes/{b.node_id}/heartbeat", {}),
        ("GET", f"/api/v1/nodes/{b.node_id}/assignments?wait=0", None),
        ("POST", f"/api/v1/nodes/{b.node_id}/jobs/{job['id']}/report", {"attempt": 1}),
        ("POST", f"/api/v1/nodes/{b.node_id}/jobs/{job['id']}/logs?attempt=1&offset=0", None),
        ("POST", "/api/v1/jobs", SPEC),
        ("GET", "/api/v1/jobs", None),
        ("POST", "/api/v1/nodes/register", {"name": "b"}),
    ):
        status, reply = await as_a.call(method, path, body)
        assert status == 403, (path, reply)


async def test_audit_log_records_who_did_what(admin: Api, sched: SchedulerProcess) -> None:
    alice = await _token(admin, "submit", "alice")
    _, job = await alice.post("/api/v1/jobs", SPEC)
    await alice.post(f"/api/v1/jobs/{job['id']}/cancel")
    await alice.post(f"/api/v1/jobs/{job['id']}/retry")
    node = SimAgent(admin.session, sched.url, sched.join_token, "n1")
    await node.register()
    await admin.post(f"/api/v1/nodes/{node.node_id}/drain", {"drain": True, "reason": "disk"})
    await admin.post("/api/v1/tokens/join/rotate")
    await admin.call("DELETE", "/api/v1/tokens/alice")

    _, page = await admin.get("/api/v1/audit")
    seen = [(e["actor"], e["action"], e["target"]) for e in page["entries"]]
    alice_id = page["entries"][0]["target"]
    assert seen[:5] == [
        ("admin", "token.create", alice_id),
        ("alice", "job.submit", job["id"]),
        ("alice", "job.cancel", job["id"]),
        ("alice", "job.retry", job["id"]),
        ("admin", "node.drain", node.node_id),
    ]
    assert [s[1] for s in seen[5:]] == ["token.rotate_join", "token.revoke"]
    assert all(e["at"].endswith("Z") for e in page["entries"])
    _, only = await admin.get("/api/v1/audit", params={"target": job["id"]})
    assert [e["action"] for e in only["entries"]] == ["job.submit", "job.cancel", "job.retry"]
    _, after = await admin.get("/api/v1/audit", params={"after": str(page["next"])})
    assert after["entries"] == []


@pytest.fixture
def limited(tmp_path: Path) -> Any:
    proc = SchedulerProcess(
        tmp_path / "limited",
        "--submit-rate",
        "2",
        "--submit-burst",
        "5",
        "--max-queued-jobs",
        "8",
        # The queue's cap is what is tested here, not one token's share of it.
        "--max-queued-jobs-per-token",
        "8",
        "--max-streams-per-token",
        "2",
    ).start()
    yield proc
    proc.kill()


async def test_rate_limit_queue_cap_and_stream_cap(
    limited: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, limited.url, limited.admin_token)
    alice = await _token(admin, "submit", "alice")
    bob = await _token(admin, "submit", "bob")
    codes = [(await alice.post("/api/v1/jobs", SPEC))[0] for _ in range(7)]
    assert codes[:5] == [201] * 5 and 429 in codes[5:]
    async with http.post(
        limited.url + "/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {alice.token}"}
    ) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "too_many_requests"
    # Another token has its own bucket; the queue cap (8) applies to everyone.
    batch = {"jobs": [SPEC] * 4}
    status, body = await bob.post("/api/v1/jobs/batch", batch)
    assert status == 429, body
    assert "queue is full" in body["error"]["message"]
    _, stats = await admin.get("/api/v1/stats")
    assert stats["jobs"]["queued"] == sum(c == 201 for c in codes)

    # Two streams per token; the third is refused until one closes.
    headers = {"Authorization": f"Bearer {bob.token}", "Accept": "text/event-stream"}
    url = limited.url + "/api/v1/events"
    first = await http.get(url, headers=headers)
    second = await http.get(url, headers=headers)
    assert first.status == second.status == 200
    async with http.get(url, headers=headers) as third:
        assert third.status == 429
    async with http.get(url, headers={**headers, "Authorization": f"Bearer {alice.token}"}) as r:
        assert r.status == 200
    first.close()

    async def reopened() -> bool:
        async with http.get(url, headers=headers) as r:
            return r.status == 200

    for _ in range(50):
        if await reopened():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the stream slot was not released")
    second.close()


async def test_a_websocket_holds_a_bounded_number_of_subscriptions(
    limited: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    from scheduler.routes.socket import MAX_SOCKET_SUBSCRIPTIONS

    headers = {"Authorization": f"Bearer {limited.admin_token}"}
    async with http.ws_connect(limited.url + "/api/v1/ws", headers=headers) as ws:
        for i in range(MAX_SOCKET_SUBSCRIPTIONS + 1):
            await ws.send_json({"op": "subscribe", "id": f"s{i}", "topics": ["nodes"]})
            reply = await ws.receive_json(timeout=10)
            if i < MAX_SOCKET_SUBSCRIPTIONS:
                assert reply["type"] == "subscribed", reply
        assert reply["type"] == "error"
        assert reply["error"]["code"] == "too_many_requests"
        # Resubscribing an id it holds is still fine, and the socket keeps serving.
        await ws.send_json({"op": "subscribe", "id": "s0", "topics": ["jobs"]})
        assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
