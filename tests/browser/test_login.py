"""Logging in and out of the dashboard: the token becomes an HttpOnly session cookie,
the page never holds the token, and changes made with the cookie need the CSRF header."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.browser.conftest import PageErrors, login, screenshot
from tests.support import SchedulerProcess

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.5, "memory_mb": 64}}


async def test_a_wrong_token_is_refused_and_the_admin_token_logs_in(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await p.goto(sched.url + "/")
    await expect(p).to_have_title("Log in · Berth")
    await p.fill("#token", "not-a-token")
    await p.click("button[type=submit]")
    await expect(p.locator(".form-error")).to_have_text("That token is not valid here.")

    await p.fill("#token", sched.admin_token)
    await p.click("button[type=submit]")
    await expect(p.get_by_test_id("connection")).to_have_text("Live")
    await expect(p.locator(".user-name")).to_have_text("admin")
    await expect(p.get_by_test_id("stat-running")).to_contain_text("0")
    # The session cookie is HttpOnly: scripts cannot read it, and the page keeps no token.
    assert "berth_session" not in await p.evaluate("document.cookie")
    storage = await p.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
    assert sched.admin_token not in storage


async def test_a_reload_keeps_the_session_and_log_out_ends_it(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await login(p, sched)
    await p.reload()
    await expect(p.get_by_test_id("connection")).to_have_text("Live")
    await expect(p.locator("#logout")).to_be_visible()

    await p.click("#logout")
    await expect(p.locator("#token")).to_be_visible()
    status = await p.evaluate("fetch('/api/v1/jobs').then((r) => r.status)")
    assert status == 401
    await p.reload()
    await expect(p.locator("#token")).to_be_visible()


#: a job submitted from the page with the session cookie and, maybe, a CSRF header
POST_JOB = """([spec, csrf]) => fetch("/api/v1/jobs", {
  method: "POST",
  body: JSON.stringify(spec),
  headers: csrf === null
    ? {"Content-Type": "application/json"}
    : {"Content-Type": "application/json", "X-CSRF-Token": csrf},
}).then((r) => r.status)"""


async def test_a_change_without_the_csrf_header_is_refused(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await login(p, sched)
    assert await p.evaluate(POST_JOB, [SPEC, None]) == 403
    assert await p.evaluate(POST_JOB, [SPEC, "forged"]) == 403
    await expect(p.get_by_test_id("stat-queued").locator(".stat-value")).to_have_text("0")
    # The page recovers its CSRF token from the session, and with it the change is made.
    csrf = await p.evaluate("fetch('/api/v1/session').then((r) => r.json()).then((me) => me.csrf)")
    assert await p.evaluate(POST_JOB, [SPEC, csrf]) == 201
    await expect(p.get_by_test_id("stat-queued").locator(".stat-value")).to_have_text("1")


async def test_the_indicator_shows_reconnecting_and_a_restart_asks_to_log_in_again(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await login(p, sched)
    sched.kill()
    await expect(p.get_by_test_id("connection")).to_have_text("Reconnecting…")
    await screenshot(p, "reconnecting")
    # Sessions live in the scheduler's memory: after a restart the browser logs in again.
    sched.start()
    await expect(p.locator("#token")).to_be_visible()
    await expect(p.locator(".form-error")).to_contain_text("Log in again")
    await p.fill("#token", sched.admin_token)
    await p.click("button[type=submit]")
    await expect(p.get_by_test_id("connection")).to_have_text("Live")


async def test_a_file_of_the_page_that_does_not_arrive_is_said_and_a_reload_recovers(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    lost = "**/ui/js/views/job.js"
    await p.route(lost, lambda route: route.abort("connectionreset"))
    await p.goto(sched.url + "/")
    alert = p.get_by_role("alert")
    await expect(alert).to_contain_text("The dashboard could not be loaded")
    await screenshot(p, "boot-file-lost")
    await p.unroute(lost)
    await alert.get_by_role("button", name="Load again").click()
    await expect(p).to_have_title("Log in · Berth")
