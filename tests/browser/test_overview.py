"""The overview: stats, node cards and the job table, kept live by the event stream."""

from __future__ import annotations

import time

import aiohttp
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import Heartbeats, PageErrors, add_agent, login, screenshot, submit_job
from tests.support import Api, SchedulerProcess, SimAgent

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.5, "memory_mb": 64}}
#: a job no node matches: it stays queued
UNPLACED = {**SPEC, "constraints": {"labels": {"pool": "nowhere"}}}


def row(p: Page, job_id: str) -> Locator:
    return p.locator(f'tr[data-job="{job_id}"]')


async def test_a_submitted_job_appears_and_moves_through_its_states_live(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    await login(p, sched)
    await expect(p.locator(".empty-table")).to_contain_text("No jobs yet")

    job_id = await submit_job(admin, SPEC, name="nightly-report")
    await expect(row(p, job_id)).to_contain_text("nightly-report")
    await expect(row(p, job_id).locator(".pill")).to_have_text("Queued")
    await expect(p.get_by_test_id("stat-queued").locator(".stat-value")).to_have_text("1")

    agent = await add_agent(agents, sched, http, "worker-1")
    card = p.locator('[data-testid="node-card"][data-node="worker-1"]')
    await expect(card).to_be_visible()
    await agent.poll()
    await expect(row(p, job_id).locator(".pill")).to_have_text("Assigned")
    await agent.report(job_id, "running")
    await expect(row(p, job_id).locator(".pill")).to_have_text("Running")
    await expect(card).to_have_attribute("data-state", "busy")
    await expect(card.locator(".chip-job")).to_have_text("nightly-report")
    await expect(p.get_by_test_id("stat-running").locator(".stat-value")).to_have_text("1")
    await agent.report(job_id, "completed", exit_code=0)
    await expect(row(p, job_id).locator(".pill")).to_have_text("Completed")
    await expect(p.get_by_test_id("stat-completed").locator(".stat-value")).to_have_text("1")
    await expect(card).to_have_attribute("data-state", "idle")


async def test_tabs_and_the_filter_narrow_the_table_newest_first(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    first = await submit_job(admin, UNPLACED, name="alpha-etl")
    second = await submit_job(admin, UNPLACED, name="beta-train", image="python:3.12")
    third = await submit_job(admin, UNPLACED, name="gamma-etl")
    status, _ = await admin.post(f"/api/v1/jobs/{second}/cancel")
    assert status == 200
    await login(p, sched)

    rows = p.locator("table.jobs tbody tr")
    await expect(rows).to_have_count(3)
    assert [await r.get_attribute("data-job") for r in await rows.all()] == [third, second, first]

    await p.click('[data-tab="cancelled"]')
    await expect(rows).to_have_count(1)
    await expect(row(p, second)).to_be_visible()
    await p.click('[data-tab="queued"]')
    await expect(rows).to_have_count(2)
    await p.click('[data-tab="all"]')
    await p.get_by_test_id("job-filter").fill("etl")
    await expect(rows).to_have_count(2)
    await p.get_by_test_id("job-filter").fill("python")
    await expect(rows).to_have_count(1)
    await p.get_by_test_id("job-filter").fill(first[-6:])
    await expect(rows).to_have_count(1)
    await expect(row(p, first)).to_be_visible()


async def test_cancel_and_retry_the_selected_jobs(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    keep = await submit_job(admin, UNPLACED, name="keep-me")
    ids = [await submit_job(admin, UNPLACED, name=f"stop-me-{i}") for i in range(2)]
    await login(p, sched)
    await expect(p.get_by_test_id("cancel-selected")).to_be_disabled()
    for job_id in ids:
        await row(p, job_id).locator("input[type=checkbox]").check()
    await expect(p.locator(".sel-count")).to_have_text("2 selected")
    await p.get_by_test_id("cancel-selected").click()
    for job_id in ids:
        await expect(row(p, job_id).locator(".pill")).to_have_text("Cancelled")
    await expect(row(p, keep).locator(".pill")).to_have_text("Queued")
    await expect(p.locator(".toast")).to_contain_text("Cancelled 2 jobs")
    for job_id in ids:
        status, job = await admin.get(f"/api/v1/jobs/{job_id}")
        assert status == 200
        assert job["state"] == "cancelled" and job["cancelled_by"] == "admin"

    await row(p, ids[0]).locator("input[type=checkbox]").check()
    await p.get_by_test_id("retry-selected").click()
    await expect(row(p, ids[0]).locator(".pill")).to_have_text("Queued")
    await expect(row(p, ids[0]).locator(".col-num")).to_have_text("2")
    status, job = await admin.get(f"/api/v1/jobs/{ids[0]}")
    assert status == 200 and job["state"] == "queued" and job["attempt"] == 2


async def test_a_node_goes_offline_when_its_agent_stops(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    await add_agent(agents, sched, http, "steady", cpu=8, memory_mb=16384)
    await add_agent(agents, sched, http, "flaky", cpu=4, memory_mb=8192)
    await login(p, sched)
    flaky = p.locator('[data-testid="node-card"][data-node="flaky"]')
    await expect(flaky).to_have_attribute("data-state", "idle")
    await expect(flaky.locator(".meter-value").first).to_have_text("0 / 4 cores")
    banner = p.get_by_test_id("unhealthy-banner")
    await expect(banner).to_be_hidden()

    await agents[1].stop()
    await expect(flaky).to_have_attribute("data-state", "offline", timeout=20_000)
    await expect(flaky.locator(".pill")).to_have_text("Offline")
    await expect(flaky.locator(".node-reason")).not_to_be_empty()
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("flaky")
    await expect(banner).to_contain_text("1 node needs attention")
    steady = p.locator('[data-testid="node-card"][data-node="steady"]')
    await expect(steady).to_have_attribute("data-state", "idle")


async def test_the_overview_shows_load_reasons_and_draining(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    busy = await add_agent(agents, sched, http, "gpu-01", cpu=16, memory_mb=65536, max_parallel=4)
    await add_agent(agents, sched, http, "cpu-02", cpu=8, memory_mb=16384)
    broken: SimAgent = await add_agent(agents, sched, http, "edge-03", cpu=2, memory_mb=4096)
    await agents[2].stop()
    status, _ = await broken.api.post(
        f"/api/v1/nodes/{broken.node_id}/heartbeat",
        {"executor_error": "dockerd does not answer", "metrics": {"ram_total_mb": 4096}},
    )
    assert status == 200
    status, _ = await admin.post(
        f"/api/v1/nodes/{agents[1].agent.node_id}/drain",
        {"drain": True, "reason": "kernel upgrade"},
    )
    assert status == 200
    running = []
    for i in range(3):
        job_id = await submit_job(
            admin,
            SPEC,
            name=f"train-{i}",
            resources={"cpu": 4, "memory_mb": 8192},
            constraints={"labels": {}},
        )
        running.append(job_id)
    await busy.poll()
    for job_id in running:
        await busy.report(job_id, "running")
    await busy.report(running[0], None, progress={"percent": 40, "message": "epoch 4 of 10"})
    await submit_job(admin, UNPLACED, name="waits-forever")

    await login(p, sched)
    gpu = p.locator('[data-testid="node-card"][data-node="gpu-01"]')
    await expect(gpu).to_have_attribute("data-state", "busy")
    await expect(gpu.locator(".meter-value").first).to_have_text("12 / 16 cores")
    await expect(gpu.locator(".chip-job")).to_have_count(3)
    cpu = p.locator('[data-testid="node-card"][data-node="cpu-02"]')
    await expect(cpu.locator(".badge-drain")).to_be_visible()
    await expect(cpu.locator(".node-reason")).to_contain_text("kernel upgrade")
    edge = p.locator('[data-testid="node-card"][data-node="edge-03"]')
    await expect(edge).to_have_attribute("data-state", "unhealthy")
    await expect(edge.locator(".node-reason")).to_contain_text("dockerd does not answer")
    await expect(p.get_by_test_id("stat-running").locator(".stat-value")).to_have_text("3")
    await expect(p.get_by_test_id("stat-queued").locator(".stat-value")).to_have_text("1")
    await expect(row(p, running[0]).locator(".progress-pct")).to_have_text("40%")
    await screenshot(p, "overview")


async def test_a_burst_of_events_is_coalesced_into_few_loads_and_redraws(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    await login(p, sched)
    loads: list[str] = []
    p.on("request", lambda r: loads.append(r.url) if "/api/v1/jobs?" in r.url else None)
    specs = [{**UNPLACED, "name": f"burst-{i}"} for i in range(1000)]
    began = time.monotonic()
    for start in range(0, len(specs), 250):
        status, body = await admin.post("/api/v1/jobs/batch", {"jobs": specs[start : start + 250]})
        assert status == 201, body
    await expect(p.get_by_test_id("stat-queued").locator(".stat-value")).to_have_text("1,000")
    await expect(p.locator("table.jobs tbody tr")).to_have_count(50)
    await expect(p.locator("table.jobs tbody tr").first).to_contain_text("burst-999")
    # 1,000 job.created events; the list is loaded at most once a second meanwhile.
    elapsed = time.monotonic() - began
    assert len(loads) <= elapsed + 2, (len(loads), elapsed)
