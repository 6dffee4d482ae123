"""The scheduler is SIGKILLed three times during a burst of 1,000 submitted jobs.

A real scheduler process takes the burst from eight submitters (single submits with an
Idempotency-Key, re-sent when an answer is lost) while four simulated agents run the
jobs; at 250, 500 and 750 acknowledged submits it is killed with SIGKILL and started
again on the same state directory and port. The simulated agents speak the agent
protocol over HTTP like the real agent (long-poll with ``after``, heartbeats listing
what they run, reports retried until they get an answer, stale attempts dropped when
the scheduler says so) and keep a ledger of every assignment they were told and every
answer their reports got.

Afterwards every acknowledged job exists, once, and has completed; no (job, attempt)
had its completion accepted twice, no job had two attempts accepted, and each job's
final attempt and node are those of the one accepted completion.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.conftest import Figures
from tests.support import Api, SchedulerProcess, SimAgent

JOBS = 1000
#: acknowledged submits after which the scheduler is killed
KILL_AT = (250, 500, 750)
SUBMITTERS = 8
#: submits per second the submitters aim at, so that the kills fall inside the burst
SUBMIT_RATE = 100.0
AGENTS = 4
SLOTS = 8
#: how long a simulated job "runs"
RUN_S = (0.02, 0.3)
#: the bound of every phase of the test
PHASE_TIMEOUT_S = 90.0
#: answers that mean "try again" (the scheduler is starting or cannot write)
RETRY_STATUSES = frozenset({502, 503, 504})
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass
class Ledger:
    """What the simulated agents were told and what their reports were answered."""

    #: (job, attempt) -> names of the agents it was assigned to
    told: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (job, attempt) -> agents whose "completed" was answered 200
    accepted: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    #: (job, attempt, agent) whose "completed" answer was lost, then refused as stale:
    #: the first send may have been the one that counted
    unsure: set[tuple[str, int, str]] = field(default_factory=set)
    #: reports refused as stale (409) with no lost answer before
    stale: int = 0
    #: runs stopped by a cancel command from a heartbeat
    cancelled: int = 0
    #: report sends whose answer was lost (connection reset, scheduler down)
    lost_answers: int = 0


class SimWorker:
    """One simulated agent: long-poll, heartbeat, and a task per attempt it runs."""

    def __init__(self, agent: SimAgent, ledger: Ledger) -> None:
        self.agent = agent
        self.ledger = ledger
        self.after = 0
        self.runs: dict[tuple[str, int], asyncio.Task[None]] = {}
        #: attempts whose run is over and whose end is being reported: as with a real
        #: agent whose container has exited, a cancel command has nothing left to stop
        self.ending: set[tuple[str, int]] = set()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(self._poll_loop(), self._heartbeat_loop())

    async def _poll_loop(self) -> None:
        api = self.agent.api
        path = f"/api/v1/nodes/{self.agent.node_id}/assignments"
        while not self.stop.is_set():
            try:
                status, body = await api.get(path, params={"after": self.after, "wait": 1})
            except NETWORK_ERRORS:
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                await asyncio.sleep(0.1)
                continue
            if body["index"] < self.after:
                # As the real agent: the scheduler's index went back, start over.
                self.after = 0
                continue
            self.after = body["index"]
            for a in body["assignments"]:
                key = (a["job_id"], a["attempt"])
                if key in self.runs:
                    continue
                self.ledger.told[key].append(self.agent.name)
                self.runs[key] = asyncio.create_task(self._attempt(*key))

    async def _heartbeat_loop(self) -> None:
        api = self.agent.api
        path = f"/api/v1/nodes/{self.agent.node_id}/heartbeat"
        metrics = {"cpu_percent": 5.0, "ram_total_mb": 65536, "ram_free_mb": 65536}
        while not self.stop.is_set():
            running = [
                {"job_id": j, "attempt": a} for (j, a), t in self.runs.items() if not t.done()
            ]
            try:
                status, body = await api.post(path, {"metrics": metrics, "running": running})
            except NETWORK_ERRORS:
                status, body = 0, None
            if status == 200:
                for cmd in body["commands"]:
                    key = (cmd["job_id"], cmd["attempt"])
                    task = self.runs.get(key)
                    if key in self.ending:
                        continue
                    if cmd["action"] == "cancel" and task is not None and not task.done():
                        task.cancel()
                        self.ledger.cancelled += 1
            await asyncio.sleep(0.5)

    async def _attempt(self, job_id: str, attempt: int) -> None:
        if await self._report(job_id, attempt, "running") != 200:
            return
        await asyncio.sleep(random.uniform(*RUN_S))
        self.ending.add((job_id, attempt))
        await self._report(job_id, attempt, "completed", exit_code=0)

    async def _report(self, job_id: str, attempt: int, state: str, **extra: Any) -> int:
        """Send a report until it is answered; returns the final status."""
        api = self.agent.api
        path = f"/api/v1/nodes/{self.agent.node_id}/jobs/{job_id}/report"
        lost = False
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                status, _ = await api.post(path, {"attempt": attempt, "state": state, **extra})
            except NETWORK_ERRORS:
                self.ledger.lost_answers += 1
                lost = True
                await asyncio.sleep(0.1)
                continue
            if status in RETRY_STATUSES:
                await asyncio.sleep(0.1)
                continue
            if state == "completed":
                if status == 200:
                    self.ledger.accepted[(job_id, attempt)].append(self.agent.name)
                elif status in (404, 409) and lost:
                    self.ledger.unsure.add((job_id, attempt, self.agent.name))
            if status in (404, 409) and not lost:
                self.ledger.stale += 1
            return status
        raise AssertionError(f"report {state} of {job_id}/{attempt} never answered")


@dataclass
class Burst:
    """The submitters' side: acknowledged job ids per idempotency key."""

    acked: dict[str, str] = field(default_factory=dict)
    #: keys answered with two different job ids (a re-send made a second job)
    forked: list[str] = field(default_factory=list)
    resent: int = 0
    #: re-sends answered 200 with the job the lost answer had created
    replayed: int = 0


