"""The dashboard's admin views: draining a node from its card, job arrays, schedules,
secrets and the schedulers sharing a store, and what a read-only login is not offered
(while the scheduler itself refuses it)."""

from __future__ import annotations

from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import (
    TIMEOUT_MS,
    VIEWPORT,
    Heartbeats,
    PageErrors,
    add_agent,
    login,
    screenshot,
)
from tests.support import Api, SchedulerProcess

ARRAY = {
    "name": "render-frames",
    "image": "busybox",
    "command": ["sh", "-c", "render $BERTH_ARRAY_INDEX"],
    "resources": {"cpu": 1, "memory_mb": 128},
    "array": {"count": 4, "max_concurrent": 2},
}


async def _token(admin: Api, role: str, name: str) -> str:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name})
    assert status == 201, made
    token: str = made["token"]
    return token


async def test_an_admin_drains_a_node_with_a_reason_and_undrains_it(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "gpu-box-1")
    await login(p, sched)
    card = p.locator('[data-testid="node-card"][data-node="gpu-box-1"]')
    await expect(card).to_be_visible()
    await expect(card.locator(".badge-drain")).to_be_hidden()

    await card.get_by_test_id("drain").click()
    await card.get_by_test_id("drain-reason").fill("replacing a fan")
    await card.get_by_test_id("drain-confirm").click()
    await expect(card.locator(".badge-drain")).to_be_visible()
    await expect(card.locator(".node-reason")).to_have_text("draining: replacing a fan")
    await expect(card.get_by_test_id("drained-by")).to_contain_text("drained by admin")
    await expect(card.get_by_test_id("undrain")).to_be_visible()
    await expect(card.get_by_test_id("drain")).to_be_hidden()
    status, node = await admin.get(f"/api/v1/nodes/{agent.node_id}")
    assert status == 200
    assert node["draining"] is True and node["drain_reason"] == "replacing a fan"
    await screenshot(p, "admin-node-drained")

    await card.get_by_test_id("undrain").click()
    await expect(card.locator(".badge-drain")).to_be_hidden()
    await expect(card.get_by_test_id("drained-by")).to_be_hidden()
    await expect(card.get_by_test_id("drain")).to_be_visible()
    status, node = await admin.get(f"/api/v1/nodes/{agent.node_id}")
    assert node["draining"] is False and node["drain_reason"] is None
    _, audit = await admin.get("/api/v1/audit", params={"target": agent.node_id})
    assert [e["action"] for e in audit["entries"]] == ["node.drain", "node.undrain"]

    # The node's own page drains it too, and lists what was done to it, newest first.
    await card.locator(".node-link").click()
    await expect(p).to_have_url(f"{sched.url}/#/nodes/{agent.node_id}")
    node_page = p.locator('[data-node="gpu-box-1"]')
    history = node_page.get_by_test_id("history-row")
    await expect(history).to_have_count(2)
    await expect(history.nth(0)).to_contain_text("undrain")
    await expect(history.nth(1)).to_contain_text("replacing a fan")
    # With "requeue", the job running there is stopped and queued again elsewhere.
    status, job = await admin.post("/api/v1/jobs", {"name": "long", "image": "busybox"})
    assert status == 201, job
    assert [a["job_id"] for a in await agent.poll(wait=5)] == [job["id"]]
    await agent.report(job["id"], "running")
    await expect(node_page.get_by_test_id("node-jobs").locator("a")).to_have_text("long")
    await node_page.get_by_test_id("drain").click()
    await node_page.get_by_test_id("drain-reason").fill("kernel update")
    await node_page.get_by_test_id("drain-requeue").check()
    await node_page.get_by_test_id("drain-confirm").click()
    await expect(node_page.get_by_test_id("node-reason")).to_have_text("draining: kernel update")
    await expect(history).to_have_count(3)
    await expect(history.nth(0)).to_contain_text("kernel update")
    await expect(node_page.get_by_test_id("drained-by")).to_contain_text("drained by admin")
    await expect(node_page.get_by_test_id("node-jobs")).to_have_text("none")
    _, requeued = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert requeued["state"] == "queued" and requeued["requeues"] == 1
    await screenshot(p, "admin-node-page")


