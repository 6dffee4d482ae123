"""What the dashboard does to jobs besides cancel and retry: the submit form drawn from
the OpenAPI schema (its own checks and the scheduler's errors on their fields), run
again with changes, pause and resume (one job and in bulk), output downloads through
the session, the dependency graph, the log's progress-line toggle, and what a read
login is not offered (and is refused when it tries anyway)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import (
    Heartbeats,
    PageErrors,
    add_agent,
    append_log,
    login,
    running_job,
    screenshot,
    submit_job,
)
from tests.support import Api, SchedulerProcess

#: a job's row in the job table, and its box in the dependency graph
ROW = 'tr[data-job="{}"]'
NODE = 'a[data-job="{}"]'
SPEC = {
    "name": "etl-nightly",
    "image": "busybox",
    "command": ["sh", "-c", "run-etl"],
    "resources": {"cpu": 1, "memory_mb": 256},
}


async def job_state(admin: Api, job_id: str) -> str:
    status, job = await admin.get(f"/api/v1/jobs/{job_id}")
    assert status == 200, job
    state: str = job["state"]
    return state


async def open_job(p: Page, sched: SchedulerProcess, job_id: str) -> None:
    await p.goto(f"{sched.url}/#/jobs/{job_id}")
    await expect(p.get_by_test_id("job-page")).to_be_visible()
    await expect(p.locator(".job-page .mono").first).to_have_text(job_id)


def field(p: Page, path: str) -> Locator:
    """The form's field for a JSON path (its input, hint and error)."""
    return p.locator(f'[data-field="{path}"]')


