"""Charts: the vendored chart library as served, the overview's cluster charts with their
range picker, node sparklines and a job's CPU and memory over its attempts, drawn from
the stored history and grown by live events (a scheduler sampling every second)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from playwright.async_api import Page, expect

from scheduler.routes.dashboard import WEB_DIR
from tests.browser.conftest import (
    LIVENESS,
    TIMEOUT_MS,
    Heartbeats,
    PageErrors,
    add_agent,
    login,
    screenshot,
)
from tests.browser.test_gpus import GpuAgent
from tests.support import Api, SchedulerProcess, SimAgent, start_process_agent

T = TypeVar("T")
#: an SVG path that draws something
LINE = re.compile(r"^M[\d.]+ [\d.]+L")
VENDOR = WEB_DIR / "vendor"
SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memory_mb": 256}}
#: what the history's points and nodes say, read from the page's own module
HISTORY = """async () => {
  const { history } = await import("/ui/js/history.js");
  const sum = (k) => history.points.reduce((a, p) => a + (p[k] || 0), 0);
  return {
    points: history.points.length,
    started: sum("started"),
    ended: sum("ended"),
    range: history.range,
    nodes: [...history.nodes.values()].map((n) => [n.name, n.points.length]),
  };
}"""


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A scheduler that samples its history every second."""
    proc = SchedulerProcess(tmp_path / "state", *LIVENESS, "--history-interval", "1").start()
    yield proc
    proc.kill()


