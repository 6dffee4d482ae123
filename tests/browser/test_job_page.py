"""The job page: state, live progress and live log lines, Cancel and Retry, attempts,
and a browser notification when a watched job ends."""

from __future__ import annotations

import re

import aiohttp
from playwright.async_api import Page, expect

from tests.browser.conftest import (
    Heartbeats,
    PageErrors,
    add_agent,
    append_log,
    login,
    running_job,
    screenshot,
)
from tests.support import Api, SchedulerProcess

SPEC = {
    "name": "index-build",
    "image": "busybox",
    "command": ["sh", "-c", "make index"],
    "resources": {"cpu": 1, "memory_mb": 256},
}

#: records the notifications the page shows, with permission already granted
NOTIFICATION_STUB = """
window.__notes = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__notes.push({title, body: options && options.body}); }
  close() {}
};
"""


async def open_job(p: Page, sched: SchedulerProcess, job_id: str) -> None:
    await login(p, sched)
    await p.click(f'tr[data-job="{job_id}"] a.job-name')
    await expect(p.get_by_test_id("job-page")).to_be_visible()


async def test_progress_and_log_lines_arrive_live(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC)
    offset = await append_log(agent, job_id, 0, "starting the build\nreading 1,204 files\n")
    await open_job(p, sched, job_id)
    await expect(p.locator(".job-title")).to_have_text("index-build")
    await expect(p.locator(".job-title-row .pill")).to_have_text("Running")
    log = p.get_by_test_id("log")
    await expect(log.locator(".ll")).to_have_count(2)
    await expect(log.locator(".ll").first).to_contain_text("starting the build")
    await expect(p.locator(".log-status")).to_have_text("live")

    # A line may come in pieces: it is shown once it is complete.
    offset = await append_log(agent, job_id, offset, "WARNING: cache is cold\nERROR: shard 3 ")
    offset = await append_log(agent, job_id, offset, "unreadable, skipping\n::progress::40 half\n")
    await agent.report(job_id, None, progress={"percent": 40, "message": "indexing shard 4"})
    await expect(log.locator(".ll")).to_have_count(5)
    await expect(log.locator(".ll-warning")).to_have_text("3WARNING: cache is cold")
    await expect(log.locator(".ll-error")).to_have_text("4ERROR: shard 3 unreadable, skipping")
    await expect(log.locator(".ll-progress")).to_have_count(1)
    await expect(p.get_by_test_id("progress-percent")).to_have_text("40%")
    await expect(p.locator(".progress-msg")).to_have_text("indexing shard 4")

    lines = "".join(f"indexed file {i}\n" for i in range(200)) + "index built successfully\n"
    offset = await append_log(agent, job_id, offset, lines)
    await expect(log.locator(".ll")).to_have_count(206)
    await expect(log.locator(".ll-success")).to_have_text("206index built successfully")
    # The view follows the end while the user has not scrolled up.
    at_end = "(s) => s.scrollHeight - s.scrollTop - s.clientHeight < 24"
    assert await p.locator(".log-scroll").evaluate(at_end)

    await p.locator(".log-scroll").evaluate("(s) => { s.scrollTop = 0; }")
    await append_log(agent, job_id, offset, "one more line\n")
    await expect(p.get_by_test_id("log-jump")).to_have_text("1 new line")
    assert not await p.locator(".log-scroll").evaluate(at_end)
    await p.get_by_test_id("log-jump").click()
    assert await p.locator(".log-scroll").evaluate(at_end)
    await screenshot(p, "job-page-running")

    await agent.report(job_id, "completed", exit_code=0)
    await expect(p.locator(".job-title-row .pill")).to_have_text("Completed")
    await expect(p.locator(".log-status")).to_have_text("ended · exit 0")
    await expect(p.get_by_test_id("progress-percent")).to_have_text("100%")
    await expect(p.get_by_test_id("cancel-job")).to_be_hidden()


