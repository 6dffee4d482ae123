"""End-to-end throughput and latency of a real scheduler process over loopback HTTP.

500 simulated agents (one client process) register, long-poll their assignments and
report each job running then completed, exactly as the agent protocol says; a
submitter posts jobs with bounded concurrency. Prints one JSON object:

- jobs_per_s: jobs submitted -> assigned -> reported completed, per second of wall time
- submit_to_assignment_ms: p50/p99 from sending the submit to the agent holding the
  assignment, measured in a separate phase with free capacity and one job at a time

With ``--store postgresql`` the scheduler runs on PostgreSQL: a cluster of the bench's
own (``tests.pg``, fsync on as in production, stopped afterwards), or the empty
database a ``postgresql://`` DSN names. The JSON then says which store, and whether the
batched phase met its target on PostgreSQL (``targets_met``).

Run: ``python bench/e2e.py [--jobs 5000] [--agents 500] [--store sqlite|postgresql|DSN]``.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.loop import event_loop_factory
from tests.pg import find_bin, start_cluster
from tests.support import UNLIMITED, SchedulerProcess

#: batched jobs/s the scheduler is to reach on PostgreSQL
PG_BATCHED_TARGET = 1000


def valid_store(store: str) -> bool:
    """Whether ``--store`` names a store ``database`` knows."""
    return store in ("sqlite", "postgresql") or store.startswith(("postgresql://", "postgres://"))


@contextlib.contextmanager
def database(store: str) -> Iterator[str | None]:
    """The DSN for ``--store``: None for ``sqlite`` (the scheduler's state dir), the
    value itself for a DSN, and for ``postgresql`` a fresh database in a cluster of its
    own, with fsync on, as in production; the cluster is stopped afterwards."""
    if store == "sqlite":
        yield None
        return
    if store != "postgresql":
        yield store
        return
    bindir = find_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian package postgresql)")
    cluster = start_cluster(bindir, fsync=True)
    try:
        yield cluster.dsn(cluster.new_database())
    finally:
        cluster.stop()


class Agent:
    def __init__(self, http: aiohttp.ClientSession, url: str, name: str) -> None:
        self.http, self.url, self.name = http, url, name
        self.node_id = ""
        self.headers: dict[str, str] = {}
        self.after = 0

    async def register(self, join_token: str) -> None:
        body = {
            "name": self.name,
            "capacity": {"cpu": 8, "memory_mb": 16384},
            "max_parallel": 4,
            "executor": "process",
        }
        async with self.http.post(
            f"{self.url}/api/v1/nodes/register",
            json=body,
            headers={"Authorization": f"Bearer {join_token}"},
        ) as r:
            reply = orjson.loads(await r.read())
        self.node_id = reply["node_id"]
        self.headers = {"Authorization": f"Bearer {reply['node_token']}"}

    async def run(
        self,
        seen: dict[str, float],
        done: asyncio.Event,
        completed: list[int],
        mode: dict[str, bool],
    ) -> None:
        base = f"{self.url}/api/v1/nodes/{self.node_id}"
        while not done.is_set():
            try:
                async with self.http.get(
                    f"{base}/assignments",
                    params={"after": self.after, "wait": 30},
                    headers=self.headers,
                ) as r:
                    reply = orjson.loads(await r.read())
            except aiohttp.ClientError:
                continue
            now = time.perf_counter()
            self.after = reply["index"]
            for a in reply["assignments"]:
                seen.setdefault(a["job_id"], now)
            if mode["batched"] and reply["assignments"]:
                # One request reports every new job running, one reports them completed.
                for state in ("running", "completed"):
                    items = [
                        {"job_id": a["job_id"], "attempt": a["attempt"], "state": state}
                        | ({"exit_code": 0} if state == "completed" else {})
                        for a in reply["assignments"]
                    ]
                    async with self.http.post(
                        f"{base}/reports", json={"reports": items}, headers=self.headers
                    ) as r:
                        await r.read()
                completed[0] += len(reply["assignments"])
                continue
            for a in reply["assignments"]:
                for state in ("running", "completed"):
                    body: dict[str, Any] = {"attempt": a["attempt"], "state": state}
                    if state == "completed":
                        body["exit_code"] = 0
                    async with self.http.post(
                        f"{base}/jobs/{a['job_id']}/report", json=body, headers=self.headers
                    ) as r:
                        await r.read()
                completed[0] += 1

    async def heartbeat_loop(self, done: asyncio.Event) -> None:
        body = {"metrics": {"cpu_percent": 1, "ram_total_mb": 16384, "ram_free_mb": 16000}}
        while not done.is_set():
            await asyncio.sleep(5)
            async with self.http.post(
                f"{self.url}/api/v1/nodes/{self.node_id}/heartbeat", json=body, headers=self.headers
            ) as r:
                await r.read()


async def bench(
    n_agents: int, n_jobs: int, concurrency: int, n_latency: int, store: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, database(store) as dsn:
        flags = UNLIMITED if dsn is None else ("--store", dsn, *UNLIMITED)
        sched = SchedulerProcess(Path(tmp) / "state", *flags).start()
        try:
            result = await _run(sched, n_agents, n_jobs, concurrency, n_latency)
        finally:
            sched.stop()
    if dsn is None:
        return result
    batched = result["batched_requests"]["jobs_per_s"]
    return {
        "store": "postgresql",
        **result,
        "targets": {"batched_jobs_per_s": PG_BATCHED_TARGET},
        "targets_met": {"batched_jobs_per_s": batched >= PG_BATCHED_TARGET},
    }


async def _run(
    sched: SchedulerProcess, n_agents: int, n_jobs: int, concurrency: int, n_latency: int
) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        admin = {"Authorization": f"Bearer {sched.admin_token}"}
        agents = [Agent(http, sched.url, f"sim-{i:04d}") for i in range(n_agents)]
        for i in range(0, n_agents, 50):
            await asyncio.gather(*(a.register(sched.join_token) for a in agents[i : i + 50]))
        seen: dict[str, float] = {}
        done = asyncio.Event()
        completed = [0]
        mode = {"batched": False}
        tasks = [asyncio.create_task(a.run(seen, done, completed, mode)) for a in agents]
        tasks += [asyncio.create_task(a.heartbeat_loop(done)) for a in agents]
        await asyncio.sleep(0.5)
        spec = {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.5, "memory_mb": 64}}

        # Phase 1: latency, one job at a time with free capacity.
        latencies = []
        for _ in range(n_latency):
            t0 = time.perf_counter()
            async with http.post(f"{sched.url}/api/v1/jobs", json=spec, headers=admin) as r:
                job_id = orjson.loads(await r.read())["id"]
            while job_id not in seen:
                await asyncio.sleep(0.0002)
            latencies.append((seen[job_id] - t0) * 1000)
            # Let the previous job's reports finish: this phase measures latency, the
            # next one throughput.
            await asyncio.sleep(0.01)
        while completed[0] < n_latency:
            await asyncio.sleep(0.01)

        # Phase 2: throughput with one request per submit and per report.
        per_job = await _throughput(http, sched.url, admin, spec, n_jobs, concurrency, completed, 1)
        # Phase 3: the same with batched traffic: 100 specs per submit, one report
        # request per state for all the jobs an agent got in one poll.
        mode["batched"] = True
        batched = await _throughput(http, sched.url, admin, spec, n_jobs, 4, completed, 100)
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with http.get(f"{sched.url}/api/v1/stats", headers=admin) as r:
            stats = orjson.loads(await r.read())
    lat = sorted(latencies)
    return {
        "agents": n_agents,
        "jobs_per_phase": n_jobs,
        "per_job_requests": per_job,
        "batched_requests": batched,
        "completed_total": stats["jobs"]["completed"],
        "submit_to_assignment_ms": {
            "samples": len(lat),
            "p50": round(statistics.median(lat), 3),
            "p99": round(lat[int(len(lat) * 0.99) - 1], 3),
            "max": round(lat[-1], 3),
        },
        "targets": {"jobs_per_s": 1000, "submit_to_assignment_p99_ms": 10},
    }


async def _throughput(
    http: aiohttp.ClientSession,
    url: str,
    admin: dict[str, str],
    spec: dict[str, Any],
    n_jobs: int,
    concurrency: int,
    completed: list[int],
    per_request: int,
) -> dict[str, Any]:
    submitted = 0
    start_completed = completed[0]

    async def submitter() -> None:
        nonlocal submitted
        while submitted < n_jobs:
            n = min(per_request, n_jobs - submitted)
            submitted += n
            if per_request == 1:
                req = http.post(f"{url}/api/v1/jobs", json=spec, headers=admin)
            else:
                req = http.post(
                    f"{url}/api/v1/jobs/batch", json={"jobs": [spec] * n}, headers=admin
                )
            async with req as r:
                assert r.status == 201, await r.text()
                await r.read()

    t0 = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    t_submitted = time.perf_counter() - t0
    while completed[0] - start_completed < n_jobs:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    return {
        "specs_per_submit": per_request,
        "submit_concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(n_jobs / elapsed, 1),
        "submits_per_s": round(n_jobs / t_submitted, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--agents", type=int, default=500)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), postgresql (a cluster of its own, fsync on) or the DSN "
        "of an empty PostgreSQL database",
    )
    args = p.parse_args()
    if not valid_store(args.store):
        p.error("--store: sqlite, postgresql or a postgresql:// DSN")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(
            bench(args.agents, args.jobs, args.concurrency, args.latency_samples, args.store)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