def _spec(i: int) -> dict[str, Any]:
    return {
        "name": f"burst-{i:04d}",
        "image": "berth-test/busybox:1",
        "command": ["true"],
        "resources": {"cpu": 0.5, "memory_mb": 64},
        "max_retries": 3,
        "retry_delay_s": 0.2,
    }


async def _submit(admin: Api, burst: Burst, i: int) -> None:
    key = f"burst-{i:04d}"
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    sent = False
    while time.monotonic() < deadline:
        if sent:
            burst.resent += 1
        sent = True
        try:
            status, body = await admin.post(
                "/api/v1/jobs", _spec(i), headers={"Idempotency-Key": key}
            )
        except NETWORK_ERRORS:
            await asyncio.sleep(0.1)
            continue
        if status in RETRY_STATUSES:
            await asyncio.sleep(0.1)
            continue
        assert status in (200, 201), (status, body)
        if status == 200:
            burst.replayed += 1
        earlier = burst.acked.setdefault(key, body["id"])
        if earlier != body["id"]:
            burst.forked.append(key)
        return
    raise AssertionError(f"submit {key} never acknowledged")


async def _all_jobs(admin: Api) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        status, body = await admin.get("/api/v1/jobs", params=params)
        assert status == 200, body
        for j in body["jobs"]:
            jobs[j["id"]] = j
        cursor = body["next_cursor"]
        if not cursor:
            return jobs


async def test_scheduler_killed_three_times_during_a_burst_loses_and_repeats_nothing(
    tmp_path: Path, figures: Figures
) -> None:
    sched = SchedulerProcess(
        tmp_path / "state",
        "--heartbeat-interval",
        "0.5",
        "--node-ttl",
        "10",
        "--restart-grace",
        "10",
    ).start()
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await _burst(http, sched, figures)
    finally:
        sched.kill()