async def test_cancel_from_the_job_page_then_retry_starts_a_new_attempt(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC, max_retries=2)
    await append_log(agent, job_id, 0, "attempt one says hello\n")
    await open_job(p, sched, job_id)
    await expect(p.get_by_test_id("log").locator(".ll")).to_have_count(1)

    await p.get_by_test_id("cancel-job").click()
    await expect(p.locator(".job-title-row .pill")).to_have_text("Cancelled")
    status, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert status == 200 and job["state"] == "cancelled"
    # The agent stops the attempt; its next heartbeat no longer lists it.
    agent.running.pop(job_id)

    await p.get_by_test_id("retry-job").click()
    await expect(p.locator(".job-title-row .pill")).to_have_text(re.compile("Queued|Assigned"))
    await expect(p.locator("select.select")).to_have_value("2")
    await expect(p.get_by_test_id("attempts").locator("tbody tr")).to_have_count(2)
    await agent.poll()
    await agent.report(job_id, "running")
    await append_log(agent, job_id, 0, "attempt two is here\n")
    await expect(p.get_by_test_id("log").locator(".ll")).to_have_text(["1attempt two is here"])
    await expect(p.locator(".job-title-row .pill")).to_have_text("Running")

    # The earlier attempt's log stays readable.
    await p.locator("select.select").select_option("1")
    await expect(p.get_by_test_id("log").locator(".ll")).to_have_text(["1attempt one says hello"])
    await expect(p.locator(".log-status")).to_have_text("ended")


async def test_a_watched_job_notifies_when_it_ends(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    await p.add_init_script(NOTIFICATION_STUB)
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC)
    await open_job(p, sched, job_id)
    await p.get_by_test_id("watch").click()
    await expect(p.get_by_test_id("watch")).to_have_text("Watching")
    # Back on the overview, the notification still comes.
    await p.click("a.back")
    await expect(p.get_by_test_id("jobs-table")).to_be_visible()
    await agent.report(job_id, "failed", exit_code=3, error="exited with code 3")
    await expect(p.locator(f'tr[data-job="{job_id}"] .pill')).to_have_text("Failed")
    notes = await p.evaluate("window.__notes")
    assert len(notes) == 1
    assert notes[0]["title"] == "index-build: failed"
    assert job_id in notes[0]["body"] and "exit code 3" in notes[0]["body"]


async def test_an_unknown_job_says_so(
    page: tuple[Page, PageErrors], sched: SchedulerProcess
) -> None:
    p, _ = page
    await login(p, sched)
    await p.goto(sched.url + "/#/jobs/0000000000dead")
    await expect(p.locator(".empty-page")).to_contain_text("No such job.")


