"""Dashboard sessions are capped per token: logging in many times with one token ends
that token's oldest sessions, never another token's.

Before the cap was per token, the scheduler kept 10,000 sessions in all and evicted
the oldest of anyone's: 10,000 logins with a read token logged the admin out. Real
scheduler process, real HTTP over loopback.
"""

from __future__ import annotations

import asyncio

import aiohttp

from scheduler.sessions import COOKIE, MAX_SESSIONS, MAX_SESSIONS_PER_TOKEN
from tests.support import Api, SchedulerProcess

#: logins sent at once
BATCH = 200


async def _login(http: aiohttp.ClientSession, url: str, token: str) -> str:
    async with http.post(url + "/api/v1/session", json={"token": token}) as r:
        assert r.status == 200, await r.text()
        return r.cookies[COOKIE].value


async def _alive(http: aiohttp.ClientSession, url: str, session_id: str) -> bool:
    # The cookie is sent by hand: the client's jar holds only the last one.
    async with http.get(url + "/api/v1/session", headers={"Cookie": f"{COOKIE}={session_id}"}) as r:
        await r.read()
        return r.status == 200


async def test_logins_with_one_token_end_only_that_tokens_oldest_sessions(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    _, reader = await admin.post("/api/v1/tokens", {"role": "read", "name": "reader"})
    jar_free = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=60)
    )
    async with jar_free as h:
        admin_session = await _login(h, sched.url, sched.admin_token)
        for _ in range(MAX_SESSIONS // BATCH + 1):
            await asyncio.gather(*(_login(h, sched.url, reader["token"]) for _ in range(BATCH)))
        assert await _alive(h, sched.url, admin_session)
        # One at a time, so that the order they were opened in is known.
        ids = [
            await _login(h, sched.url, reader["token"]) for _ in range(MAX_SESSIONS_PER_TOKEN + 20)
        ]
        alive = await asyncio.gather(*(_alive(h, sched.url, s) for s in ids))
        assert alive == [False] * 20 + [True] * MAX_SESSIONS_PER_TOKEN
