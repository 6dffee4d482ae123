"""A standby on a shared PostgreSQL database: it follows the leader and serves reads,
refuses writes and agent calls with the leader's URL before doing anything, tells load
balancers what it is, and is listed beside the leader. Real scheduler processes, real
HTTP; the database is the real one of tests/pg.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import Api, SchedulerProcess, wait_until

pytestmark = pytest.mark.stores("postgresql")

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.1, "memory_mb": 16}}


def apis(
    http: aiohttp.ClientSession, pair: tuple[SchedulerProcess, SchedulerProcess]
) -> tuple[Api, Api]:
    leader, standby = pair
    token = leader.admin_token
    return Api(http, leader.url, token), Api(http, standby.url, token)


async def test_a_standby_serves_what_the_leader_committed_and_blocks_until_it_has(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    on_leader, on_standby = apis(http, pair)
    status, job = await on_leader.post("/api/v1/jobs", SPEC)
    assert status == 201

    async def seen() -> bool:
        status, body = await on_standby.get(f"/api/v1/jobs/{job['id']}")
        return status == 200 and body["state"] == job["state"]

    await wait_until(seen, timeout=10)
    _, listed = await on_standby.get("/api/v1/jobs")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    # A blocking query on the standby returns once the standby applied the change.
    _, before = await on_standby.get(f"/api/v1/jobs/{job['id']}")
    blocked = asyncio.ensure_future(
        on_standby.get(f"/api/v1/jobs/{job['id']}", params={"index": before["index"], "wait": "20"})
    )
    await asyncio.sleep(0.3)
    assert not blocked.done()
    started = time.monotonic()
    status, _ = await on_leader.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 200
    status, after = await blocked
    assert status == 200 and after["state"] == "cancelled"
    assert after["index"] > before["index"]
    assert time.monotonic() - started < 10


async def test_writes_and_agent_calls_on_a_standby_are_refused_naming_the_leader(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    leader, standby = pair
    on_leader, on_standby = apis(http, pair)
    _, stats_before = await on_leader.get("/api/v1/stats")
    for method, path, body in (
        ("POST", "/api/v1/jobs", SPEC),
        ("POST", "/api/v1/jobs/batch", {"jobs": [SPEC]}),
        ("PUT", "/api/v1/groups/etl", {"max_concurrent": 2}),
        ("POST", "/api/v1/tokens", {"role": "read", "name": "someone"}),
        ("POST", "/api/v1/nodes/register", {"name": "n1", "capacity": {"cpu": 1}}),
        ("GET", "/api/v1/nodes/n1/assignments", None),
    ):
        status, reply = await on_standby.call(method, path, body)
        assert status == 503, (method, path, reply)
        assert reply["error"]["code"] == "not_leader"
        assert reply["error"]["details"]["leader_url"] == leader.url
    # Nothing was done: the leader's state did not move.
    _, stats_after = await on_leader.get("/api/v1/stats")
    assert stats_after["index"] == stats_before["index"]
    assert standby.proc is not None and standby.proc.poll() is None


async def test_readyz_and_the_list_of_schedulers_tell_who_leads(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    leader, standby = pair
    on_leader, on_standby = apis(http, pair)
    assert (await on_leader.get("/readyz", params={"leader": "1"}))[0] == 200
    status, body = await on_standby.get("/readyz", params={"leader": "1"})
    assert status == 503 and body["leader_url"] == leader.url
    status, body = await on_standby.get("/readyz")
    assert status == 200 and body == {"status": "standby", "leader_url": leader.url}

    async def both_listed() -> list[dict[str, object]] | None:
        _, body = await on_standby.get("/api/v1/schedulers")
        found = body["schedulers"]
        return found if len(found) == 2 else None

    listed = await wait_until(both_listed, timeout=10)
    roles = {s["url"]: s["role"] for s in listed}
    assert roles == {leader.url: "leader", standby.url: "standby"}
    epochs = {s["url"]: s["epoch"] for s in listed}
    assert epochs[leader.url] == 1
    status, text = await on_standby.call("GET", "/metrics")
    assert status == 200
    assert b'berth_role{role="standby"} 1.0' in text
    assert b"berth_apply_lag_seconds" in text


async def test_a_database_token_file_it_never_heard_of_is_replaced(
    pg_dsn: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With a shared database, tokens live there: a stale admin.token grants nothing."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.token").write_text("a-token-from-some-other-database\n")
    sched = SchedulerProcess(state, "--store", pg_dsn).start()
    try:
        await wait_until(lambda: sched.admin_token != "a-token-from-some-other-database")
        stale = Api(http, sched.url, "a-token-from-some-other-database")
        assert (await stale.get("/api/v1/jobs"))[0] == 401
        fresh = Api(http, sched.url, sched.admin_token)
        assert (await fresh.get("/api/v1/jobs"))[0] == 200
    finally:
        sched.kill()