async def test_why_a_queued_job_waits_changes_live(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    status, job = await admin.post(
        "/api/v1/jobs", {**SPEC, "constraints": {"labels": {"pool": "gpu"}}}
    )
    assert status == 201, job
    await open_job(p, sched, job["id"])
    reason = p.get_by_test_id("job-reason")
    await expect(reason).to_contain_text("no node is taking jobs")
    # A node comes that does not carry the label: the job.pending event says so.
    await add_agent(agents, sched, http, "worker-1")
    await expect(reason).to_have_text("0/1 nodes are available: 1 does not match the constraints")
    await expect(p.locator(".job-title-row .pill")).to_have_text("Queued")


async def test_a_queued_job_that_fits_nowhere_shows_its_nodes_counted_by_cause(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    # No node could ever take it (so it gets no reservation): the counts say why.
    full = await add_agent(agents, sched, http, "full", max_parallel=1, memory_mb=1024)
    await running_job(admin, full, SPEC)
    await add_agent(agents, sched, http, "small-1", memory_mb=1024)
    await add_agent(agents, sched, http, "small-2", memory_mb=1024)
    status, job = await admin.post(
        "/api/v1/jobs", {**SPEC, "resources": {"cpu": 1, "memory_mb": 2048}}
    )
    assert status == 201, job
    await open_job(p, sched, job["id"])
    await expect(p.get_by_test_id("job-reason")).to_have_text(
        "0/3 nodes are available: 2 lack memory (needs 2048 MiB), 1 at its parallel limit"
    )
    counts = p.get_by_test_id("job-pending")
    await expect(counts).to_be_visible()
    await expect(counts.locator("tbody tr")).to_have_count(2)
    await expect(counts.locator('tr[data-cause="memory"]')).to_have_text("2lack memory")
    await expect(counts.locator('tr[data-cause="parallel_limit"]')).to_have_text(
        "1at their parallel limit"
    )
    await screenshot(p, "job-page-queued-counts")
    # Once it leaves the queue the counts go.
    status, body = await admin.post(f"/api/v1/jobs/{job['id']}/cancel", {})
    assert status == 200, body
    await expect(p.locator(".job-title-row .pill")).to_have_text("Cancelled")
    await expect(counts).to_be_hidden()


async def test_the_queue_rules_of_a_job_are_shown(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, errors = page
    _, first = await admin.post("/api/v1/jobs", SPEC)
    _, job = await admin.post(
        "/api/v1/jobs",
        {
            **SPEC,
            "name": "after-first",
            "labels": {"berth.schedule": "nightly"},
            "max_requeues": 5,
            "queue_timeout_s": 600,
            "deadline": "2031-01-02T03:04:05Z",
            "preemptible": True,
            "no_retry_on_exit_codes": [2, 3],
            "depends_on": [{"job": first["id"], "when": "ended"}],
        },
    )
    await open_job(p, sched, job["id"])
    details = p.locator(".detail")
    await expect(details.filter(has_text="Requeues")).to_contain_text("0 of up to 5")
    await expect(details.filter(has_text="Queue timeout")).to_be_visible()
    await expect(details.filter(has_text="Deadline")).to_contain_text("2031")
    await expect(details.filter(has_text="Preemptible")).to_contain_text("yes")
    await expect(details.filter(has_text="Never retried on")).to_contain_text("2, 3")
    await expect(details.filter(has_text="After")).to_contain_text(f"{first['id']} (ended)")
    await expect(details.filter(has_text="Schedule")).to_contain_text("a run of nightly")
    await screenshot(p, "job-queue-rules")
    assert errors == []


async def test_how_a_jobs_image_is_pulled_is_shown_by_the_secrets_name_only(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, errors = page
    value = '{"registry": "registry.example.com", "username": "ci", "password": "pw-0c3e9a"}'
    status, made = await admin.post("/api/v1/secrets", {"name": "regcred", "value": value})
    assert status == 201, made
    pulled = {**SPEC, "image_pull_secret": "regcred", "pull_policy": "always"}
    _, job = await admin.post("/api/v1/jobs", pulled)
    await open_job(p, sched, job["id"])
    spec = p.locator(".spec")
    await expect(spec).to_contain_text("Image pull")
    await expect(spec).to_contain_text("always, with secret regcred")
    assert "pw-0c3e9a" not in await p.content()
    assert errors == []


async def test_a_queued_job_shows_the_node_reserved_for_it_and_when_it_should_start(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    whole = {"cpu": 2, "memory_mb": 256}
    worker = await add_agent(agents, sched, http, "worker-1", cpu=2)
    await running_job(admin, worker, SPEC, resources=whole, expected_runtime_s=600)
    # The big job waits on another first, so that its reservation comes live.
    _, first = await admin.post("/api/v1/jobs", {**SPEC, "constraints": {"labels": {"x": "y"}}})
    status, job = await admin.post(
        "/api/v1/jobs",
        {
            **SPEC,
            "name": "big",
            "resources": whole,
            "expected_runtime_s": 900,
            "depends_on": [{"job": first["id"], "when": "ended"}],
        },
    )
    assert status == 201, job
    await open_job(p, sched, job["id"])
    reason = p.get_by_test_id("job-reason")
    await expect(reason).to_contain_text("waiting_on")
    reserved = p.get_by_test_id("job-reservation")
    await expect(reserved).to_be_hidden()
    status, body = await admin.post(f"/api/v1/jobs/{first['id']}/cancel", {})
    assert status == 200, body

    await expect(reason).to_contain_text("reserved: node worker-1")
    await expect(reserved.locator(".detail").filter(has_text="Node")).to_have_text("Nodeworker-1")
    # Its estimated start: when the running job's 600 s estimate ends.
    await expect(reserved.locator(".detail").filter(has_text="Estimated start")).to_contain_text(
        re.compile(r"\d{4}, .*\(in (9|10) min\)")
    )
    details = p.locator(".job-side .detail")
    await expect(details.filter(has_text="Expected runtime")).to_contain_text("15 min 00 s")
    await screenshot(p, "job-page-reservation")
    # Once it leaves the queue the reservation goes.
    status, body = await admin.post(f"/api/v1/jobs/{job['id']}/cancel", {})
    assert status == 200, body
    await expect(p.locator(".job-title-row .pill")).to_have_text("Cancelled")
    await expect(reserved).to_be_hidden()
