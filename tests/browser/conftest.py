"""Browser fixtures: Debian's Chromium driven by Playwright, against real schedulers.

The browser is never downloaded: Playwright launches /usr/bin/chromium (tests/run.sh
installs it). Without Chromium or Playwright the tests are skipped, except under
CI=true where that is a failure. Every test saves a screenshot of where it ended up
in test-artifacts/browser/, and fails if the page threw a JavaScript error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.support import REPO, Api, SchedulerProcess, SimAgent

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
VIEWPORT = {"width": 1440, "height": 1000}
#: the longest any single wait for the page may take on a loaded machine
TIMEOUT_MS = 15_000
#: short liveness intervals, so a silent agent's node goes offline within seconds
LIVENESS = ("--heartbeat-interval", "0.5", "--node-ttl", "2", "--restart-grace", "1")


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI needs it (tests/run.sh installs it)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, and Playwright to drive it."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is not installed")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _missing("playwright is not installed")
    return CHROMIUM


# Closed once the browser tests are done, not at the end of the whole session.
@pytest.fixture(scope="package")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path / "state", *LIVENESS).start()
    yield proc
    proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
def admin(sched: SchedulerProcess, http: aiohttp.ClientSession) -> Api:
    return Api(http, sched.url, sched.admin_token)


class PageErrors(list[str]):
    """JavaScript errors the page threw (uncaught exceptions)."""


@pytest.fixture
async def page(
    browser: Browser, sched: SchedulerProcess, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Page, PageErrors]]:
    """A fresh browser context on a running scheduler (which outlives the page, so the
    closing screenshot shows the page still connected)."""
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    p = await context.new_page()
    errors = PageErrors()
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield p, errors
    finally:
        await screenshot(p, request.node.name)
        await context.close()
    assert not errors, f"the page threw: {errors}"


async def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/browser/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    with contextlib.suppress(Exception):
        await page.screenshot(path=str(path), full_page=True)
    return path


async def login(page: Page, sched: SchedulerProcess, token: str | None = None) -> None:
    """Open the dashboard, paste ``token`` (the admin token unless given), wait for the
    live overview."""
    from playwright.async_api import expect

    await page.goto(sched.url + "/")
    await page.fill("#token", token or sched.admin_token)
    await page.click("button[type=submit]")
    await expect(page.get_by_test_id("connection")).to_have_text("Live")


# --- jobs --------------------------------------------------------------------------------


async def submit_job(admin: Api, spec: dict[str, Any], **fields: object) -> str:
    """Submit ``spec`` with ``fields`` over it; the new job's id."""
    status, job = await admin.post("/api/v1/jobs", {**spec, **fields})
    assert status == 201, job
    job_id: str = job["id"]
    return job_id


async def running_job(admin: Api, agent: SimAgent, spec: dict[str, Any], **fields: object) -> str:
    """Submit a job that ``agent`` takes and reports running; its id."""
    job_id = await submit_job(admin, spec, **fields)
    await agent.poll()
    status, body = await agent.report(job_id, "running")
    assert status == 200, body
    return job_id


# --- simulated agents ------------------------------------------------------------------


class Heartbeats:
    """Keeps a SimAgent's node alive until stopped (like an agent process would)."""

    def __init__(self, agent: SimAgent, interval: float = 0.25) -> None:
        self.agent = agent
        self.interval = interval
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            await self.agent.heartbeat()
            await asyncio.sleep(self.interval)

    def start(self) -> Heartbeats:
        self.task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.task = None


@pytest.fixture
async def agents(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> AsyncIterator[list[Heartbeats]]:
    """Started heartbeat loops, stopped at the end of the test."""
    started: list[Heartbeats] = []
    yield started
    for beats in started:
        await beats.stop()


async def add_agent(
    started: list[Heartbeats],
    sched: SchedulerProcess,
    http: aiohttp.ClientSession,
    name: str,
    **kw: Any,
) -> SimAgent:
    agent = SimAgent(http, sched.url, sched.join_token, name, **kw)
    await agent.register()
    await agent.heartbeat()
    started.append(Heartbeats(agent).start())
    return agent


async def append_log(agent: SimAgent, job_id: str, offset: int, text: str) -> int:
    """Ship log bytes as the agent does; returns the new end offset."""
    status, body = await agent.api.call(
        "POST",
        f"/api/v1/nodes/{agent.node_id}/jobs/{job_id}/logs",
        data=text.encode(),
        params={"attempt": agent.running.get(job_id, 1), "offset": offset},
    )
    assert status == 200, body
    end: int = body["offset"]
    return end