async def test_the_vendored_chart_library_is_served_as_recorded(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    uplot = manifest["uplot"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", uplot["version"]), "pinned to an exact version"
    assert uplot["tarball"].endswith(f"/uplot-{uplot['version']}.tgz")
    assert set(uplot["files"]) == {"uPlot.esm.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, meta in uplot["files"].items():
        async with http.get(f"{sched.url}/ui/vendor/{name}") as r:
            assert r.status == 200, name
            body = await r.read()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"], name
    async with http.get(f"{sched.url}/ui/vendor/uPlot.esm.js") as r:
        assert r.content_type == "text/javascript"
        head = (await r.text())[:400]
    assert f"(v{uplot['version']})" in head
    assert "MIT" in (VENDOR / "uPlot.LICENSE").read_text()
    # The page reaches it: its stylesheet through charts.css, the module through charts.js.
    async with http.get(sched.url + "/") as r:
        assert 'href="/ui/charts.css"' in await r.text()
    async with http.get(sched.url + "/ui/charts.css") as r:
        assert r.status == 200
        assert '@import url("vendor/uPlot.min.css");' in await r.text()
    async with http.get(sched.url + "/ui/js/charts.js") as r:
        assert 'import uPlot from "../vendor/uPlot.esm.js";' in await r.text()


async def history_of(p: Page) -> dict[str, Any]:
    result: dict[str, Any] = await p.evaluate(HISTORY)
    return result


async def run_one_job(admin: Api, agent: SimAgent, name: str) -> str:
    status, job = await admin.post("/api/v1/jobs", {**SPEC, "name": name})
    assert status == 201, job
    job_id: str = job["id"]
    assert [a["job_id"] for a in await agent.poll()] == [job_id]
    status, body = await agent.report(job_id, "running")
    assert status == 200, body
    return job_id


async def test_overview_charts_draw_grow_live_and_reload_for_another_range(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    async with p.expect_request(lambda r: "/api/v1/stats/history?since=1h" in r.url):
        await login(p, sched)
    panel = p.get_by_test_id("cluster-charts")
    await expect(panel).to_have_attribute("data-range", "1h")
    await expect(panel.locator('[data-range="1h"]')).to_have_attribute("aria-pressed", "true")
    for chart in ("chart-cpu", "chart-memory", "chart-queue", "chart-throughput"):
        await expect(p.get_by_test_id(chart).locator("canvas")).to_have_count(1)
    # No GPUs in this cluster: no GPU chart.
    await expect(panel.locator('[data-chart="gpus"]')).to_be_hidden()

    job_id = await run_one_job(admin, agent, "chart-me")
    await expect(p.locator(f'tr[data-job="{job_id}"] .pill')).to_have_text("Running")
    status, body = await agent.report(job_id, "completed", exit_code=0)
    assert status == 200, body
    await expect(p.locator(f'tr[data-job="{job_id}"] .pill')).to_have_text("Completed")

    # The start and the end are counted by the samples that follow, sent live.
    await until(lambda: history_of(p), lambda h: h["started"] >= 1 and h["ended"] >= 1)
    cpu = p.get_by_test_id("chart-cpu")
    await expect(cpu).not_to_have_attribute("data-points", "0")
    points = int(await cpu.get_attribute("data-points") or 0)
    # More samples arrive every second; a new step (5 s for an hour) adds a point.
    await expect(cpu).not_to_have_attribute("data-points", str(points), timeout=TIMEOUT_MS)
    await expect(panel.locator(".u-legend").first).to_contain_text("Capacity")
    cpu_note = panel.locator('[data-chart="cpu"] .chart-note')
    await expect(cpu_note).to_have_text("0.2 of 4 cores used", timeout=TIMEOUT_MS)

    # The node card draws its CPU and memory from the same history.
    spark = p.locator('[data-testid="node-card"][data-node="worker-1"] [data-testid="node-spark"]')
    await expect(spark).to_be_visible()
    await expect(spark.locator("path.spark-line.spark-cpu")).to_have_attribute("d", LINE)
    await expect(spark).to_contain_text("last 1h")
    await screenshot(p, "overview-charts")

    # Another range loads the history again, for that range, and is remembered.
    async with p.expect_request(lambda r: "/api/v1/stats/history?since=6h" in r.url):
        await panel.locator('[data-range="6h"]').click()
    await expect(panel).to_have_attribute("data-range", "6h")
    await expect(panel.locator('[data-range="6h"]')).to_have_attribute("aria-pressed", "true")
    await expect(panel.locator('[data-range="1h"]')).to_have_attribute("aria-pressed", "false")
    await expect(panel).to_have_attribute("data-loading", "false")
    await expect(cpu).not_to_have_attribute("data-points", "0")
    await expect(spark).to_contain_text("last 6h")
    async with p.expect_request(lambda r: "/api/v1/stats/history?since=6h" in r.url):
        await p.reload()
    await expect(panel).to_have_attribute("data-range", "6h")

    # The charts are drawn again in the dark scheme's colours.
    await expect(cpu).to_have_attribute("data-scheme", "light")
    await p.emulate_media(color_scheme="dark")
    await expect(cpu).to_have_attribute("data-scheme", "dark")
    await screenshot(p, "overview-charts-dark")
    await p.emulate_media(color_scheme="light")

    # The charts follow their boxes as the window changes (here from three columns to one).
    before = await widths(p)
    assert abs(before[0] - before[1]) <= 1, before
    await p.set_viewport_size({"width": 800, "height": 1000})
    await until(lambda: widths(p), lambda w: w[1] != before[1] and abs(w[0] - w[1]) <= 1)


async def widths(p: Page) -> tuple[float, float]:
    """The CPU chart's box and the chart drawn in it, in CSS pixels."""
    box = await p.get_by_test_id("chart-cpu").locator(".chart-plot").bounding_box()
    drawn = await p.get_by_test_id("chart-cpu").locator(".uplot").bounding_box()
    return (box["width"] if box else 0.0, drawn["width"] if drawn else 0.0)


async def until(get: Callable[[], Awaitable[T]], check: Callable[[T], bool]) -> T:
    """Poll the page until ``check`` holds (as long as a wait for the page may take)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        value = await get()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never got there: {value}")
        await asyncio.sleep(0.2)


def samples(start: float, *cpu_mem: tuple[float, float]) -> list[dict[str, float]]:
    """Usage samples two seconds apart from ``start``, as an agent sends them."""
    return [
        {"t": start + 2 * i, "cpu_percent": cpu, "memory_mb": mem}
        for i, (cpu, mem) in enumerate(cpu_mem)
    ]


async def test_a_job_page_charts_cpu_and_memory_over_each_attempt(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await run_one_job(admin, agent, "usage-me")
    now = time.time()
    status, body = await agent.report(job_id, None, samples=samples(now - 6, (40, 100), (80, 120)))
    assert status == 200, body

    await login(p, sched)
    await p.goto(f"{sched.url}/#/jobs/{job_id}")
    usage = p.get_by_test_id("job-usage")
    cpu, memory = p.get_by_test_id("usage-cpu"), p.get_by_test_id("usage-memory")
    # What was stored before the page opened, then what the agent sends while it is open.
    await expect(usage).to_have_attribute("data-samples", "2")
    await expect(cpu.locator("canvas")).to_have_count(1)
    await expect(memory.locator("canvas")).to_have_count(1)
    await expect(cpu).to_have_attribute("data-points", "2")
    status, body = await agent.report(job_id, None, samples=samples(now - 2, (150, 180), (60, 90)))
    assert status == 200, body
    await expect(usage).to_have_attribute("data-samples", "4")
    await expect(memory).to_have_attribute("data-points", "4")
    await expect(usage.locator('[data-chart="memory"] .chart-note')).to_have_text(
        "90 MiB now · peak 180 MiB of 256 MiB"
    )
    await expect(usage.locator('[data-chart="cpu"] .chart-note')).to_contain_text("60% now")
    # One attempt: nothing to pick.
    await expect(p.get_by_test_id("usage-attempt")).to_be_hidden()
    await screenshot(p, "job-usage")

    # A second attempt: the page follows it, and the first can still be picked.
    status, body = await agent.report(job_id, "failed", exit_code=1)
    assert status == 200, body
    status, body = await admin.post(f"/api/v1/jobs/{job_id}/retry")
    assert status == 200, body
    assert [a["attempt"] for a in await agent.poll()] == [2]
    status, body = await agent.report(job_id, "running")
    assert status == 200, body
    status, body = await agent.report(job_id, None, samples=samples(time.time(), (20, 50)))
    assert status == 200, body
    picker = p.get_by_test_id("usage-attempt")
    await expect(picker).to_be_visible()
    await expect(usage).to_have_attribute("data-attempt", "2")
    await expect(usage).to_have_attribute("data-samples", "1")
    await picker.select_option("1")
    await expect(usage).to_have_attribute("data-attempt", "1")
    await expect(usage).to_have_attribute("data-samples", "4")
    # Samples of the attempt not shown do not join it. Events come in order, and the
    # progress sent with them comes after them: once it shows, they have been taken.
    status, body = await agent.report(
        job_id,
        None,
        samples=samples(time.time() + 2, (25, 55)),
        progress={"percent": 50, "message": "half way"},
    )
    assert status == 200, body
    await expect(p.get_by_test_id("progress-percent")).to_have_text("50%")
    await expect(usage).to_have_attribute("data-samples", "4")
    await picker.select_option("2")
    await expect(usage).to_have_attribute("data-samples", "2")


async def test_a_cluster_with_gpus_charts_them(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = GpuAgent(http, sched.url, sched.join_token, "gpu-1", use={0: (50.0, 1024), 1: (0.0, 0)})
    await agent.register()
    await agent.heartbeat()
    agents.append(Heartbeats(agent).start())
    await login(p, sched)
    gpus = p.get_by_test_id("cluster-charts").locator('[data-chart="gpus"]')
    await expect(gpus).to_be_visible()
    await expect(gpus.locator("canvas")).to_have_count(1)
    # Two GPUs, one half busy: half a GPU's worth used.
    await expect(gpus.locator(".chart-note")).to_have_text("0.5 of 2 busy", timeout=TIMEOUT_MS)
    await expect(p.get_by_test_id("chart-gpus")).not_to_have_attribute("data-points", "0")


async def test_a_real_agent_s_samples_reach_the_job_page(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    tmp_path: Path,
) -> None:
    """A process agent samples its job every 2 s and sends the samples every 5 s."""
    p, _ = page
    agent = start_process_agent(sched, tmp_path, "proc-1")
    try:
        spec = {**SPEC, "name": "sampled", "command": ["sleep", "7"]}
        status, job = await admin.post("/api/v1/jobs", spec)
        assert status == 201, job
        await login(p, sched)
        await p.goto(f"{sched.url}/#/jobs/{job['id']}")
        await expect(p.get_by_test_id("job-page")).to_have_attribute(
            "data-state", "running", timeout=TIMEOUT_MS
        )
        usage = p.get_by_test_id("job-usage")
        await expect(usage).not_to_have_attribute("data-samples", "0", timeout=TIMEOUT_MS)
        await expect(p.get_by_test_id("usage-memory").locator("canvas")).to_have_count(1)
        await expect(usage.locator('[data-chart="memory"] .chart-note')).to_contain_text(
            "of 256 MiB"
        )
        await expect(p.get_by_test_id("job-page")).to_have_attribute(
            "data-state", "completed", timeout=TIMEOUT_MS
        )
        # The last samples go with the end; a reload finds them all stored.
        shown = int(await usage.get_attribute("data-samples") or 0)
        await p.reload()
        await expect(usage).to_have_attribute("data-samples", re.compile(r"^[1-9]\d*$"))
        stored = int(await usage.get_attribute("data-samples") or 0)
        assert stored >= shown >= 1
    finally:
        agent.kill()
        agent.wait(timeout=30)
