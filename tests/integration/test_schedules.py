"""Periodic jobs over real HTTP, against a real scheduler process on each store.

Timing is tested with cron expressions of six fields (seconds as the sixth, croniter's
order): a schedule that fires every second or at one given second needs no minute of
waiting and no fake clock. Firing by hand goes through POST .../run. Runs are real jobs
of the scheduler; a simulated agent (the agent protocol over HTTP) runs them to their
end where a test needs a run to end.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from tests.support import Api, SchedulerProcess, SimAgent, wait_until

JOB = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.1, "memory_mb": 16}}
#: far in the future: never fires while a test runs
NEVER = "0 0 1 1 *"


def spec(name: str, cron: str = NEVER, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cron": cron, "job": JOB, **extra}


async def token(admin: Api, role: str, name: str) -> Api:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name})
    assert status == 201, made
    return Api(admin.session, admin.url, made["token"])


async def runs_of(api: Api, name: str) -> list[dict[str, Any]]:
    """The jobs labelled as runs of schedule ``name``, oldest first."""
    status, page = await api.get("/api/v1/jobs", params={"limit": 1000})
    assert status == 200, page
    jobs = [j for j in page["jobs"] if j["spec"]["labels"].get("berth.schedule") == name]
    return sorted(jobs, key=lambda j: j["id"])


async def show(api: Api, name: str) -> dict[str, Any]:
    status, body = await api.get(f"/api/v1/schedules/{name}")
    assert status == 200, body
    return body


def at_second(seconds_from_now: float) -> tuple[str, datetime]:
    """A six-field cron expression that fires once a day, at the UTC second
    ``seconds_from_now`` from now; and that time."""
    when = (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).replace(microsecond=0)
    return f"{when.minute} {when.hour} * * * {when.second}", when


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_create_list_show_replace_delete(admin: Api) -> None:
    status, made = await admin.post("/api/v1/schedules", spec("nightly", "0 3 * * *"))
    assert status == 201, made
    assert made["name"] == "nightly" and made["timezone"] == "UTC"
    assert made["overlap"] == "allow" and made["catch_up"] == "none"
    assert made["paused"] is False and made["owner"] == "admin"
    assert made["last_run_at"] is None and made["recent_runs"] == []
    next_at = parse(made["next_run_at"])
    assert (next_at.hour, next_at.minute, next_at.second) == (3, 0, 0)
    assert next_at > datetime.now(UTC)

    status, again = await admin.post("/api/v1/schedules", spec("nightly"))
    assert status == 409, again

    status, listing = await admin.get("/api/v1/schedules")
    assert status == 200 and [s["name"] for s in listing["schedules"]] == ["nightly"]
    assert (await show(admin, "nightly"))["cron"] == "0 3 * * *"

    # Replaced: the cron and timezone change the next time, the owner stays.
    body = spec("nightly", "30 4 * * *", timezone="Europe/Berlin", overlap="forbid")
    status, put = await admin.call("PUT", "/api/v1/schedules/nightly", body)
    assert status == 200, put
    assert put["timezone"] == "Europe/Berlin" and put["overlap"] == "forbid"
    local = parse(put["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (4, 30)

    status, paused = await admin.call("PUT", "/api/v1/schedules/nightly", {**body, "paused": True})
    assert status == 200 and paused["paused"] is True and paused["next_run_at"] is None

    status, missing = await admin.call("PUT", "/api/v1/schedules/other", spec("other"))
    assert status == 404, missing

    status, gone = await admin.call("DELETE", "/api/v1/schedules/nightly")
    assert status == 200 and gone["name"] == "nightly"
    assert (await admin.get("/api/v1/schedules/nightly"))[0] == 404
    assert (await admin.call("DELETE", "/api/v1/schedules/nightly"))[0] == 404
    assert (await admin.get("/api/v1/schedules"))[1]["schedules"] == []


async def test_bad_input_is_refused_naming_the_field(admin: Api) -> None:
    cases = [
        (spec("a", "not a cron"), "$.cron"),
        (spec("a", "61 * * * *"), "$.cron"),
        (spec("a", "* * * * * * * *"), "$.cron"),
        (spec("a", "0 0 30 2 *"), "$.cron"),
        (spec("a", timezone="Mars/Olympus"), "$.timezone"),
        (spec("a", timezone="../../etc/passwd"), "$.timezone"),
        (spec("a", overlap="sometimes"), "$.overlap"),
        (spec("a", catch_up="all"), "$.catch_up"),
        (spec("a b"), "$.name"),
        (spec("a/b"), "$.name"),
        ({"name": "a", "cron": NEVER}, "$"),
        ({"name": "a", "cron": NEVER, "job": {"command": ["true"]}}, "$.job"),
        ({**spec("a"), "job": {**JOB, "priority": 500}}, "$.job.priority"),
        ({**spec("a"), "surprise": 1}, "$"),
        ({**spec("a"), "job": {**JOB, "depends_on": ["nosuchjob"]}}, "$.job.depends_on[0]"),
        ({**spec("a"), "job": {**JOB, "array": {"count": 3}}}, "$.job.array"),
    ]
    for body, field in cases:
        status, reply = await admin.post("/api/v1/schedules", body)
        assert status == 400, (body, reply)
        assert reply["error"]["code"] == "invalid"
        assert reply["error"]["details"]["field"].startswith(field), (body, reply)
    # Nothing was made by any of them.
    assert (await admin.get("/api/v1/schedules"))[1]["schedules"] == []

    await admin.post("/api/v1/schedules", spec("ok"))
    status, reply = await admin.call("PUT", "/api/v1/schedules/ok", spec("ok", "bad"))
    assert status == 400 and reply["error"]["details"]["field"] == "$.cron"
    status, reply = await admin.call("PUT", "/api/v1/schedules/ok", spec("other"))
    assert status == 400 and reply["error"]["details"]["field"] == "$.name"
    assert (await show(admin, "ok"))["cron"] == NEVER


async def test_roles_and_owners(admin: Api) -> None:
    reader = await token(admin, "read", "reader")
    alice = await token(admin, "submit", "alice")
    bob = await token(admin, "submit", "bob")

    assert (await reader.post("/api/v1/schedules", spec("r")))[0] == 403
    status, made = await alice.post("/api/v1/schedules", spec("alices"))
    assert status == 201 and made["owner"] == "alice"

    # Readers see every schedule; a submit token only its own.
    assert [s["name"] for s in (await reader.get("/api/v1/schedules"))[1]["schedules"]] == [
        "alices"
    ]
    assert (await reader.get("/api/v1/schedules/alices"))[0] == 200
    assert (await bob.get("/api/v1/schedules"))[1]["schedules"] == []
    assert (await bob.get("/api/v1/schedules/alices"))[0] == 404
    assert (await bob.call("PUT", "/api/v1/schedules/alices", spec("alices")))[0] == 404
    assert (await bob.call("DELETE", "/api/v1/schedules/alices"))[0] == 404
    assert (await bob.post("/api/v1/schedules/alices/run"))[0] == 404
    assert (await reader.post("/api/v1/schedules/alices/run"))[0] == 403
    assert (await reader.call("DELETE", "/api/v1/schedules/alices"))[0] == 403
    assert (await admin.get("/api/v1/schedules/alices"))[1]["owner"] == "alice"

    # An admin's run of alice's schedule is still submitted as alice.
    status, fired = await admin.post("/api/v1/schedules/alices/run")
    assert status == 201, fired
    assert fired["job"]["submitted_by"] == "alice"
    assert (await alice.get(f"/api/v1/jobs/{fired['job']['id']}"))[0] == 200

    # Once alice's token is revoked, her schedule starts no more runs.
    assert (await admin.call("DELETE", "/api/v1/tokens/alice"))[0] == 200
    status, refused = await admin.post("/api/v1/schedules/alices/run")
    assert status == 403 and "no live token" in refused["error"]["message"], refused
    assert len(await runs_of(admin, "alices")) == 1


async def test_run_now_submits_a_labelled_job_and_records_it(admin: Api) -> None:
    await admin.post("/api/v1/schedules", spec("report", overlap="allow"))
    status, fired = await admin.post("/api/v1/schedules/report/run")
    assert status == 201, fired
    job = fired["job"]
    assert job["state"] == "queued"
    assert job["spec"]["labels"]["berth.schedule"] == "report"
    assert job["spec"]["image"] == "busybox"
    schedule = fired["schedule"]
    assert schedule["last_job_id"] == job["id"]
    assert [r["job_id"] for r in schedule["recent_runs"]] == [job["id"]]
    assert schedule["recent_runs"][0]["due"] is None
    # A run by hand leaves the next firing time where it was.
    assert schedule["next_run_at"] == (await show(admin, "report"))["next_run_at"]
    status, got = await admin.get(f"/api/v1/jobs/{job['id']}")
    assert status == 200 and got["spec"]["labels"]["berth.schedule"] == "report"

    # allow: a second run starts beside the first.
    status, second = await admin.post("/api/v1/schedules/report/run")
    assert status == 201
    runs = await runs_of(admin, "report")
    assert [j["id"] for j in runs] == [job["id"], second["job"]["id"]]
    assert all(j["state"] == "queued" for j in runs)
    assert (await admin.post("/api/v1/schedules/nosuch/run"))[0] == 404


async def test_recent_runs_are_bounded(admin: Api) -> None:
    await admin.post("/api/v1/schedules", spec("many"))
    ids = []
    for _ in range(23):
        status, fired = await admin.post("/api/v1/schedules/many/run")
        assert status == 201
        ids.append(fired["job"]["id"])
    shown = await show(admin, "many")
    assert [r["job_id"] for r in shown["recent_runs"]] == ids[-20:]
    assert shown["last_job_id"] == ids[-1]


async def test_overlap_replace_cancels_the_run_still_going(admin: Api) -> None:
    await admin.post("/api/v1/schedules", spec("fresh", overlap="replace"))
    _, first = await admin.post("/api/v1/schedules/fresh/run")
    status, second = await admin.post("/api/v1/schedules/fresh/run")
    assert status == 201, second
    _, old = await admin.get(f"/api/v1/jobs/{first['job']['id']}")
    assert old["state"] == "cancelled"
    assert second["job"]["state"] == "queued"
    assert [j["state"] for j in await runs_of(admin, "fresh")] == ["cancelled", "queued"]


async def test_overlap_replace_stops_a_running_run_on_its_node(
    admin: Api, sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    agent = SimAgent(http, sched.url, sched.join_token, "replace-node")
    await agent.register()
    await agent.heartbeat()
    await admin.post("/api/v1/schedules", spec("hourly", overlap="replace"))
    _, first = await admin.post("/api/v1/schedules/hourly/run")
    running = first["job"]["id"]
    await wait_until(lambda: _assigned(agent, running), timeout=10)
    assert (await agent.report(running, "running"))[0] == 200

    status, second = await admin.post("/api/v1/schedules/hourly/run")
    assert status == 201, second
    assert (await admin.get(f"/api/v1/jobs/{running}"))[1]["state"] == "cancelled"
    # The node is told to stop it; the new run takes its place there.
    commands = await agent.heartbeat()
    assert {"action": "cancel", "job_id": running} in [
        {k: c[k] for k in ("action", "job_id")} for c in commands
    ]
    await wait_until(lambda: _assigned(agent, second["job"]["id"]), timeout=10)


async def _assigned(agent: SimAgent, job_id: str) -> bool:
    await agent.poll(wait=0.5)
    return job_id in agent.running


async def test_overlap_forbid_skips_while_the_previous_run_goes_on(
    admin: Api, sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    # Every second; no node yet, so the first run waits in the queue.
    status, made = await admin.post(
        "/api/v1/schedules", spec("solo", "* * * * * *", overlap="forbid")
    )
    assert status == 201, made
    first = await wait_until(lambda: runs_of(admin, "solo"), timeout=10)
    await wait_until(lambda: _skipped(admin, "solo", 2), timeout=10)
    shown = await show(admin, "solo")
    assert "overlap forbid" in shown["last_skip_reason"]
    assert len(await runs_of(admin, "solo")) == 1
    # By hand too: refused while the run goes on, and nothing changes.
    status, refused = await admin.post("/api/v1/schedules/solo/run")
    assert status == 409 and refused["error"]["details"]["job_id"] == first[0]["id"]

    # Once the run ends, the next firing starts the next run.
    agent = SimAgent(http, sched.url, sched.join_token, "solo-node")
    await agent.register()
    await agent.heartbeat()
    assigned = await wait_until(lambda: agent.poll(wait=1.0), timeout=10)
    assert assigned[0]["job_id"] == first[0]["id"]
    assert (await agent.report(first[0]["id"], "running"))[0] == 200
    assert (await agent.report(first[0]["id"], "completed", exit_code=0))[0] == 200
    runs = await wait_until(lambda: _at_least(admin, "solo", 2), timeout=10)
    assert runs[0]["state"] == "completed"
    await admin.call("DELETE", "/api/v1/schedules/solo")


async def _skipped(api: Api, name: str, n: int) -> bool:
    return int((await show(api, name))["skipped"]) >= n


async def _at_least(api: Api, name: str, n: int) -> list[dict[str, Any]] | None:
    runs = await runs_of(api, name)
    return runs if len(runs) >= n else None


async def test_a_seconds_cron_fires_at_its_times_until_paused(admin: Api) -> None:
    status, made = await admin.post("/api/v1/schedules", spec("tick", "* * * * * */2"))
    assert status == 201, made
    assert parse(made["next_run_at"]).second % 2 == 0
    await wait_until(lambda: _at_least(admin, "tick", 2), timeout=15)
    shown = await show(admin, "tick")
    dues = [parse(r["due"]) for r in shown["recent_runs"]]
    # Each run stands for one firing time of the expression, none twice.
    assert all(d.second % 2 == 0 and d.microsecond == 0 for d in dues)
    assert len(set(dues)) == len(dues)
    for run in shown["recent_runs"]:
        assert parse(run["at"]) >= parse(run["due"])
    assert parse(shown["next_run_at"]) > dues[-1]

    paused = spec("tick", "* * * * * */2", paused=True)
    assert (await admin.call("PUT", "/api/v1/schedules/tick", paused))[0] == 200
    count = len(await runs_of(admin, "tick"))
    await asyncio.sleep(2.5)
    assert len(await runs_of(admin, "tick")) == count
    assert (await show(admin, "tick"))["next_run_at"] is None


async def test_schedules_survive_a_kill_and_catch_up_one_fires_once(
    admin: Api, sched: SchedulerProcess
) -> None:
    cron, when = at_second(4)
    for name, catch_up in (("once", "one"), ("never", "none")):
        status, made = await admin.post("/api/v1/schedules", spec(name, cron, catch_up=catch_up))
        assert status == 201, made
        assert parse(made["next_run_at"]) == when
    sched.kill()
    # Both firing times pass while no scheduler is up.
    while datetime.now(UTC) < when + timedelta(seconds=1):
        await asyncio.sleep(0.1)
    sched.start()
    started = time.monotonic()

    once = await wait_until(lambda: runs_of(admin, "once"), timeout=15)
    assert len(once) == 1
    shown = await show(admin, "once")
    assert parse(shown["recent_runs"][0]["due"]) == when
    assert parse(shown["next_run_at"]) == when + timedelta(days=1)

    never = await show(admin, "never")
    assert never["recent_runs"] == [] and never["last_run_at"] is None
    assert parse(never["next_run_at"]) == when + timedelta(days=1)
    await wait_until(lambda: _skipped(admin, "never", 1), timeout=10)
    assert "catch_up none" in (await show(admin, "never"))["last_skip_reason"]
    # Give the ticks of a few more seconds their chance to misfire.
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    assert len(await runs_of(admin, "once")) == 1
    assert await runs_of(admin, "never") == []


async def test_the_schedule_commands(admin: Api, sched: SchedulerProcess, tmp_path: Path) -> None:
    from tests.integration.test_cli import berth

    done = berth(
        sched,
        "schedule",
        "create",
        "--name",
        "backup",
        "--cron",
        "0 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--overlap",
        "forbid",
        "--catch-up",
        "one",
        "--cpu",
        "0.5",
        "--memory-mb",
        "64",
        "--label",
        "team=ops",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo backing up",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "backup"
    made = await show(admin, "backup")
    assert made["overlap"] == "forbid" and made["catch_up"] == "one"
    assert made["job"]["command"] == ["sh", "-c", "echo backing up"]
    assert made["job"]["resources"]["cpu"] == 0.5 and made["job"]["labels"] == {"team": "ops"}

    spec_file = tmp_path / "job.json"
    spec_file.write_text('{"image": "busybox", "command": "date"}')
    done = berth(sched, "schedule", "create", "--name", "f", "--cron", NEVER, "-f", str(spec_file))
    assert done.returncode == 0, done.stderr
    bad = berth(sched, "schedule", "create", "--name", "g", "--cron", "nope", "busybox")
    assert bad.returncode != 0 and "invalid cron expression" in bad.stderr

    listing = berth(sched, "schedule", "list").stdout.splitlines()
    assert listing[0].split()[:2] == ["NAME", "CRON"]
    assert [line.split()[0] for line in listing[1:]] == ["backup", "f"]
    as_json = berth(sched, "schedule", "list", "--json")
    assert [s["name"] for s in json.loads(as_json.stdout)["schedules"]] == [
        "backup",
        "f",
    ]

    assert berth(sched, "schedule", "pause", "backup").returncode == 0
    assert (await show(admin, "backup"))["paused"] is True
    assert "paused" in berth(sched, "schedule", "show", "backup").stdout
    assert berth(sched, "schedule", "resume", "backup").returncode == 0
    resumed = await show(admin, "backup")
    assert resumed["paused"] is False and resumed["next_run_at"] is not None

    ran = berth(sched, "schedule", "run", "backup")
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip()
    assert (await admin.get(f"/api/v1/jobs/{job_id}"))[1]["spec"]["labels"] == {
        "team": "ops",
        "berth.schedule": "backup",
    }
    assert job_id in berth(sched, "schedule", "show", "backup").stdout
    # forbid: a second run by hand is refused while the first waits.
    assert berth(sched, "schedule", "run", "backup").returncode != 0

    assert berth(sched, "schedule", "delete", "f").returncode == 0
    assert berth(sched, "schedule", "show", "f").returncode != 0
