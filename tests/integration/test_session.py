"""Dashboard sessions: a token becomes an HttpOnly, SameSite=Strict cookie, and changes
made with the cookie need the session's CSRF header."""

from __future__ import annotations

import aiohttp

from tests.support import SchedulerProcess


async def test_login_sets_a_strict_http_only_cookie_and_changes_need_csrf(
    sched: SchedulerProcess,
) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(
            f"{sched.url}/api/v1/session", json={"token": sched.admin_token}
        ) as r:
            assert r.status == 200
            me = await r.json()
            cookie = r.headers["Set-Cookie"]
        assert me["role"] == "admin" and me["csrf"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie

        async with browser.get(f"{sched.url}/api/v1/jobs") as r:
            assert r.status == 200
        async with browser.get(f"{sched.url}/api/v1/session") as r:
            assert (await r.json())["csrf"] == me["csrf"]
        spec = {"image": "busybox"}
        async with browser.post(f"{sched.url}/api/v1/jobs", json=spec) as r:
            assert r.status == 403
        async with browser.post(
            f"{sched.url}/api/v1/jobs", json=spec, headers={"X-CSRF-Token": "wrong"}
        ) as r:
            assert r.status == 403
        async with browser.get(f"{sched.url}/api/v1/stats") as r:
            assert sum((await r.json())["jobs"].values()) == 0
        async with browser.post(
            f"{sched.url}/api/v1/jobs", json=spec, headers={"X-CSRF-Token": me["csrf"]}
        ) as r:
            assert r.status == 201

        async with browser.delete(f"{sched.url}/api/v1/session") as r:
            assert r.status == 200
        async with browser.get(f"{sched.url}/api/v1/jobs") as r:
            assert r.status == 401


async def test_a_wrong_token_or_an_agent_token_cannot_log_in(sched: SchedulerProcess) -> None:
    async with aiohttp.ClientSession() as browser:
        for token in ("nope", sched.join_token):
            async with browser.post(f"{sched.url}/api/v1/session", json={"token": token}) as r:
                assert r.status == 401
                assert "Set-Cookie" not in r.headers
