"""Job arrays in the jobs table: one row per array with its tasks counted by state,
opening on a click to list the tasks, and counting live as tasks end."""

from __future__ import annotations

from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from tests.browser.conftest import Heartbeats, PageErrors, add_agent, login, screenshot
from tests.support import Api, SchedulerProcess

SPEC = {
    "name": "param-sweep",
    "image": "busybox",
    "command": ["sh", "-c", "run-case $BERTH_ARRAY_INDEX"],
    "resources": {"cpu": 1, "memory_mb": 256},
    "array": {"count": 5, "max_concurrent": 2},
}


async def test_an_array_is_one_row_that_opens_to_its_tasks(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    status, plain = await admin.post("/api/v1/jobs", {"name": "lonely", "image": "busybox"})
    assert status == 201, plain
    status, first = await admin.post("/api/v1/jobs", SPEC)
    assert status == 201, first
    array_id = first["id"]
    agent = await add_agent(agents, sched, http, "worker-1")
    # The plain job and two tasks (max_concurrent): one task runs, one completes.
    got: list[dict[str, Any]] = []
    while len(got) < 3:
        got += await agent.poll(wait=5)
    assigned = [a for a in got if a["job_id"] != plain["id"]]
    assert len(assigned) == 2
    await agent.report(assigned[0]["job_id"], "running")
    await agent.report(assigned[1]["job_id"], "running")
    await agent.report(assigned[1]["job_id"], "completed", exit_code=0)

    await login(p, sched)
    table = p.get_by_test_id("jobs-table")
    row = table.locator(f'tr[data-array="{array_id}"]')
    await expect(row).to_have_count(1)
    await expect(row.locator(".array-title")).to_have_text("param-sweep")
    await expect(row.locator(".job-id")).to_have_text(f"array {array_id} · 5 tasks")
    counts = row.get_by_test_id("array-counts")
    await expect(counts).to_contain_text("1 running")
    await expect(counts).to_contain_text("1 completed")
    # The plain job has its own row; the tasks are not listed until the array opens.
    await expect(table.locator(f'tr[data-job="{plain["id"]}"]')).to_have_count(1)
    tasks = table.locator("tr.array-task")
    await expect(tasks).to_have_count(0)
    await expect(p.locator(".jobs-panel .panel-foot")).to_contain_text("Showing 6 of 6 jobs")

    await row.get_by_test_id("array-toggle").click()
    await expect(tasks).to_have_count(5)
    await expect(row).to_have_attribute("aria-expanded", "true")
    for i in range(5):
        await expect(tasks.nth(i).locator(".job-id")).to_contain_text(f"task {i}")
    await expect(tasks.nth(0).locator(".pill")).to_have_text("Running")
    await screenshot(p, "array-open")

    # A task ends: the array's counts follow without a reload.
    await agent.report(assigned[0]["job_id"], "completed", exit_code=0)
    await expect(counts).to_contain_text("2 completed")
    await expect(tasks.nth(0).locator(".pill")).to_have_text("Completed")

    await row.click()
    await expect(tasks).to_have_count(0)
    await expect(row).to_have_attribute("aria-expanded", "false")
