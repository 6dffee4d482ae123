"""Throughput and submit latency of high-priority jobs with a deep queue behind them.

A real `berth scheduler` process (SQLite store in a temporary state directory) and 500
simulated agents in this process speak the agent protocol over loopback HTTP: each
registers with the join token from the state directory, heartbeats at the interval the
register (and every heartbeat) reply gives, long-polls its assignments, and reports
each assignment running and then completed at once, one request per report. A
simulated agent has 4 CPUs, 8 GiB, max_parallel 4 and no labels; nothing runs.

Each case starts a fresh scheduler on a fresh state directory. It first queues the
case's deep jobs (priority 10) through POST /api/v1/jobs/batch, 1,000 specs per
request. The deep jobs are constrained to the label ``pool=overnight``, which no
simulated agent has, so they stay queued for the whole measurement: every placement
pass still has them in its queue, but none of them takes a slot. Then the measured
run submits 2,000 priority-90 jobs one request at a time (sequential POST
/api/v1/jobs, each submit's latency recorded) and waits until every one of them was
reported completed; throughput is jobs over the time from the first submit to the
last completed report. Cases: an empty queue, then 20,000 and 100,000 deep jobs; the
cases run in turn, ``--rounds`` times (default 3), and each figure is the median of
its rounds (the rounds' throughputs and p99s are printed beside it).

The fair case (``--fair-array``, default 100,000; 0 leaves it out) starts another
fresh scheduler: one owner submits an array of that many placeable tasks, the agents
start draining it, and then each of ``--fair-owners`` (10) other owners submits one
job, 0.2 s apart. It reports how long each of those waited from its submit until an
agent got its assignment (median and max over the owners, and whether every one was
within 2 s in every round), and how many array tasks completed meanwhile.

Jobs are submitted with a submit token made for the bench (not the admin token), so
the per-token admission checks are part of every submit; the scheduler is started with
the queue cap, the per-token queue quota and the submit rate set high enough that
none of them refuses the bench.

Prints one JSON object: per case jobs/s, submit latency p50/p99 (ms), ``ratio_20k``
and ``ratio_100k`` (throughput with that many deep jobs / throughput with none),
``submit_p99_ratio_100k`` (submit p99 at 100,000 / submit p99 empty), and the targets
as booleans. A case that runs past ``--timeout-s`` (the deep fill and the measured run
each get that long) prints what it got with ``"timed_out": true``.

Run: ``python bench/queue_depth.py [--depths 20000,100000] [--agents 500]
[--jobs 2000] [--rounds 3] [--timeout-s 600] [--fair-array 100000] [--fair-owners 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.loop import event_loop_factory
from tests.support import SchedulerProcess

#: the measured jobs' priority and the deep jobs' (placement takes the highest first)
HIGH_PRIORITY = 90
DEEP_PRIORITY = 10
#: a label no simulated agent has: the deep jobs never fit a node
DEEP_CONSTRAINT = {"labels": {"pool": "overnight"}}
BATCH = 1000
#: nothing in the scheduler refuses the bench: the queue cap and the per-token quota are
#: far above any case, and the submit rate has no limit
FLAGS = (
    "--log-level",
    "warning",
    "--submit-rate",
    "0",
    "--submit-burst",
    "1000000",
    "--max-queued-jobs",
    "10000000",
    "--max-queued-jobs-per-token",
    "10000000",
    "--max-streams-per-token",
    "10000",
)
TARGET_RATIO_100K = 0.8
#: in the fair case, every other owner's job is assigned within this long of its submit
TARGET_FAIR_START_S = 2.0
TARGET_SUBMIT_P99_RATIO_100K = 1.5


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
    }


class Agent:
    """One simulated worker host: register, heartbeat, long-poll, report."""

    def __init__(self, http: aiohttp.ClientSession, url: str, name: str) -> None:
        self.http, self.url, self.name = http, url, name
        self.node_id = ""
        self.headers: dict[str, str] = {}
        self.after = 0
        self.heartbeat_interval_s = 5.0
        self.assignment_wait_s = 30.0
        self.running: dict[str, int] = {}

    async def register(self, join_token: str) -> None:
        body = {
            "name": self.name,
            "capacity": {"cpu": 4, "memory_mb": 8192},
            "labels": {},
            "max_parallel": 4,
            "executor": "process",
        }
        async with self.http.post(
            f"{self.url}/api/v1/nodes/register",
            json=body,
            headers={"Authorization": f"Bearer {join_token}"},
        ) as r:
            reply = orjson.loads(await r.read())
            if r.status != 200:
                raise RuntimeError(f"register answered {r.status}: {reply}")
        self.node_id = reply["node_id"]
        self.headers = {"Authorization": f"Bearer {reply['node_token']}"}
        self.heartbeat_interval_s = float(reply["heartbeat_interval_s"])
        self.assignment_wait_s = float(reply["assignment_wait_s"])

    async def heartbeat_loop(self) -> None:
        url = f"{self.url}/api/v1/nodes/{self.node_id}/heartbeat"
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            body = {
                "metrics": {"cpu_percent": 1.0, "ram_total_mb": 8192, "ram_free_mb": 8000},
                "running": [{"job_id": j, "attempt": a} for j, a in self.running.items()],
            }
            try:
                async with self.http.post(url, json=body, headers=self.headers) as r:
                    reply = orjson.loads(await r.read())
                if r.status == 200:
                    self.heartbeat_interval_s = float(reply["heartbeat_interval_s"])
            except (aiohttp.ClientError, ValueError):
                continue

    async def run(
        self, completed: dict[str, float], assigned: dict[str, float] | None = None
    ) -> None:
        base = f"{self.url}/api/v1/nodes/{self.node_id}"
        while True:
            try:
                async with self.http.get(
                    f"{base}/assignments",
                    params={"after": self.after, "wait": self.assignment_wait_s},
                    headers=self.headers,
                ) as r:
                    reply = orjson.loads(await r.read())
                if r.status != 200:
                    await asyncio.sleep(0.1)
                    continue
            except (aiohttp.ClientError, ValueError):
                await asyncio.sleep(0.1)
                continue
            self.after = reply["index"]
            now = time.perf_counter()
            for a in reply["assignments"]:
                self.running[a["job_id"]] = a["attempt"]
                if assigned is not None:
                    assigned.setdefault(a["job_id"], now)
            for a in reply["assignments"]:
                job_id = a["job_id"]
                ok = True
                for state in ("running", "completed"):
                    body: dict[str, Any] = {"attempt": a["attempt"], "state": state}
                    if state == "completed":
                        body["exit_code"] = 0
                    async with self.http.post(
                        f"{base}/jobs/{job_id}/report", json=body, headers=self.headers
                    ) as r:
                        await r.read()
                        ok = ok and r.status == 200
                self.running.pop(job_id, None)
                if ok:
                    completed.setdefault(job_id, time.perf_counter())


async def run_case(depth: int, n_agents: int, n_jobs: int, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sched = SchedulerProcess(Path(tmp) / "state", *FLAGS).start(timeout=60)
        try:
            return await _case(sched, depth, n_agents, n_jobs, timeout_s)
        finally:
            sched.stop()


async def _case(
    sched: SchedulerProcess, depth: int, n_agents: int, n_jobs: int, timeout_s: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"deep_jobs": depth, "timed_out": False}
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        admin = {"Authorization": f"Bearer {sched.admin_token}"}
        async with http.post(
            f"{sched.url}/api/v1/tokens", json={"role": "submit", "name": "bench"}, headers=admin
        ) as r:
            created = orjson.loads(await r.read())
            if r.status != 201:
                raise RuntimeError(f"token create answered {r.status}: {created}")
        submit = {"Authorization": f"Bearer {created['token']}"}

        # The deep queue first, before any agent is there.
        deep_spec = {
            "image": "registry.example/batch/overnight:1",
            "command": ["true"],
            "resources": {"cpu": 0.1, "memory_mb": 16},
            "priority": DEEP_PRIORITY,
            "constraints": DEEP_CONSTRAINT,
        }
        t0 = time.perf_counter()
        deadline = t0 + timeout_s
        queued_deep = 0
        while queued_deep < depth:
            if time.perf_counter() > deadline:
                result["timed_out"] = True
                break
            n = min(BATCH, depth - queued_deep)
            async with http.post(
                f"{sched.url}/api/v1/jobs/batch", json={"jobs": [deep_spec] * n}, headers=submit
            ) as r:
                body = await r.read()
                if r.status != 201:
                    raise RuntimeError(f"batch submit answered {r.status}: {body[:500]!r}")
            queued_deep += n
        fill_s = time.perf_counter() - t0
        result["deep_queued"] = queued_deep
        result["deep_fill_s"] = round(fill_s, 3)
        result["deep_fill_jobs_per_s"] = round(queued_deep / fill_s) if queued_deep else None
        if result["timed_out"]:
            return result

        agents = [Agent(http, sched.url, f"sim-{i:04d}") for i in range(n_agents)]
        for i in range(0, n_agents, 50):
            await asyncio.gather(*(a.register(sched.join_token) for a in agents[i : i + 50]))
        completed: dict[str, float] = {}
        tasks = [asyncio.create_task(a.run(completed)) for a in agents]
        tasks += [asyncio.create_task(a.heartbeat_loop()) for a in agents]
        try:
            await asyncio.sleep(1.0)  # every agent's first long poll is waiting
            result.update(await _measure(http, sched.url, submit, n_jobs, completed, timeout_s))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with http.get(f"{sched.url}/api/v1/stats", headers=admin) as r:
            stats = orjson.loads(await r.read())
        with contextlib.suppress(KeyError, TypeError):
            result["queued_at_end"] = stats["jobs"]["queued"]
            result["completed_at_end"] = stats["jobs"]["completed"]
    return result


async def _measure(
    http: aiohttp.ClientSession,
    url: str,
    submit: dict[str, str],
    n_jobs: int,
    completed: dict[str, float],
    timeout_s: float,
) -> dict[str, Any]:
    spec = {
        "image": "busybox",
        "command": ["true"],
        "resources": {"cpu": 0.1, "memory_mb": 16},
        "priority": HIGH_PRIORITY,
    }
    latencies: list[float] = []
    ids: list[str] = []
    timed_out = False
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    for _ in range(n_jobs):
        if time.perf_counter() > deadline:
            timed_out = True
            break
        s = time.perf_counter()
        async with http.post(f"{url}/api/v1/jobs", json=spec, headers=submit) as r:
            body = await r.read()
            if r.status != 201:
                raise RuntimeError(f"submit answered {r.status}: {body[:500]!r}")
        latencies.append((time.perf_counter() - s) * 1000)
        ids.append(orjson.loads(body)["id"])
    t_submitted = time.perf_counter()
    while not timed_out and not all(i in completed for i in ids):
        if time.perf_counter() > deadline:
            timed_out = True
            break
        await asyncio.sleep(0.005)
    done = [completed[i] for i in ids if i in completed]
    end = max(done) if done and not timed_out else time.perf_counter()
    elapsed = end - t0
    lat = percentiles(latencies)
    return {
        "jobs": n_jobs,
        "submitted": len(ids),
        "completed": len(done),
        "timed_out": timed_out,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(len(done) / elapsed, 1) if elapsed > 0 else 0.0,
        "submit_s": round(t_submitted - t0, 3),
        "submit_ms_p50": lat["p50"],
        "submit_ms_p99": lat["p99"],
        "submit_ms_max": lat["max"],
    }


async def run_fair_case(
    n_agents: int, array_tasks: int, owners: int, timeout_s: float
) -> dict[str, Any]:
    """One owner's array of ``array_tasks`` tasks, then one job from each of ``owners``
    other owners, submitted while the array drains: how long each of those waits to be
    assigned (the fair-share order should place it at the next free slot)."""
    with tempfile.TemporaryDirectory() as tmp:
        sched = SchedulerProcess(Path(tmp) / "state", *FLAGS).start(timeout=60)
        try:
            return await _fair_case(sched, n_agents, array_tasks, owners, timeout_s)
        finally:
            sched.stop()


async def _submit_token(http: aiohttp.ClientSession, url: str, admin: str, name: str) -> str:
    async with http.post(
        f"{url}/api/v1/tokens",
        json={"role": "submit", "name": name},
        headers={"Authorization": f"Bearer {admin}"},
    ) as r:
        created = orjson.loads(await r.read())
        if r.status != 201:
            raise RuntimeError(f"token create answered {r.status}: {created}")
    return str(created["token"])


async def _fair_case(
    sched: SchedulerProcess, n_agents: int, array_tasks: int, owners: int, timeout_s: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"array_tasks": array_tasks, "owners": owners, "timed_out": False}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        flood = await _submit_token(http, sched.url, sched.admin_token, "flood")
        others = [
            await _submit_token(http, sched.url, sched.admin_token, f"owner-{i}")
            for i in range(owners)
        ]
        spec = {
            "image": "busybox",
            "command": ["true"],
            "resources": {"cpu": 0.1, "memory_mb": 16},
        }
        t0 = time.perf_counter()
        async with http.post(
            f"{sched.url}/api/v1/jobs",
            json={**spec, "array": {"count": array_tasks}},
            headers={"Authorization": f"Bearer {flood}"},
        ) as r:
            body = await r.read()
            if r.status != 201:
                raise RuntimeError(f"array submit answered {r.status}: {body[:500]!r}")
        result["array_submit_s"] = round(time.perf_counter() - t0, 3)

        agents = [Agent(http, sched.url, f"sim-{i:04d}") for i in range(n_agents)]
        for i in range(0, n_agents, 50):
            await asyncio.gather(*(a.register(sched.join_token) for a in agents[i : i + 50]))
        completed: dict[str, float] = {}
        assigned: dict[str, float] = {}
        tasks = [asyncio.create_task(a.run(completed, assigned)) for a in agents]
        tasks += [asyncio.create_task(a.heartbeat_loop()) for a in agents]
        waits: list[float] = []
        try:
            await asyncio.sleep(2.0)  # the array is draining
            submitted: dict[str, float] = {}
            for token in others:
                s = time.perf_counter()
                async with http.post(
                    f"{sched.url}/api/v1/jobs",
                    json=spec,
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    job = orjson.loads(await r.read())
                submitted[job["id"]] = s
                await asyncio.sleep(0.2)
            deadline = time.perf_counter() + timeout_s
            while not all(i in assigned for i in submitted):
                if time.perf_counter() > deadline:
                    result["timed_out"] = True
                    break
                await asyncio.sleep(0.005)
            waits = [assigned[i] - s for i, s in submitted.items() if i in assigned]
            array_done = sum(1 for job_id in completed if job_id not in submitted)
            result["array_tasks_completed_meanwhile"] = array_done
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    result["other_owners_started"] = len(waits)
    result["start_wait_s_median"] = round(statistics.median(waits), 3) if waits else None
    result["start_wait_s_max"] = round(max(waits), 3) if waits else None
    result["all_within_2s"] = len(waits) == owners and max(waits) <= TARGET_FAIR_START_S
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


async def bench(
    depths: list[int],
    n_agents: int,
    n_jobs: int,
    timeout_s: float,
    rounds: int,
    fair_array: int,
    fair_owners: int,
) -> dict[str, Any]:
    # Cases run in turn within each round, so that a slow stretch of a shared machine
    # falls on every case alike; each case's figure is its median over the rounds.
    names = ["empty", *(str(d) for d in depths)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(rounds):
        for depth in [0, *depths]:
            name = "empty" if depth == 0 else str(depth)
            case = await run_case(depth, n_agents, n_jobs, timeout_s)
            runs[name].append(case)
            # One line per case on stderr, so a long run shows progress.
            print(json.dumps({name: case}), file=sys.stderr, flush=True)
    fair_runs: list[dict[str, Any]] = []
    for _ in range(rounds if fair_array else 0):
        fair = await run_fair_case(n_agents, fair_array, fair_owners, timeout_s)
        fair_runs.append(fair)
        print(json.dumps({"fair": fair}), file=sys.stderr, flush=True)
    cases = {name: _median_case(runs[name]) for name in names}
    empty = cases["empty"]
    out: dict[str, Any] = {"agents": n_agents, "jobs": n_jobs, "rounds": rounds, "cases": cases}
    out["ratios"] = {
        name: _ratio(case.get("jobs_per_s"), empty.get("jobs_per_s"))
        for name, case in cases.items()
        if name != "empty"
    }
    for depth, key in ((20_000, "20k"), (100_000, "100k")):
        deep = cases.get(str(depth))
        out[f"ratio_{key}"] = _ratio(
            deep.get("jobs_per_s") if deep else None, empty.get("jobs_per_s")
        )
    deepest = cases.get("100000")
    out["submit_p99_ratio_100k"] = _ratio(
        deepest.get("submit_ms_p99") if deepest else None, empty.get("submit_ms_p99")
    )
    if fair_runs:
        out["fair"] = {
            **fair_runs[-1],
            "start_wait_s_median": statistics.median(
                r["start_wait_s_median"] for r in fair_runs if r["start_wait_s_median"] is not None
            ),
            "start_wait_s_max_rounds": [r["start_wait_s_max"] for r in fair_runs],
            "all_within_2s": all(r["all_within_2s"] for r in fair_runs),
        }
    r100, p100 = out["ratio_100k"], out["submit_p99_ratio_100k"]
    out["targets"] = {
        "ratio_100k": TARGET_RATIO_100K,
        "submit_p99_ratio_100k": TARGET_SUBMIT_P99_RATIO_100K,
        "ratio_100k_met": r100 is not None and r100 >= TARGET_RATIO_100K,
        "submit_p99_ratio_100k_met": p100 is not None and p100 <= TARGET_SUBMIT_P99_RATIO_100K,
    }
    return out


#: figures of a case reported as their median over the rounds (the rest: the last round)
_MEDIAN_FIGURES = ("jobs_per_s", "elapsed_s", "submit_s", "submit_ms_p50", "submit_ms_p99")


def _median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[-1])
    out["timed_out"] = any(r.get("timed_out") for r in runs)
    for key in _MEDIAN_FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    out["jobs_per_s_rounds"] = [r.get("jobs_per_s") for r in runs]
    out["submit_ms_p99_rounds"] = [r.get("submit_ms_p99") for r in runs]
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--depths", default="20000,100000", help="deep queue sizes, comma-separated")
    p.add_argument("--agents", type=int, default=500)
    p.add_argument("--jobs", type=int, default=2000, help="measured high-priority jobs")
    p.add_argument(
        "--rounds", type=int, default=3, help="every case runs this often; medians are reported"
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="per case: the deep fill, and then the measured run, each get this long",
    )
    p.add_argument(
        "--fair-array",
        type=int,
        default=100_000,
        help="the fair case: one owner's array of this many tasks (0: no fair case)",
    )
    p.add_argument("--fair-owners", type=int, default=10, help="the fair case's other owners")
    args = p.parse_args()
    depths = [int(d) for d in args.depths.split(",") if d.strip() and int(d) > 0]
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(
            bench(
                depths,
                args.agents,
                args.jobs,
                args.timeout_s,
                args.rounds,
                args.fair_array,
                args.fair_owners,
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
