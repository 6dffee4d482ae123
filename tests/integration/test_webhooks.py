"""A job's end reaches its webhook as a signed POST, retried until it is taken."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import Api, SchedulerProcess, SimAgent, free_port, wait_until


@pytest.fixture
def local_hooks(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A scheduler that may call webhooks on loopback, where the test's receiver is."""
    proc = SchedulerProcess(tmp_path / "state", "--webhook-allow-private").start()
    yield proc
    proc.kill()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    got: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def test_the_end_of_a_job_is_posted_signed_and_retried(
    local_hooks: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    sched = local_hooks
    admin = Api(http, sched.url, sched.admin_token)
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


async def _end_one_job(sched: SchedulerProcess, http: aiohttp.ClientSession, url: str) -> str:
    admin = Api(http, sched.url, sched.admin_token)
    agent = SimAgent(http, sched.url, sched.join_token, "a")
    await agent.register()
    _, job = await admin.post("/api/v1/jobs", {"image": "busybox", "webhook": {"url": url}})
    await agent.poll(wait=5)
    await agent.report(job["id"], "running")
    await agent.report(job["id"], "completed", exit_code=0)
    return str(job["id"])


@pytest.mark.parametrize(
    "url",
    [
        "LOOPBACK",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://10.1.2.3:9/hook",
    ],
)
async def test_a_webhook_may_not_call_into_the_schedulers_own_network(
    sched: SchedulerProcess,
    http: aiohttp.ClientSession,
    receiver: tuple[str, list[bytes]],
    url: str,
) -> None:
    target, got = receiver
    job_id = await _end_one_job(sched, http, target if url == "LOOPBACK" else url)
    admin = Api(http, sched.url, sched.admin_token)

    async def settled() -> dict[str, object] | None:
        _, j = await admin.get(f"/api/v1/jobs/{job_id}")
        return j if not j["webhook_pending"] else None

    job = await wait_until(settled, timeout=20, interval=0.2)
    # Refused once, with the reason, and not tried again.
    [delivery] = job["webhook_deliveries"]
    assert delivery["status"] is None
    assert delivery["error"].startswith("refused: "), delivery
    assert got == []


async def test_link_local_stays_refused_even_when_private_addresses_are_allowed(
    local_hooks: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, local_hooks.url, local_hooks.admin_token)
    job_id = await _end_one_job(local_hooks, http, "http://169.254.169.254/latest/")

    async def settled() -> dict[str, object] | None:
        _, j = await admin.get(f"/api/v1/jobs/{job_id}")
        return j if not j["webhook_pending"] else None

    job = await wait_until(settled, timeout=20, interval=0.2)
    [delivery] = job["webhook_deliveries"]
    assert "link-local" in delivery["error"]