async def test_the_arrays_view_lists_an_array_and_its_page_cancels_the_rest(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    status, first = await admin.post("/api/v1/jobs", ARRAY)
    assert status == 201, first
    array_id = first["id"]
    agent = await add_agent(agents, sched, http, "worker-1")
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        got += await agent.poll(wait=5)
    await agent.report(got[0]["job_id"], "running")
    await agent.report(got[1]["job_id"], "running")
    await agent.report(got[1]["job_id"], "completed", exit_code=0)

    await login(p, sched)
    # The jobs table's array row leads to the array's own page, as the nav link does.
    array_row = p.locator(f'tr[data-array="{array_id}"]')
    await expect(array_row.get_by_test_id("array-open")).to_be_visible()
    await p.get_by_role("link", name="Arrays", exact=True).click()
    row = p.locator(f'[data-testid="array-row"][data-array="{array_id}"]')
    await expect(row).to_have_count(1)
    await expect(row.locator(".job-name")).to_have_text("render-frames")
    await expect(row.get_by_test_id("array-counts")).to_contain_text("1 running")
    await expect(row.get_by_test_id("array-counts")).to_contain_text("1 completed")
    await screenshot(p, "admin-arrays")

    await row.locator(".job-name").click()
    await expect(p).to_have_url(f"{sched.url}/#/arrays/{array_id}")
    tasks = p.get_by_test_id("array-task")
    await expect(tasks).to_have_count(4)
    await expect(tasks.nth(0).locator(".job-name")).to_have_text("task 0")
    await expect(p.get_by_test_id("array-percent")).to_contain_text("1 / 4")
    await expect(p.get_by_test_id("array-resume")).to_be_disabled()
    await expect(p.get_by_test_id("array-cancel")).to_be_enabled()

    # A task ends on its node: the page follows it without a reload.
    await agent.report(got[0]["job_id"], "completed", exit_code=0)
    await expect(p.get_by_test_id("array-percent")).to_contain_text("2 / 4")

    await p.get_by_test_id("array-cancel").click()
    await expect(p.locator(".toast", has_text="2 tasks cancelled")).to_be_visible()
    await expect(p.locator('[data-testid="array-task"][data-state="cancelled"]')).to_have_count(2)
    await expect(p.get_by_test_id("array-percent")).to_contain_text("4 / 4")
    await expect(p.get_by_test_id("array-cancel")).to_be_disabled()
    status, summary = await admin.get(f"/api/v1/arrays/{array_id}")
    assert summary["counts"]["cancelled"] == 2 and summary["counts"]["completed"] == 2
    await screenshot(p, "admin-array-page")


async def test_a_schedule_is_created_paused_resumed_and_deleted(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    await login(p, sched)
    await p.get_by_role("link", name="Schedules", exact=True).click()
    form = p.get_by_test_id("schedule-form")
    # A bad cron expression is refused, naming the field.
    await form.locator("#schedule-name").fill("nightly-report")
    await form.locator("#schedule-cron").fill("not a cron")
    await form.locator("#schedule-image").fill("busybox")
    await form.locator("#schedule-command").fill("sh -c 'echo report done'")
    await form.get_by_role("button", name="Create schedule").click()
    await expect(p.get_by_test_id("schedule-error")).to_contain_text("cron")

    await form.locator("#schedule-cron").fill("0 3 * * *")
    await form.locator("#schedule-tz").fill("Europe/Berlin")
    await form.get_by_role("button", name="Create schedule").click()
    row = p.locator('[data-testid="schedule-row"][data-schedule="nightly-report"]')
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-paused", "false")
    await expect(row.get_by_test_id("schedule-next")).to_contain_text("in ")
    await expect(row.get_by_test_id("schedule-runs")).to_have_text("none yet")
    status, made = await admin.get("/api/v1/schedules/nightly-report")
    assert status == 200
    assert made["cron"] == "0 3 * * *" and made["timezone"] == "Europe/Berlin"
    assert made["job"]["command"] == ["sh", "-c", "echo report done"]
    assert made["next_run_at"] is not None

    await row.get_by_test_id("pause-schedule").click()
    await expect(row).to_have_attribute("data-paused", "true")
    await expect(row.get_by_test_id("schedule-next")).to_have_text("paused")
    _, paused = await admin.get("/api/v1/schedules/nightly-report")
    assert paused["paused"] is True and paused["next_run_at"] is None

    # Run now starts a job, listed among the runs on the schedule's page.
    await row.get_by_test_id("run-schedule").click()
    await expect(row.get_by_test_id("schedule-runs").locator("a")).to_have_count(1)
    await screenshot(p, "admin-schedules")
    await row.locator(".job-name").click()
    await expect(p.locator(".job-title")).to_have_text("nightly-report")
    await expect(p.get_by_test_id("run-row")).to_have_count(1)
    await expect(p.get_by_test_id("run-row").locator(".pill")).to_have_text("Queued")
    await p.get_by_test_id("pause-schedule").click()  # resume
    await expect(p.get_by_test_id("pause-schedule")).to_have_text("Pause")
    _, resumed = await admin.get("/api/v1/schedules/nightly-report")
    assert resumed["paused"] is False and resumed["next_run_at"] is not None
    await screenshot(p, "admin-schedule-page")

    # Delete asks for a second click.
    delete = p.get_by_test_id("delete-schedule")
    await delete.click()
    await expect(delete).to_have_text("Delete for good")
    await delete.click()
    await expect(p).to_have_url(f"{sched.url}/#/schedules")
    await expect(p.get_by_test_id("schedule-row")).to_have_count(0)
    status, _ = await admin.get("/api/v1/schedules/nightly-report")
    assert status == 404


async def test_a_secret_is_set_listed_and_deleted_and_its_value_never_shown(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    value = "s3cr3t-value-that-must-not-show-4f1c"
    await login(p, sched)
    await p.get_by_role("link", name="Secrets", exact=True).click()
    form = p.get_by_test_id("secret-form")
    await expect(form.locator("#secret-value")).to_have_attribute("type", "password")
    await form.locator("#secret-name").fill("registry-login")
    await form.locator("#secret-value").fill(value)
    await form.locator("#secret-shared").check()
    await form.get_by_role("button", name="Set secret").click()
    row = p.locator('[data-testid="secret-row"][data-secret="registry-login"]')
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("shared: every job")
    await expect(row).to_contain_text("admin")
    await expect(form.locator("#secret-value")).to_have_value("")
    assert value not in await p.content()
    assert value not in await p.evaluate(
        "[...document.querySelectorAll('input')].map((i) => i.value).join(' ')"
    )
    status, listing = await admin.get("/api/v1/secrets")
    assert status == 200
    assert [s["name"] for s in listing["secrets"]] == ["registry-login"]
    assert listing["secrets"][0]["shared"] is True
    await screenshot(p, "admin-secrets")

    delete = row.get_by_test_id("delete-secret")
    await delete.click()
    await delete.click()
    await expect(p.get_by_test_id("secret-row")).to_have_count(0)
    _, listing = await admin.get("/api/v1/secrets")
    assert listing["secrets"] == []
    assert value not in await p.content()


async def test_a_lone_scheduler_lists_itself_as_the_leader(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await login(p, sched)
    await p.get_by_role("link", name="Schedulers", exact=True).click()
    rows = p.get_by_test_id("scheduler-row")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_have_attribute("data-role", "leader")
    await expect(rows.nth(0).locator(".pill")).to_have_text("Leader")
    await expect(rows.nth(0)).to_contain_text(sched.url)


async def test_the_scheduler_list_shows_the_leader_and_a_standby(
    browser: Browser, pair: tuple[SchedulerProcess, SchedulerProcess]
) -> None:
    leader, standby = pair
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        await login(p, leader)
        await p.get_by_role("link", name="Schedulers", exact=True).click()
        rows = p.get_by_test_id("scheduler-row")
        await expect(rows).to_have_count(2)
        await expect(rows.nth(0)).to_have_attribute("data-role", "leader")
        await expect(rows.nth(0)).to_contain_text(leader.url)
        await expect(rows.nth(1)).to_have_attribute("data-role", "standby")
        await expect(rows.nth(1).locator(".pill")).to_have_text("Standby")
        await expect(rows.nth(1)).to_contain_text(standby.url)
        await expect(p.locator(".admin-lead")).to_contain_text("1 standing by")
    finally:
        await screenshot(p, "admin-schedulers")
        await context.close()
    assert not errors, f"the page threw: {errors}"


#: a change sent from the page with its session's CSRF token: the status it got
POST_AS_PAGE = """async ([method, path, body]) => {
  const me = await fetch("/api/v1/session").then((r) => r.json());
  const r = await fetch(path, {
    method,
    body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-CSRF-Token": me.csrf},
  });
  return r.status;
}"""


async def test_a_read_only_login_is_offered_no_changes_and_the_scheduler_refuses_them(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    status, _ = await admin.post(f"/api/v1/nodes/{agent.node_id}/drain", {"reason": "disk check"})
    assert status == 200
    status, first = await admin.post("/api/v1/jobs", ARRAY)
    assert status == 201
    spec = {"name": "hourly", "cron": "0 * * * *", "job": {"image": "busybox"}}
    status, _ = await admin.post("/api/v1/schedules", spec)
    assert status == 201
    status, _ = await admin.post("/api/v1/secrets", {"name": "db-password", "value": "x"})
    assert status == 201
    token = await _token(admin, "read", "ops-viewer")

    await login(p, sched, token)
    await expect(p.locator(".role")).to_have_text("read")
    card = p.locator('[data-testid="node-card"][data-node="worker-1"]')
    # The reason shows; no drain control, nor who drained it (the audit log is admin's).
    await expect(card.locator(".node-reason")).to_have_text("draining: disk check")
    await expect(card.get_by_test_id("undrain")).to_be_hidden()
    await expect(card.get_by_test_id("drain")).to_be_hidden()
    await expect(card.get_by_test_id("drained-by")).to_be_hidden()

    await p.get_by_role("link", name="Schedules", exact=True).click()
    await expect(p.get_by_test_id("schedule-row")).to_have_count(1)
    await expect(p.get_by_test_id("schedule-form")).to_have_count(0)
    await expect(p.get_by_test_id("pause-schedule")).to_be_hidden()
    await expect(p.get_by_test_id("delete-schedule")).to_be_hidden()

    await p.get_by_role("link", name="Secrets", exact=True).click()
    await expect(p.get_by_test_id("secret-row")).to_have_count(1)
    await expect(p.get_by_test_id("secret-form")).to_have_count(0)
    await expect(p.get_by_test_id("delete-secret")).to_be_hidden()

    await p.goto(f"{sched.url}/#/arrays/{first['id']}")
    await expect(p.get_by_test_id("array-task")).to_have_count(4)
    await expect(p.get_by_test_id("array-cancel")).to_be_hidden()
    await screenshot(p, "admin-read-only")

    # What the page does not offer, the scheduler refuses when sent anyway.
    drain = ["POST", f"/api/v1/nodes/{agent.node_id}/drain", {"drain": False}]
    assert await p.evaluate(POST_AS_PAGE, drain) == 403
    secret = ["POST", "/api/v1/secrets", {"name": "mine", "value": "v"}]
    assert await p.evaluate(POST_AS_PAGE, secret) == 403
    schedule = ["POST", "/api/v1/schedules", {**spec, "name": "other"}]
    assert await p.evaluate(POST_AS_PAGE, schedule) == 403
    cancel = ["POST", f"/api/v1/arrays/{first['id']}/cancel", {}]
    assert await p.evaluate(POST_AS_PAGE, cancel) == 403
    _, node = await admin.get(f"/api/v1/nodes/{agent.node_id}")
    assert node["draining"] is True
    _, listing = await admin.get("/api/v1/secrets")
    assert [s["name"] for s in listing["secrets"]] == ["db-password"]


async def test_a_submit_login_changes_its_own_secrets_and_not_shared_ones(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    status, _ = await admin.post(
        "/api/v1/secrets", {"name": "shared-key", "value": "x", "shared": True}
    )
    assert status == 201
    await login(p, sched, await _token(admin, "submit", "alice"))
    await p.get_by_role("link", name="Secrets", exact=True).click()
    form = p.get_by_test_id("secret-form")
    # Only an admin makes a shared secret: alice is not offered it.
    await expect(form.locator("#secret-shared")).to_have_count(0)
    await form.locator("#secret-name").fill("alice-token")
    await form.locator("#secret-value").fill("alice-value-9d2e")
    await form.get_by_role("button", name="Set secret").click()
    mine = p.locator('[data-secret="alice-token"]')
    shared = p.locator('[data-secret="shared-key"]')
    await expect(mine).to_contain_text("alice's jobs")
    await expect(shared).to_contain_text("shared: every job")
    await expect(mine.get_by_test_id("delete-secret")).to_be_visible()
    await expect(shared.get_by_test_id("delete-secret")).to_be_hidden()
    make_shared = ["POST", "/api/v1/secrets", {"name": "x", "value": "v", "shared": True}]
    assert await p.evaluate(POST_AS_PAGE, make_shared) == 403
    await mine.get_by_test_id("delete-secret").click()
    await mine.get_by_test_id("delete-secret").click()
    await expect(mine).to_have_count(0)
    _, listing = await admin.get("/api/v1/secrets")
    assert [s["name"] for s in listing["secrets"]] == ["shared-key"]
