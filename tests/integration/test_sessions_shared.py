"""Dashboard sessions on schedulers sharing a PostgreSQL database: a browser logged in
on one stays logged in when a load balancer or a failover sends it to another.

Two real scheduler processes on one database, one leading, one standing by; real HTTP
over loopback, the cookie sent by hand to whichever the test means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from scheduler.sessions import COOKIE, CSRF_HEADER
from scheduler.sessions_pg import CACHE_S
from tests.support import Api, SchedulerProcess, wait_until

pytestmark = pytest.mark.stores("postgresql")

#: how long a session ended elsewhere may take to end here: the cache time, and a margin
#: for a loaded machine
ENDS_WITHIN_S = CACHE_S + 10.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No jar: each request carries the cookie of the test's choosing, to the scheduler
    # of its choosing.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
    ) as s:
        yield s


async def _login(http: aiohttp.ClientSession, sched: SchedulerProcess, token: str) -> Any:
    async with http.post(sched.url + "/api/v1/session", json={"token": token}) as r:
        assert r.status == 200, await r.text()
        return {"id": r.cookies[COOKIE].value, **(await r.json())}


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    sched: SchedulerProcess,
    path: str,
    session: Any,
    body: Any = None,
    csrf: bool = False,
) -> int:
    headers = {"Cookie": f"{COOKIE}={session['id']}"}
    if csrf:
        headers[CSRF_HEADER] = session["csrf"]
    async with http.request(method, sched.url + path, json=body, headers=headers) as r:
        await r.read()
        return r.status


async def _refused(http: aiohttp.ClientSession, sched: SchedulerProcess, session: Any) -> bool:
    return await _call(http, "GET", sched, "/api/v1/jobs", session) == 401


async def test_a_session_opened_on_one_scheduler_works_on_the_other_until_logout(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession
) -> None:
    leader, standby = pair
    # Logging in works on a standby too.
    session = await _login(http, standby, leader.admin_token)
    assert session["role"] == "admin"
    assert await _call(http, "GET", leader, "/api/v1/jobs", session) == 200
    assert await _call(http, "GET", standby, "/api/v1/jobs", session) == 200
    async with http.get(
        leader.url + "/api/v1/session", headers={"Cookie": f"{COOKIE}={session['id']}"}
    ) as r:
        assert r.status == 200 and (await r.json())["csrf"] == session["csrf"]

    spec = {"image": "busybox"}
    assert await _call(http, "POST", leader, "/api/v1/jobs", session, spec) == 403
    assert await _call(http, "POST", leader, "/api/v1/jobs", session, spec, csrf=True) == 201

    # Logged out on the leader: there at once, on the standby within the cache time.
    assert await _call(http, "DELETE", leader, "/api/v1/session", session) == 200
    assert await _refused(http, leader, session)
    await wait_until(lambda: _refused(http, standby, session), timeout=ENDS_WITHIN_S)


async def test_a_session_past_its_end_or_of_a_revoked_token_is_refused_everywhere(
    pair: tuple[SchedulerProcess, SchedulerProcess], http: aiohttp.ClientSession, pg_dsn: str
) -> None:
    leader, standby = pair
    admin = Api(http, leader.url, leader.admin_token)
    status, reader = await admin.post("/api/v1/tokens", {"role": "read", "name": "viewer"})
    assert status == 201
    ending = await _login(http, leader, leader.admin_token)
    revoked = await _login(http, leader, reader["token"])
    assert await _call(http, "GET", standby, "/api/v1/jobs", revoked) == 200

    # The session's end as the leader wrote it, moved into the past.
    conn = await asyncpg.connect(pg_dsn)
    try:
        moved = await conn.execute(
            """UPDATE sessions SET expires = extract(epoch FROM now()) - 1
               WHERE csrf = $1""",
            ending["csrf"],
        )
    finally:
        await conn.close()
    assert moved == "UPDATE 1"
    # The standby never saw it; the leader, which opened it, within its cache time.
    assert await _refused(http, standby, ending)
    await wait_until(lambda: _refused(http, leader, ending), timeout=ENDS_WITHIN_S)

    status, _ = await admin.call("DELETE", "/api/v1/tokens/viewer")
    assert status == 200
    assert await _refused(http, leader, revoked)
    # The standby refuses it once it has applied the leader's commit.
    await wait_until(lambda: _refused(http, standby, revoked), timeout=ENDS_WITHIN_S)
