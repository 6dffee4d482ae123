"""Concurrency groups are shared names, but their limits are an admin's, and a submit
token sees only its own jobs in them.

Before, the first job to name a group set its limit whoever submitted it: a submit
token could squat ``nightly-etl`` with a limit of 1 and hold back everyone's nightly
jobs, and ``GET /api/v1/groups`` showed it every group's usage. Real scheduler process,
real HTTP over loopback.
"""

from __future__ import annotations

import aiohttp

from tests.support import Api, SchedulerProcess

SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.1, "memory_mb": 16}}


async def _submitter(admin: Api, http: aiohttp.ClientSession, url: str, name: str) -> Api:
    _, made = await admin.post("/api/v1/tokens", {"role": "submit", "name": name})
    return Api(http, url, made["token"])


async def test_a_submit_token_cannot_set_a_groups_limit_and_sees_only_its_own_jobs_in_groups(
    sched: SchedulerProcess, http: aiohttp.ClientSession, admin: Api
) -> None:
    mallory = await _submitter(admin, http, sched.url, "mallory")
    alice = await _submitter(admin, http, sched.url, "alice")
    _, before = await admin.get("/api/v1/stats")

    squat = {**SPEC, "group": "nightly-etl", "group_max_concurrent": 1}
    status, body = await mallory.post("/api/v1/jobs", squat)
    assert status == 403, body
    assert body["error"]["details"]["field"] == "$.group_max_concurrent"
    status, body = await mallory.post("/api/v1/jobs/batch", {"jobs": [SPEC, squat]})
    assert status == 403, body
    assert body["error"]["details"]["field"] == "$.jobs[1].group_max_concurrent"
    assert (await mallory.call("PUT", "/api/v1/groups/nightly-etl", {"max_concurrent": 1}))[
        0
    ] == 403
    # Refused and nothing changed: no job, no limit.
    _, after = await admin.get("/api/v1/stats")
    assert (after["index"], after["jobs"]) == (before["index"], before["jobs"])
    _, groups = await admin.get("/api/v1/groups")
    assert groups["groups"] == {}

    # Everyone may put jobs in a group; an admin sets its limit.
    for who, group in ((alice, "nightly-etl"), (alice, "alice-reports"), (mallory, "nightly-etl")):
        assert (await who.post("/api/v1/jobs", {**SPEC, "group": group}))[0] == 201
    status, _ = await admin.call("PUT", "/api/v1/groups/nightly-etl", {"max_concurrent": 5})
    assert status == 200
    limited = {**SPEC, "group": "admin-batch", "group_max_concurrent": 2}
    assert (await admin.post("/api/v1/jobs", limited))[0] == 201

    # A submit token sees the groups of its own jobs, counting only its own jobs.
    _, mine = await mallory.get("/api/v1/groups")
    assert mine["groups"] == {"nightly-etl": {"max_concurrent": 5, "active": 0, "queued": 1}}
    _, everyone = await admin.get("/api/v1/groups")
    assert everyone["groups"] == {
        "admin-batch": {"max_concurrent": 2, "active": 0, "queued": 1},
        "alice-reports": {"max_concurrent": None, "active": 0, "queued": 1},
        "nightly-etl": {"max_concurrent": 5, "active": 0, "queued": 2},
    }