async def test_submit_form_checks_the_schema_and_shows_the_schedulers_errors(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    await login(p, sched)
    await p.get_by_test_id("new-job").click()
    form = p.get_by_test_id("submit-form")
    await expect(form).to_be_visible()
    # Drawn from the schema: image is required, priority's bounds and network's choices.
    await expect(field(p, "$.image").locator(".required")).to_have_count(1)
    await expect(field(p, "$.priority").locator(".field-hint")).to_contain_text("integer, 0 to 100")
    await expect(field(p, "$.depends_on").locator(".field-desc")).to_have_text(
        re.compile("^jobs that must end before this one may start")
    )
    await expect(field(p, "$.network").locator("option")).to_have_text(
        ["(default: none)", "bridge", "host", "none"]
    )

    await p.fill('[name="$.name"]', "from-the-form")
    await p.fill('[name="$.image"]', "busybox:1.36")
    await p.fill('[name="$.command"]', "echo\nhello world")
    await p.fill('[name="$.resources.cpu"]', "0.5")
    await p.fill('[name="$.env"]', "GREETING=hi there\nMODE=fast")
    await p.fill('[name="$.priority"]', "500")
    await p.fill('[name="$.depends_on"]', "no-such-job")
    await p.get_by_test_id("submit-job").click()
    # The schema's bound, checked in the page: nothing is sent.
    await expect(field(p, "$.priority").locator(".field-error")).to_have_text("must be at most 100")
    await p.evaluate("window.scrollTo(0, 0)")
    await screenshot(p, "submit_form")
    status, listing = await admin.get("/api/v1/jobs")
    assert status == 200 and listing["jobs"] == []

    # What only the scheduler knows comes back as a 400 naming $.depends_on[0].
    await p.fill('[name="$.priority"]', "70")
    await expect(field(p, "$.priority").locator(".field-error")).to_be_hidden()
    await p.get_by_test_id("submit-job").click()
    error = field(p, "$.depends_on").locator(".field-error")
    await expect(error).to_contain_text("names no job 'no-such-job'")
    status, listing = await admin.get("/api/v1/jobs")
    assert listing["jobs"] == []

    # The JSON editor shows what the form holds, and what is changed there comes back.
    await p.fill('[name="$.depends_on"]', "")
    await p.get_by_test_id("json-toggle").check()
    text = p.get_by_test_id("spec-json")
    await expect(text).to_have_value(re.compile(re.escape('"image": "busybox:1.36"')))
    value = (await text.input_value()).replace('"from-the-form"', '"edited-as-json"')
    await text.fill(value)
    await p.get_by_test_id("json-toggle").uncheck()
    await expect(p.locator('[name="$.name"]')).to_have_value("edited-as-json")

    await p.get_by_test_id("submit-job").click()
    await expect(p.get_by_test_id("job-page")).to_be_visible()
    await expect(p.locator(".job-title")).to_have_text("edited-as-json")
    status, listing = await admin.get("/api/v1/jobs")
    [job] = listing["jobs"]
    spec = job["spec"]
    assert spec["image"] == "busybox:1.36"
    assert spec["command"] == ["echo", "hello world"]
    assert spec["resources"]["cpu"] == 0.5
    assert spec["env"] == {"GREETING": "hi there", "MODE": "fast"}
    assert spec["priority"] == 70
    assert spec["depends_on"] == []


async def test_run_again_opens_the_form_with_the_jobs_spec(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    first = await submit_job(
        admin,
        SPEC,
        env={"SHARD": "7"},
        labels={"team": "data"},
        priority=80,
        timeout_s=120,
        command="run-etl --full",
    )
    await login(p, sched)
    await open_job(p, sched, first)
    await p.get_by_test_id("run-again").click()
    await expect(p.get_by_test_id("submit-form")).to_be_visible()
    await expect(p.locator('[name="$.image"]')).to_have_value("busybox")
    await expect(p.locator('[name="$.name"]')).to_have_value("etl-nightly")
    await expect(p.locator('[name="$.command"]')).to_have_value("run-etl --full")
    await expect(p.locator('[name="$.env"]')).to_have_value("SHARD=7")
    await expect(p.locator('[name="$.labels"]')).to_have_value("team=data")
    await expect(p.locator('[name="$.priority"]')).to_have_value("80")
    await expect(p.locator('[name="$.timeout_s"]')).to_have_value("120")

    await p.fill('[name="$.name"]', "etl-rerun")
    await p.fill('[name="$.priority"]', "90")
    await p.get_by_test_id("submit-job").click()
    await expect(p.locator(".job-title")).to_have_text("etl-rerun")
    _, listing = await admin.get("/api/v1/jobs")
    again = next(j for j in listing["jobs"] if j["id"] != first)
    assert again["spec"]["priority"] == 90
    assert again["spec"]["command"] == "run-etl --full"
    assert again["spec"]["env"] == {"SHARD": "7"}
    assert again["spec"]["labels"] == {"team": "data"}
    assert again["spec"]["timeout_s"] == 120


async def test_pause_and_resume_from_the_job_page_and_in_bulk(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    one, two, three = [await running_job(admin, agent, SPEC, name=f"job-{i}") for i in range(3)]
    await login(p, sched)
    await open_job(p, sched, one)
    pill = p.locator(".job-title-row .pill")
    await expect(pill).to_have_text("Running")
    await expect(p.get_by_test_id("resume-job")).to_be_hidden()
    await p.get_by_test_id("pause-job").click()
    await expect(pill).to_have_text("Paused")
    assert await job_state(admin, one) == "paused"
    await expect(p.get_by_test_id("pause-job")).to_be_hidden()
    await p.get_by_test_id("resume-job").click()
    await expect(pill).to_have_text("Running")
    assert await job_state(admin, one) == "running"

    await p.goto(sched.url + "/#/")
    for job_id in (two, three):
        await p.locator(f'tr[data-job="{job_id}"] input[type=checkbox]').check()
    await p.get_by_test_id("pause-selected").click()
    for job_id in (two, three):
        await expect(p.locator(ROW.format(job_id))).to_have_attribute("data-state", "paused")
    assert [await job_state(admin, j) for j in (one, two, three)] == ["running", "paused", "paused"]
    for job_id in (two, three):
        await p.locator(f'tr[data-job="{job_id}"] input[type=checkbox]').check()
    await p.get_by_test_id("resume-selected").click()
    for job_id in (two, three):
        await expect(p.locator(ROW.format(job_id))).to_have_attribute("data-state", "running")
    assert [await job_state(admin, j) for j in (two, three)] == ["running", "running"]


async def test_outputs_download_through_the_session(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC)
    archive = b"\x1f\x8b outputs of the job " + os.urandom(64)
    status, body = await agent.api.post("/api/v1/blobs", data=archive)
    assert status == 201, body
    status, body = await agent.report(job_id, "completed", exit_code=0, outputs=body["digest"])
    assert status == 200, body

    await login(p, sched)
    await open_job(p, sched, job_id)
    link = p.get_by_test_id("job-files").locator('a[data-file="outputs"]')
    await expect(link).to_have_attribute("download", f"{job_id}-outputs.tar.gz")
    async with p.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == f"{job_id}-outputs.tar.gz"
    path = await download.path()
    assert await asyncio.to_thread(Path(path).read_bytes) == archive
    # The log of each attempt is offered beside it.
    await expect(p.get_by_test_id("job-files").locator('a[data-file="log-1"]')).to_be_visible()


async def test_the_dependency_graph_of_a_three_job_chain(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    first = await running_job(admin, agent, SPEC, name="extract")
    second = await submit_job(admin, SPEC, name="transform", depends_on=[first])
    third = await submit_job(
        admin, SPEC, name="load", depends_on=[{"job": second, "when": "ended"}]
    )
    status, body = await agent.report(first, "completed", exit_code=0)
    assert status == 200, body

    await login(p, sched)
    await open_job(p, sched, second)
    graph = p.get_by_test_id("dep-graph")
    await expect(graph).to_be_visible()
    nodes = graph.locator("a.dg-node")
    await expect(nodes).to_have_count(3)
    # One layer per step of the chain, the page's own job marked, each coloured by state.
    for job_id, layer in ((first, "0"), (second, "1"), (third, "2")):
        await expect(graph.locator(NODE.format(job_id))).to_have_attribute("data-layer", layer)
    await expect(graph.locator(NODE.format(first))).to_have_attribute("data-state", "completed")
    await expect(graph.locator(NODE.format(first))).to_have_class("dg-node dg-state-completed")
    await expect(graph.locator("a.dg-current")).to_have_attribute("data-job", second)
    await expect(graph.locator("path.dg-edge")).to_have_count(2)
    # The colour is the state's: a completed box is drawn in another colour than a queued one.
    strokes = await graph.locator("a.dg-node rect").evaluate_all(
        "rects => rects.map(r => [r.parentNode.dataset.state, getComputedStyle(r).stroke])"
    )
    by_state = dict(strokes)
    assert by_state["completed"] != by_state[await job_state(admin, third)], strokes
    for job_id in (second, third):
        state = await job_state(admin, job_id)
        await expect(graph.locator(NODE.format(job_id))).to_have_attribute("data-state", state)
    await screenshot(p, "job_page_dependency_graph")

    await graph.locator(NODE.format(third)).click()
    await expect(p.locator(".job-title")).to_have_text("load")
    await expect(p.get_by_test_id("dep-graph").locator("a.dg-current")).to_have_attribute(
        "data-job", third
    )


async def test_progress_lines_can_be_hidden_and_shown(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC)
    await append_log(
        agent, job_id, 0, "reading rows\n::progress::50 half way\nwriting rows\n::progress::90\n"
    )
    await login(p, sched)
    await open_job(p, sched, job_id)
    log = p.get_by_test_id("log")
    await expect(log.locator(".ll")).to_have_count(4)
    progress = log.locator(".ll-progress")
    await expect(progress).to_have_count(2)
    await expect(progress.first).to_be_visible()
    await p.get_by_test_id("show-progress").uncheck()
    await expect(progress.first).to_be_hidden()
    await expect(progress.last).to_be_hidden()
    await expect(log.locator(".ll-info")).to_have_count(2)
    await expect(log.locator(".ll-info").first).to_be_visible()
    await p.get_by_test_id("show-progress").check()
    await expect(progress.last).to_be_visible()


async def test_a_read_login_is_offered_no_changes_and_is_refused_them(
    page: tuple[Page, PageErrors],
    sched: SchedulerProcess,
    admin: Api,
    http: aiohttp.ClientSession,
    agents: list[Heartbeats],
) -> None:
    p, _ = page
    agent = await add_agent(agents, sched, http, "worker-1")
    job_id = await running_job(admin, agent, SPEC)
    status, token = await admin.post("/api/v1/tokens", {"name": "viewer", "role": "read"})
    assert status == 201, token

    await p.goto(sched.url + "/")
    await p.fill("#token", token["token"])
    await p.click("button[type=submit]")
    await expect(p.get_by_test_id("connection")).to_have_text("Live")
    await expect(p.locator(ROW.format(job_id))).to_be_visible()
    for test_id in (
        "new-job",
        "pause-selected",
        "resume-selected",
        "cancel-selected",
        "retry-selected",
    ):
        await expect(p.get_by_test_id(test_id)).to_be_hidden()

    await open_job(p, sched, job_id)
    await expect(p.locator(".job-title-row .pill")).to_have_text("Running")
    for test_id in ("pause-job", "resume-job", "cancel-job", "retry-job", "run-again"):
        await expect(p.get_by_test_id(test_id)).to_be_hidden()
    await p.goto(sched.url + f"/#/submit?from={job_id}")
    await expect(p.get_by_test_id("submit-refused")).to_contain_text("(read) may not submit")
    await expect(p.get_by_test_id("submit-form")).to_have_count(0)

    # Asked directly with the session's cookie and CSRF token, the scheduler refuses.
    answers = await p.evaluate(
        """async (jobId) => {
          const me = await (await fetch("/api/v1/session")).json();
          const headers = {"X-CSRF-Token": me.csrf, "Content-Type": "application/json"};
          const pause = await fetch(`/api/v1/jobs/${jobId}/pause`, {method: "POST", headers});
          const many = await fetch("/api/v1/jobs/pause", {
            method: "POST", headers, body: JSON.stringify({ids: [jobId]}),
          });
          const submit = await fetch("/api/v1/jobs", {
            method: "POST", headers, body: JSON.stringify({image: "busybox"}),
          });
          return [me.role, pause.status, many.status, submit.status];
        }""",
        job_id,
    )
    assert answers == ["read", 403, 403, 403]
    assert await job_state(admin, job_id) == "running"
    status, listing = await admin.get("/api/v1/jobs")
    assert [j["id"] for j in listing["jobs"]] == [job_id]


#: specs the scheduler refuses, each for one field, and one it takes
CHECKED_SPECS: list[dict[str, object]] = [
    {"image": ""},
    {"image": "two words"},
    {"image": "x", "resources": {"cpu": 0}},
    {"image": "x", "resources": {"memory_mb": 1.5}},
    {"image": "x", "priority": 101},
    {"image": "x", "network": "wifi"},
    {"image": "x", "bogus": 1},
    {"image": "x", "env": {"1BAD": "v"}},
    {"image": "x", "labels": {"k": "v" * 300}},
    {"image": "x", "command": [1]},
    {"image": "x", "depends_on": [{"job": "a", "when": "never"}]},
    {"image": "x", "timeout_s": 0},
    {"image": "x", "array": {"count": 0}},
    {"name": "no image"},
    {"image": "x", "command": ["echo", "hi"], "priority": 0, "env": {"A": "1"}, "max_retries": 2},
]


async def test_the_pages_checks_agree_with_the_scheduler(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    """The form's checks come from the schema alone: for each spec, the page and the
    scheduler agree whether it is refused and on the field at fault."""
    p, _ = page
    await login(p, sched)
    page_says = await p.evaluate(
        """async (specs) => {
          const schema = await import("/ui/js/jobschema.js");
          const components = await schema.loadComponents();
          return specs.map((spec) =>
            schema.validate(components, components.JobSpec, spec).map((e) => e.path));
        }""",
        CHECKED_SPECS,
    )
    for spec, paths in zip(CHECKED_SPECS, page_says, strict=True):
        status, body = await admin.post("/api/v1/jobs", spec)
        if status == 201:
            assert paths == [], (spec, paths)
            continue
        assert status == 400, (spec, body)
        field_at_fault = body["error"]["details"]["field"]
        assert paths, (spec, field_at_fault)
        assert top_field(paths[0]) == top_field(field_at_fault), (spec, paths, field_at_fault)


def top_field(path: str) -> str:
    """$.resources.cpu -> resources; $.depends_on[0] -> depends_on"""
    return re.split(r"[.\[]", path.removeprefix("$."), maxsplit=1)[0]


async def test_run_again_of_an_array_task_submits_a_new_array(
    page: tuple[Page, PageErrors], sched: SchedulerProcess, admin: Api
) -> None:
    p, _ = page
    array = {"count": 2, "max_concurrent": 1}
    status, first = await admin.post("/api/v1/jobs", {**SPEC, "array": array})
    assert status == 201, first
    await login(p, sched)
    await open_job(p, sched, first["id"])
    await p.get_by_test_id("run-again").click()
    # The array's own concurrency group is not carried over: the new array gets its own.
    await expect(p.locator('[name="$.array.count"]')).to_have_value("2")
    await expect(p.locator('[name="$.array.max_concurrent"]')).to_have_value("1")
    await expect(p.locator('[name="$.group"]')).to_have_value("")
    await p.get_by_test_id("submit-job").click()
    await expect(p.locator(".job-title")).to_have_text("etl-nightly")
    _, listing = await admin.get("/api/v1/jobs")
    arrays = {j["array_id"] for j in listing["jobs"]}
    assert len(listing["jobs"]) == 4 and len(arrays) == 2, listing["jobs"]