async def _burst(http: aiohttp.ClientSession, sched: SchedulerProcess, fig: Figures) -> None:
    admin = Api(http, sched.url, sched.admin_token)
    ledger = Ledger()
    workers = []
    for n in range(AGENTS):
        agent = SimAgent(http, sched.url, sched.join_token, f"sim-{n}", cpu=SLOTS, memory_mb=65536)
        agent.max_parallel = SLOTS
        await agent.register()
        workers.append(SimWorker(agent, ledger))
    worker_tasks = [asyncio.create_task(w.run()) for w in workers]
    burst = Burst()
    downtimes: list[float] = []
    fig.jobs = JOBS

    async def killer() -> None:
        for mark in KILL_AT:
            while len(burst.acked) < mark:
                await asyncio.sleep(0.01)
            sched.kill()
            fig.faults += 1
            t0 = time.monotonic()
            await asyncio.to_thread(sched.start)
            downtimes.append(round(time.monotonic() - t0, 2))

    async def submitter(k: int) -> None:
        start = time.monotonic()
        for n, i in enumerate(range(k, JOBS, SUBMITTERS)):
            # Paced so that the burst lasts long enough for three kills inside it.
            due = start + n * SUBMITTERS / SUBMIT_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await _submit(admin, burst, i)

    t_burst = time.monotonic()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(killer(), *(submitter(k) for k in range(SUBMITTERS)))
    fig.extra["burst_seconds"] = round(time.monotonic() - t_burst, 2)
    fig.acknowledged = len(burst.acked)
    ids = set(burst.acked.values())

    async def settled() -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            jobs = await _all_jobs(admin)
            if all(jobs.get(i, {}).get("state") in TERMINAL for i in ids):
                return jobs
            if time.monotonic() > deadline:
                return jobs
            await asyncio.sleep(0.5)

    jobs = await settled()
    for w in workers:
        w.stop.set()
    for t in worker_tasks:
        t.cancel()
    await asyncio.gather(*worker_tasks, return_exceptions=True)
    for w in workers:
        for t in w.runs.values():
            t.cancel()

    states = Counter(jobs[i]["state"] if i in jobs else "missing" for i in ids)
    fig.terminal = sum(n for s, n in states.items() if s in TERMINAL)
    fig.losses = sum(n for s, n in states.items() if s != "completed")
    # Accepted completions per job, over all its attempts.
    per_job: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for (job_id, attempt), agents in ledger.accepted.items():
        per_job[job_id].extend((attempt, a) for a in agents)
    twice = [j for j, acc in per_job.items() if len(acc) > 1]
    fig.duplicates = len(twice) + len(burst.forked)
    node_names = {w.agent.node_id: w.agent.name for w in workers}
    mismatched = []
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None or job["state"] != "completed":
            continue
        final = (job["attempt"], node_names.get(job["node_id"], job["node_id"]))
        maybe = {(a, n) for (j, a, n) in ledger.unsure if j == job_id}
        if final not in set(per_job.get(job_id, [])) | maybe:
            mismatched.append((job_id, final, per_job.get(job_id)))
        if any(h["state"] == "completed" for h in job["attempts"]):
            mismatched.append((job_id, "an earlier attempt completed", job["attempts"]))
    phantoms = [j for j, job in jobs.items() if j not in ids]
    runs = sum(len(v) for v in ledger.told.values())
    fig.extra.update(
        {
            "states": dict(states),
            "restart_seconds": downtimes,
            "resent_submits": burst.resent,
            "replayed_submits": burst.replayed,
            "runs": runs,
            "reruns": runs - len(ids),
            "retried_attempts": sum(1 for j in ids if jobs.get(j, {}).get("attempt", 1) > 1),
            "lost_report_answers": ledger.lost_answers,
            "unsure_completions": len(ledger.unsure),
            "stale_reports": ledger.stale,
            "cancel_commands": ledger.cancelled,
            "phantom_jobs": len(phantoms),
        }
    )
    assert fig.acknowledged == JOBS
    assert fig.faults == len(KILL_AT)
    assert dict(states) == {"completed": JOBS}, dict(states)
    assert not burst.forked, f"re-sent submits made second jobs: {burst.forked[:5]}"
    assert not twice, f"completions accepted twice: {[(j, per_job[j]) for j in twice[:5]]}"
    assert not mismatched, mismatched[:5]
    assert not phantoms, f"jobs nobody acknowledged: {phantoms[:5]}"
