"""A job's end reaches its webhook as a signed POST, retried until it is taken."""

from __future__ import annotations

import hashlib
import hmac

import aiohttp
from aiohttp import web

from tests.support import Api, SchedulerProcess, SimAgent, free_port, wait_until


async def test_the_end_of_a_job_is_posted_signed_and_retried(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        # The first two tries fail: the scheduler must try again.
        return web.Response(status=503 if len(received) <= 2 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        a = SimAgent(http, sched.url, sched.join_token, "a")
        await a.register()
        spec = {"image": "busybox", "webhook": {"url": f"http://127.0.0.1:{port}/hook"}}
        _, job = await admin.post("/api/v1/jobs", spec)
        await a.poll(wait=5)
        await a.report(job["id"], "running")
        await a.report(job["id"], "completed", exit_code=0)

        async def delivered() -> bool:
            _, j = await admin.get(f"/api/v1/jobs/{job['id']}")
            return not j["webhook_pending"] and len(j["webhook_deliveries"]) == 3

        await wait_until(delivered, timeout=30, interval=0.2)
    finally:
        await runner.cleanup()
    _, done = await admin.get(f"/api/v1/jobs/{job['id']}")
    tries = done["webhook_deliveries"]
    assert [t["status"] for t in tries] == [503, 503, 204]
    assert [t["error"] for t in tries] == ["HTTP 503", "HTTP 503", None]
    key = (sched.state_dir / "webhook.key").read_text().strip().encode()
    assert (sched.state_dir / "webhook.key").stat().st_mode & 0o777 == 0o600
    body, headers = received[-1]
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    assert headers["X-Berth-Signature"] == expected
    assert headers["X-Berth-Event"] == "job.ended"
    assert b'"state":"completed"' in body


async def test_a_webhook_url_must_be_http(admin: Api) -> None:
    status, body = await admin.post(
        "/api/v1/jobs", {"image": "busybox", "webhook": {"url": "file:///etc/passwd"}}
    )
    assert status == 400 and body["error"]["details"]["field"] == "$.webhook.url"
