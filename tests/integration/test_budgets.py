"""Per-token budgets, attacked for real over HTTP on a real scheduler process: one token
filling the queue, oversized specs and a token's stored spec bytes, and thousands of
jobs each waiting on the same thousand dependencies."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import UNLIMITED, Api, SchedulerProcess, SimAgent, wait_until

SPEC: dict[str, Any] = {
    "name": "budget",
    "image": "busybox",
    "command": ["true"],
    "resources": {"cpu": 0.01, "memory_mb": 1},
}


async def _token(admin: Api, name: str) -> Api:
    status, body = await admin.post("/api/v1/tokens", {"role": "submit", "name": name})
    assert status == 201, body
    return Api(admin.session, admin.url, body["token"])


async def _queued(admin: Api) -> int:
    _, stats = await admin.get("/api/v1/stats")
    return int(stats["jobs"]["queued"])


# --- (a) one token cannot fill the queue -------------------------------------------------


@pytest.fixture
def quota(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path / "quota",
        *UNLIMITED,
        "--max-queued-jobs",
        "2000",
        "--max-queued-jobs-per-token",
        "500",
    ).start()
    yield proc
    proc.kill()


async def test_one_token_cannot_fill_the_queue_for_everyone(
    quota: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, quota.url, quota.admin_token)
    alice = await _token(admin, "alice")
    bob = await _token(admin, "bob")
    # The attack: alice submits batches for as long as the scheduler takes them.
    accepted, refusal = 0, None
    for _ in range(2000 // 150 + 2):
        status, body = await alice.post("/api/v1/jobs/batch", {"jobs": [SPEC] * 150})
        if status != 201:
            refusal = (status, body)
            break
        accepted += 150
    assert accepted == 450, f"alice queued {accepted} jobs past her quota of 500"
    assert refusal is not None and refusal[0] == 429, refusal
    error = refusal[1]["error"]
    assert "500" in error["message"] and "this token" in error["message"], error
    assert error["details"]["limit"] == 500 and error["details"]["queued"] == 450
    # A batch is taken whole or refused whole: nothing of the refused 150 was queued.
    assert await _queued(admin) == 450
    status, _ = await alice.post("/api/v1/jobs/batch", {"jobs": [SPEC] * 50})
    assert status == 201
    async with http.post(
        quota.url + "/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {alice.token}"}
    ) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
    # Everyone else keeps submitting.
    status, body = await bob.post("/api/v1/jobs/batch", {"jobs": [SPEC] * 100})
    assert status == 201, body
    status, _ = await bob.post("/api/v1/jobs", SPEC)
    assert status == 201
    # Only waiting jobs count: once alice cancels some, she may queue as many again.
    _, mine = await alice.get("/api/v1/jobs", params={"state": "queued", "limit": 100})
    ids = [j["id"] for j in mine["jobs"]]
    status, _ = await alice.post("/api/v1/jobs/cancel", {"ids": ids})
    assert status == 200
    status, body = await alice.post("/api/v1/jobs/batch", {"jobs": [SPEC] * 100})
    assert status == 201, body
    assert await _queued(admin) == 500 + 101
    # A retry puts a job back in the queue: it counts like a new one.
    status, body = await alice.post(f"/api/v1/jobs/{ids[0]}/retry")
    assert status == 429 and body["error"]["details"]["limit"] == 500, body
    assert await _queued(admin) == 500 + 101


# --- (b) spec size and a token's stored spec bytes -----------------------------------------


@pytest.fixture
def specs(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path / "specs", *UNLIMITED, "--max-spec-bytes-per-token", str(1024 * 1024)
    ).start()
    yield proc
    proc.kill()


def _spec_of(size: int) -> dict[str, Any]:
    """A valid spec of about ``size`` bytes: its env carries the bulk."""
    chunk = 60_000
    env = {f"PAD{i}": "x" * min(chunk, size - i * chunk) for i in range(size // chunk + 1)}
    return {**SPEC, "env": {k: v for k, v in env.items() if v}}


async def test_an_oversized_spec_is_refused_and_a_token_has_a_spec_budget(
    specs: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, specs.url, specs.admin_token)
    alice = await _token(admin, "alice")
    bob = await _token(admin, "bob")
    # The attack: a spec of about 1 MB (the body limit is 1 MiB).
    status, body = await alice.post("/api/v1/jobs", _spec_of(1_000_000))
    assert status == 413, (status, str(body)[:300])
    assert body["error"]["details"]["max_bytes"] == 65536
    assert body["error"]["details"]["field"] == "$"
    assert "65536" in body["error"]["message"]
    status, body = await alice.post("/api/v1/jobs/batch", {"jobs": [SPEC, _spec_of(100_000)]})
    assert status == 413 and body["error"]["details"]["field"] == "$.jobs[1]", body
    assert await _queued(admin) == 0
    # Specs under the cap are taken until the token's stored bytes reach its budget.
    big = _spec_of(60_000)
    accepted, refusal = 0, None
    for _ in range(40):
        status, body = await alice.post("/api/v1/jobs", big)
        if status != 201:
            refusal = (status, body)
            break
        accepted += 1
    assert refusal is not None, f"{accepted} specs of 60 kB taken past a 1 MiB budget"
    assert refusal[0] == 429, refusal
    assert refusal[1]["error"]["details"]["limit"] == 1024 * 1024
    assert "spec" in refusal[1]["error"]["message"]
    assert accepted == (1024 * 1024) // 60_100, accepted
    # Cancelling does not give the bytes back: ended jobs are kept until retention
    # deletes them, and so is their spec.
    _, mine = await alice.get("/api/v1/jobs", params={"state": "queued"})
    status, _ = await alice.post("/api/v1/jobs/cancel", {"ids": [j["id"] for j in mine["jobs"]]})
    assert status == 200
    status, _ = await alice.post("/api/v1/jobs", big)
    assert status == 429
    # Small specs within what is left still pass, and another token has its own budget.
    status, _ = await alice.post("/api/v1/jobs", SPEC)
    assert status == 201
    status, body = await bob.post("/api/v1/jobs", big)
    assert status == 201, body


# --- (c) many jobs waiting on the same many dependencies ----------------------------------

DEPS = 1000
DEPENDENTS = 4000
#: the most a waiting job's reason may hold
MAX_REASON = 512


async def _pass_seconds(admin: Api) -> tuple[float, float]:
    """The placement pass histogram's (sum, count)."""
    _, text = await admin.get("/metrics")
    text = text.decode() if isinstance(text, bytes) else str(text)
    total = float(re.search(r"^berth_placement_pass_seconds_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
    count = float(re.search(r"^berth_placement_pass_seconds_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    return total, count


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path / "deps", *UNLIMITED).start()
    yield proc
    proc.kill()


async def test_thousands_of_dependents_of_the_same_jobs_cost_a_pass_little(
    deps: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, deps.url, deps.admin_token)
    ids: list[str] = []
    for _ in range(DEPS // 500):
        status, body = await admin.post("/api/v1/jobs/batch", {"jobs": [SPEC] * 500})
        assert status == 201, body
        ids += [j["id"] for j in body["jobs"]]
    # More than a thousand dependencies are refused, naming the field.
    status, body = await admin.post("/api/v1/jobs", {**SPEC, "depends_on": [*ids, ids[0]]})
    assert status == 400 and body["error"]["details"]["field"] == "$.depends_on", body
    # The attack: thousands of jobs that each wait on the same thousand jobs.
    dependent = {**SPEC, "depends_on": ids}
    t0 = time.monotonic()
    waiting: list[str] = []
    for _ in range(DEPENDENTS // 50):
        status, body = await admin.post("/api/v1/jobs/batch", {"jobs": [dependent] * 50})
        assert status == 201, str(body)[:300]
        waiting += [j["id"] for j in body["jobs"]]
    submitted_s = time.monotonic() - t0
    # One more pass, measured alone, over the whole waiting queue.
    before = await _pass_seconds(admin)
    status, _ = await admin.post("/api/v1/jobs", SPEC)
    assert status == 201
    after = await wait_until(lambda: _pass_count_past(admin, before[1]), timeout=60, interval=0.05)
    pass_s = (after[0] - before[0]) / (after[1] - before[1])
    _, job = await admin.get(f"/api/v1/jobs/{waiting[-1]}")
    reason = job["reason"]
    print(
        f"\n{DEPENDENTS} dependents of {DEPS} jobs: submitted in {submitted_s:.1f} s, "
        f"one placement pass {pass_s * 1000:.1f} ms, reason {len(reason.encode())} bytes"
    )
    assert len(reason.encode()) <= MAX_REASON, reason[:200]
    assert reason.startswith("waiting_on: ") and f"and {DEPS - 3} more" in reason, reason

    # The dependencies run and complete; then the dependents start.
    agent = SimAgent(http, deps.url, deps.join_token, "worker", cpu=1000, max_parallel=1024)
    agent.memory_mb = 1024 * 1024
    await agent.register()
    done: set[str] = set()
    deadline = time.monotonic() + 60
    while len(done) < DEPS and time.monotonic() < deadline:
        await agent.heartbeat()
        got = await agent.poll(wait=1.0)
        mine = [a["job_id"] for a in got if a["job_id"] in set(ids)]
        for start in range(0, len(mine), 1000):
            chunk = mine[start : start + 1000]
            reports = [
                {"job_id": j, "attempt": agent.running[j], "state": "completed", "exit_code": 0}
                for j in chunk
            ]
            status, body = await agent.api.post(
                f"/api/v1/nodes/{agent.node_id}/reports", {"reports": reports}
            )
            assert status == 200, body
            for j in chunk:
                agent.running.pop(j, None)
            done.update(chunk)
    assert len(done) == DEPS

    async def dependents_started() -> bool:
        await agent.heartbeat()
        got = await agent.poll(wait=1.0)
        return any(a["job_id"] in waiting_set for a in got)

    waiting_set = set(waiting)
    assert await wait_until(dependents_started, timeout=60)
    _, job = await admin.get(f"/api/v1/jobs/{waiting[0]}")
    assert job["state"] in ("assigned", "queued"), job["state"]


async def _pass_count_past(admin: Api, count: float) -> tuple[float, float] | None:
    now = await _pass_seconds(admin)
    return now if now[1] > count else None
