"""Thousands of simulated agents on one scheduler: what a heartbeat costs, what a node
costs in memory, and end-to-end throughput while every node heartbeats.

For each size in ``--nodes`` (default 5,000) a real `berth scheduler` process starts on a
fresh state directory (SQLite, as it ships: synchronous=FULL), and the simulated agents
are spread over ``--clients`` client processes (default 2). Each agent has a client
session of its own, as a real agent does, so the scheduler holds two connections per
node: its long poll and its keep-alive for heartbeats and reports. Each agent registers
with the join token, then, from one common start time, holds one long poll for
assignments open (re-polling when it returns, with ``wait`` = the register reply's
``assignment_wait_s``) and heartbeats at the register reply's ``heartbeat_interval_s``
with metrics like a real host's (CPU, free RAM, load, free disk) and the attempts it
runs. The agents' first heartbeats are spread evenly over one interval, so heartbeats
arrive at a steady N / interval per second. An assignment is reported running, then
completed, one request each.

Every poll opens at the common start time and the first ones wait past the measuring
window (``--window-s``, after one interval and a second to settle), so the window holds
heartbeats and nothing else; the ends of those first polls are spread over what is left
of ``assignment_wait_s``, so the re-polls that follow do not come all at once. Over the
window the bench reads the scheduler process's CPU time (psutil, user + system, every
thread) and counts heartbeats answered 200:

- ``heartbeat_cpu_us``: scheduler CPU microseconds per heartbeat (all the window's
  scheduler CPU, the liveness loop and any timers included, over the heartbeats handled);
  ``heartbeat_cpu_us_slices``: the same per slice of about 2 s (median, min, max), which
  a full garbage collection or a burst of other work on a shared machine moves less
- ``scheduler_cpu_fraction``: scheduler CPU seconds per wall second in the window
- ``heartbeat_ms``: p50/p99 of a heartbeat's round trip, as the agents saw it
- ``rss_per_node_kb``: (scheduler RSS with N nodes - RSS before the first node) / N;
  ``rss_marginal_kb`` in the curve: the RSS growth from the previous size, per node
- ``open_fds``: the scheduler's open descriptors with N nodes (and with none)
- ``scheduler_cpu_fraction_empty``: the scheduler's CPU with no node, read for a few
  seconds before the first registers; ``heartbeat_cpu_net_us`` is the cost per heartbeat
  less that; ``heartbeat_cpu_marginal_us`` in the curve: the CPU the nodes added since
  the previous size, per heartbeat they added

At the largest size (at every size with ``--e2e-all``) ``--jobs`` jobs then go from a
separate client in this process, one POST /api/v1/jobs per job with ``--concurrency``
requests in flight, while every node keeps heartbeating: ``e2e.jobs_per_s`` is jobs over
the time from the first submit to the last completed report. The phase ends at
``--e2e-timeout-s`` at the latest (submits stop then too), with ``timed_out`` set.

The bench raises its soft RLIMIT_NOFILE to the hard limit before it starts anything, so
the scheduler and the client processes inherit it.

Prints one JSON object: ``sizes`` (one entry per size), ``heartbeat_cpu_ratio``
(cost per heartbeat at the largest size / at the smallest, measured in this run: 1.0 is
flat; ``heartbeat_cpu_ratio_slice_medians`` the same of the slice medians), the e2e
figures and the targets. Progress goes to stderr, with the scheduler's pid for a
profiler (``py-spy record -p PID``) and the time the heartbeat window starts.

Run: ``python bench/scale_nodes.py [--nodes 500,1000,2000,5000] [--clients 2]
[--window-s 12] [--jobs 5000] [--concurrency 64] [--e2e-all] [--e2e-timeout-s 120]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.loop import event_loop_factory
from tests.support import UNLIMITED, SchedulerProcess

#: e2e jobs/s the scheduler is to reach with 5,000 nodes heartbeating
TARGET_JOBS_PER_S = 1000
#: nodes the e2e target is stated for
TARGET_NODES = 5000
#: the cost per heartbeat at the largest size may be this much above the smallest's
FLAT_RATIO = 1.25

#: slots of a client process's shared counters
HB_OK, HB_FAILED, POLLS, ASSIGNED, COMPLETED, REPORT_FAILED = range(6)
N_COUNTERS = 6

#: seconds between progress lines on stderr in a long phase
PROGRESS_S = 5.0
#: the heartbeat window is read in slices of about this many seconds too
SLICE_S = 2.0
#: seconds the scheduler's CPU is read with no node registered
IDLE_S = 3.0
#: registrations in flight per client process
REGISTER_CONCURRENCY = 32
#: seconds a heartbeat or a report may take before it counts as failed
REQUEST_TIMEOUT_S = 30.0
#: a simulated host
CAPACITY = {"cpu": 8, "memory_mb": 16384}
MAX_PARALLEL = 4
RAM_TOTAL_MB = 16384
JSON = {"Content-Type": "application/json"}


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); the new pair."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


# --- a client process: many simulated agents ----------------------------------------------


class Agent:
    """One simulated worker host with a client session of its own."""

    def __init__(self, url: str, name: str, counters: Any, latencies: list[float]) -> None:
        self.url, self.name = url, name
        self.counters = counters
        self.latencies = latencies
        self.http: aiohttp.ClientSession | None = None
        self.node_id = ""
        self.headers: dict[str, str] = {}
        self.after = 0
        self.heartbeat_interval_s = 5.0
        self.assignment_wait_s = 30.0
        self.running: dict[str, int] = {}
        self.rng = random.Random(name)

    async def register(self, join_token: str) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        body = {
            "name": self.name,
            "capacity": CAPACITY,
            "labels": {"rack": f"r{self.rng.randrange(40)}"},
            "max_parallel": MAX_PARALLEL,
            "executor": "process",
        }
        async with self.http.post(
            f"{self.url}/api/v1/nodes/register",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {join_token}", **JSON},
        ) as r:
            reply = orjson.loads(await r.read())
            if r.status != 200:
                raise RuntimeError(f"register answered {r.status}: {reply}")
        self.node_id = reply["node_id"]
        self.headers = {"Authorization": f"Bearer {reply['node_token']}", **JSON}
        self.heartbeat_interval_s = float(reply["heartbeat_interval_s"])
        self.assignment_wait_s = float(reply["assignment_wait_s"])

    def _metrics(self) -> dict[str, Any]:
        rng = self.rng
        busy = len(self.running)
        return {
            "cpu_percent": round(min(100.0, rng.uniform(1, 15) + 20 * busy), 1),
            "ram_total_mb": RAM_TOTAL_MB,
            "ram_free_mb": RAM_TOTAL_MB - 1800 - 64 * busy - rng.randrange(200),
            "load1": round(rng.uniform(0.0, 0.6) + busy, 2),
            "disk_free_mb": 180_000 - rng.randrange(1000),
        }

    async def heartbeat_loop(self, first_at: float) -> None:
        assert self.http is not None
        url = f"{self.url}/api/v1/nodes/{self.node_id}/heartbeat"
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        next_at = first_at
        while True:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            next_at += self.heartbeat_interval_s
            body = {
                "metrics": self._metrics(),
                "running": [{"job_id": j, "attempt": a} for j, a in self.running.items()],
            }
            t0 = time.perf_counter()
            try:
                async with self.http.post(
                    url, data=orjson.dumps(body), headers=self.headers, timeout=timeout
                ) as r:
                    reply = orjson.loads(await r.read())
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError, ValueError):
                ok = False
            if ok:
                self.counters[HB_OK] += 1
                self.latencies.append((time.perf_counter() - t0) * 1000)
                self.heartbeat_interval_s = float(reply["heartbeat_interval_s"])
            else:
                self.counters[HB_FAILED] += 1
            # A late heartbeat does not make the next ones bunch up.
            next_at = max(next_at, time.time())

    async def poll_loop(self, first_at: float, first_wait: float) -> None:
        """Long polls from ``first_at`` on; the first waits ``first_wait``, the others
        as long as the scheduler allows."""
        assert self.http is not None
        await asyncio.sleep(max(0.0, first_at - time.time()))
        base = f"{self.url}/api/v1/nodes/{self.node_id}"
        wait = first_wait
        while True:
            try:
                async with self.http.get(
                    f"{base}/assignments",
                    params={"after": self.after, "wait": wait},
                    headers=self.headers,
                ) as r:
                    reply = orjson.loads(await r.read())
                    ok = r.status == 200
            except (aiohttp.ClientError, ValueError):
                ok = False
            self.counters[POLLS] += 1
            wait = self.assignment_wait_s
            if not ok:
                await asyncio.sleep(0.1)
                continue
            self.after = reply["index"]
            self.counters[ASSIGNED] += len(reply["assignments"])
            for a in reply["assignments"]:
                self.running[a["job_id"]] = a["attempt"]
            for a in reply["assignments"]:
                await self._report(base, a["job_id"], a["attempt"])

    async def _report(self, base: str, job_id: str, attempt: int) -> None:
        assert self.http is not None
        ok = True
        for state in ("running", "completed"):
            body: dict[str, Any] = {"attempt": attempt, "state": state}
            if state == "completed":
                body["exit_code"] = 0
            try:
                async with self.http.post(
                    f"{base}/jobs/{job_id}/report", data=orjson.dumps(body), headers=self.headers
                ) as r:
                    await r.read()
                    ok = ok and r.status == 200
            except aiohttp.ClientError:
                ok = False
        self.running.pop(job_id, None)
        self.counters[COMPLETED if ok else REPORT_FAILED] += 1

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


async def _register_all(agents: list[Agent], join_token: str) -> None:
    sem = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(agent: Agent) -> None:
        async with sem:
            await agent.register(join_token)

    await asyncio.gather(*(one(a) for a in agents))


def client_main(
    url: str, first: int, count: int, total: int, conn: Connection, counters: Any
) -> None:
    """A client process: agents ``first`` .. ``first + count - 1`` of ``total``, driven
    by commands on ``conn``."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_client(url, first, count, total, conn, counters))


async def _client(
    url: str, first: int, count: int, total: int, conn: Connection, counters: Any
) -> None:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    agents = [Agent(url, f"sim-{first + i:05d}", counters, latencies) for i in range(count)]
    tasks: list[asyncio.Task[None]] = []
    try:
        while True:
            cmd, arg = await loop.run_in_executor(None, conn.recv)
            if cmd == "register":
                t0 = time.perf_counter()
                await _register_all(agents, arg)
                conn.send(
                    {
                        "registered": count,
                        "elapsed_s": time.perf_counter() - t0,
                        "heartbeat_interval_s": agents[0].heartbeat_interval_s,
                        "assignment_wait_s": agents[0].assignment_wait_s,
                    }
                )
            elif cmd == "start":
                # Every poll opens at ``start_at``, and none returns before ``quiet_s``
                # has passed; the first heartbeats are spread evenly over one interval,
                # the ends of the first polls over what is left of the longest wait.
                start_at, quiet_s = arg
                for i, agent in enumerate(agents):
                    share = (first + i) / total
                    offset = agent.heartbeat_interval_s * share
                    longest = agent.assignment_wait_s
                    first_wait = min(longest, quiet_s + max(0.0, longest - quiet_s) * share)
                    tasks.append(asyncio.create_task(agent.poll_loop(start_at, first_wait)))
                    tasks.append(asyncio.create_task(agent.heartbeat_loop(start_at + offset)))
                # What every agent keeps for the run (sessions, connections, tasks) is
                # kept out of this process's collections: a full collection over it
                # stalls this loop and would be counted as the scheduler's latency.
                gc.collect()
                gc.freeze()
                conn.send({"started": len(agents)})
            elif cmd == "latencies":
                conn.send({"heartbeat_ms": list(latencies)})
                latencies.clear()
            elif cmd == "stop":
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
        conn.send({"stopped": True})


# --- the bench process ----------------------------------------------------------------------


class Clients:
    """The client processes of one size and their shared counters."""

    def __init__(self, url: str, n_nodes: int, n_procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.counters: list[SynchronizedArray[Any]] = []
        self.procs: list[Any] = []
        n_procs = max(1, min(n_procs, n_nodes))
        for p in range(n_procs):
            first = n_nodes * p // n_procs
            count = n_nodes * (p + 1) // n_procs - first
            parent, child = ctx.Pipe()
            counters = ctx.Array("q", N_COUNTERS, lock=False)
            proc = ctx.Process(
                target=client_main,
                args=(url, first, count, n_nodes, child, counters),
                daemon=True,
            )
            proc.start()
            self.conns.append(parent)
            self.counters.append(counters)
            self.procs.append(proc)

    def ask(self, cmd: str, arg: Any = None) -> list[dict[str, Any]]:
        for c in self.conns:
            c.send((cmd, arg))
        return [c.recv() for c in self.conns]

    def total(self, slot: int) -> int:
        return sum(int(c[slot]) for c in self.counters)

    def snapshot(self) -> dict[str, int]:
        names = ("heartbeats", "heartbeats_failed", "polls", "assigned", "completed")
        slots = (HB_OK, HB_FAILED, POLLS, ASSIGNED, COMPLETED)
        out = {name: self.total(slot) for name, slot in zip(names, slots, strict=True)}
        out["reports_failed"] = self.total(REPORT_FAILED)
        return out

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("stop")
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


@dataclass(frozen=True)
class Options:
    clients: int
    window_s: float
    #: e2e jobs at this size (0: no e2e phase)
    jobs: int
    concurrency: int
    e2e_timeout_s: float


async def run_size(n_nodes: int, opts: Options) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sched = SchedulerProcess(Path(tmp) / "state", *UNLIMITED).start(timeout=60)
        try:
            return await _size(sched, n_nodes, opts)
        finally:
            sched.stop()


async def _size(sched: SchedulerProcess, n_nodes: int, opts: Options) -> dict[str, Any]:
    assert sched.proc is not None
    proc = psutil.Process(sched.proc.pid)
    # For a profiler to attach to (py-spy record -p PID).
    print(json.dumps({"nodes": n_nodes, "scheduler_pid": proc.pid}), file=sys.stderr, flush=True)
    out: dict[str, Any] = {"nodes": n_nodes}
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=None)
    ) as http:
        admin = {"Authorization": f"Bearer {sched.admin_token}"}
        # A few reads first, so what the first requests allocate is not counted per node.
        for path in ("/api/v1/stats", "/api/v1/nodes", "/api/v1/jobs", "/metrics"):
            async with http.get(f"{sched.url}{path}", headers=admin) as r:
                await r.read()
        # The scheduler's own CPU with no node: its timers and loops.
        cpu0, w0 = cpu_s(proc), time.perf_counter()
        await asyncio.sleep(IDLE_S)
        idle = (cpu_s(proc) - cpu0) / (time.perf_counter() - w0)
        rss0 = proc.memory_info().rss
        fds0 = proc.num_fds()

        clients = await loop.run_in_executor(None, Clients, sched.url, n_nodes, opts.clients)
        try:
            t0 = time.perf_counter()
            replies = await loop.run_in_executor(None, clients.ask, "register", sched.join_token)
            reg_s = time.perf_counter() - t0
            out["register_s"] = round(reg_s, 3)
            out["registers_per_s"] = round(sum(r["registered"] for r in replies) / reg_s, 1)
            interval = replies[0]["heartbeat_interval_s"]
            poll_wait = replies[0]["assignment_wait_s"]
            # One interval for every agent's first heartbeat, one second for the polls
            # that all open at start_at; then the window, which ends before any poll
            # returns.
            settle_s = interval + 1.0
            window_s = min(opts.window_s, max(1.0, poll_wait - settle_s - 1.0))
            quiet_s = settle_s + window_s + 1.0
            start_at = time.time() + 1.0
            await loop.run_in_executor(None, clients.ask, "start", (start_at, quiet_s))
            await asyncio.sleep(max(0.0, start_at - time.time()) + settle_s)
            out["heartbeat_interval_s"] = interval
            out["load_avg_1m"] = round(os.getloadavg()[0], 2)
            out.update(await _window(proc, clients, window_s, idle))
            out["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
            out["rss_empty_mb"] = round(rss0 / 2**20, 1)
            out["rss_per_node_kb"] = round((proc.memory_info().rss - rss0) / n_nodes / 1024, 2)
            out["open_fds"] = proc.num_fds()
            out["open_fds_empty"] = fds0
            if opts.jobs > 0:
                out["e2e"] = await _e2e(http, sched.url, admin, clients, proc, opts)
        finally:
            await loop.run_in_executor(None, clients.stop)
    return out


async def _window(
    proc: psutil.Process, clients: Clients, window_s: float, idle: float
) -> dict[str, Any]:
    """Heartbeats only: the scheduler's CPU and the heartbeats answered over window_s."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, clients.ask, "latencies")  # drop the settling ones
    print(json.dumps({"window_s": window_s, "starts": time.time()}), file=sys.stderr, flush=True)
    before = clients.snapshot()
    cpu0, ccpu0, w0 = cpu_s(proc), clients.cpu_s(), time.perf_counter()
    # The window in slices too: a slice's figure is not moved by what happened in the
    # others (a full collection, a burst of other work on the machine).
    slices: list[float] = []
    n_slices = max(1, round(window_s / SLICE_S))
    at_cpu, at_beats = cpu0, before["heartbeats"]
    for k in range(n_slices):
        await asyncio.sleep(max(0.0, w0 + window_s * (k + 1) / n_slices - time.perf_counter()))
        now_cpu, now_beats = cpu_s(proc), clients.total(HB_OK)
        if now_beats > at_beats:
            slices.append((now_cpu - at_cpu) / (now_beats - at_beats) * 1e6)
        at_cpu, at_beats = now_cpu, now_beats
    cpu1, ccpu1, w1 = cpu_s(proc), clients.cpu_s(), time.perf_counter()
    after = clients.snapshot()
    lat: list[float] = []
    for r in await loop.run_in_executor(None, clients.ask, "latencies"):
        lat += r["heartbeat_ms"]
    beats = after["heartbeats"] - before["heartbeats"]
    wall = w1 - w0
    cpu = cpu1 - cpu0
    return {
        "window_s": round(wall, 3),
        "heartbeats": beats,
        "heartbeats_failed": after["heartbeats_failed"] - before["heartbeats_failed"],
        "heartbeats_per_s": round(beats / wall, 1),
        "polls_returned_in_window": after["polls"] - before["polls"],
        "scheduler_cpu_s": round(cpu, 3),
        "heartbeat_cpu_us": round(cpu / beats * 1e6, 1) if beats else None,
        "heartbeat_cpu_us_slices": {
            "slice_s": round(window_s / n_slices, 2),
            "median": round(statistics.median(slices), 1) if slices else None,
            "min": round(min(slices), 1) if slices else None,
            "max": round(max(slices), 1) if slices else None,
        },
        # Less what the scheduler spends with no node at all.
        "heartbeat_cpu_net_us": round((cpu - idle * wall) / beats * 1e6, 1) if beats else None,
        "scheduler_cpu_fraction": round(cpu / wall, 3),
        "scheduler_cpu_fraction_empty": round(idle, 4),
        "clients_cpu_fraction": round((ccpu1 - ccpu0) / wall, 3),
        "heartbeat_ms": percentiles(lat),
    }


async def _e2e(
    http: aiohttp.ClientSession,
    url: str,
    admin: dict[str, str],
    clients: Clients,
    proc: psutil.Process,
    opts: Options,
) -> dict[str, Any]:
    """opts.jobs submitted one request each; done when every one was reported completed,
    or at opts.e2e_timeout_s (submits stop then too)."""
    n_jobs, concurrency = opts.jobs, opts.concurrency
    spec = orjson.dumps(
        {"image": "busybox", "command": ["true"], "resources": {"cpu": 0.5, "memory_mb": 64}}
    )
    headers = {**admin, **JSON}
    start = clients.snapshot()
    submitted = 0
    failed = 0
    cpu0, t0 = cpu_s(proc), time.perf_counter()
    deadline = t0 + opts.e2e_timeout_s

    async def submitter() -> None:
        nonlocal submitted, failed
        while submitted < n_jobs and time.perf_counter() < deadline:
            submitted += 1
            async with http.post(f"{url}/api/v1/jobs", data=spec, headers=headers) as r:
                await r.read()
                if r.status != 201:
                    failed += 1

    def progress() -> None:
        now = clients.snapshot()
        line = {k: now[k] - start[k] for k in ("assigned", "completed", "reports_failed")}
        line["submitted"] = submitted
        print(json.dumps({"e2e": line}), file=sys.stderr, flush=True)

    async def show_progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            progress()

    shower = asyncio.create_task(show_progress())
    try:
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        t_submitted = time.perf_counter() - t0
        while time.perf_counter() < deadline:
            if clients.total(COMPLETED) - start["completed"] >= submitted - failed:
                break
            await asyncio.sleep(0.005)
    finally:
        shower.cancel()
    done = clients.total(COMPLETED) - start["completed"]
    elapsed = time.perf_counter() - t0
    cpu = cpu_s(proc) - cpu0
    end = clients.snapshot()
    async with http.get(f"{url}/api/v1/stats", headers=admin) as r:
        stats = orjson.loads(await r.read())
    return {
        "jobs": n_jobs,
        "submitted": submitted,
        "completed": done,
        "submits_failed": failed,
        "reports_failed": end["reports_failed"] - start["reports_failed"],
        "timed_out": done < n_jobs - failed,
        "submit_concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(done / elapsed, 1),
        "submits_per_s": round(submitted / t_submitted, 1),
        "scheduler_cpu_fraction": round(cpu / elapsed, 3),
        "heartbeats_during": end["heartbeats"] - start["heartbeats"],
        "heartbeats_failed_during": end["heartbeats_failed"] - start["heartbeats_failed"],
        "assigned": end["assigned"] - start["assigned"],
        "jobs_by_state_at_end": stats.get("jobs"),
    }


async def bench(sizes: list[int], opts: Options, e2e_all: bool) -> dict[str, Any]:
    soft, hard = raise_fd_limit()
    results: list[dict[str, Any]] = []
    for n in sizes:
        jobs = opts.jobs if (e2e_all or n == sizes[-1]) else 0
        res = await run_size(n, replace(opts, jobs=jobs))
        if results:
            # What the nodes added since the previous size cost: the scheduler's fixed
            # costs (timers, loops) fall out.
            prev = results[-1]
            grown = (res["rss_mb"] - prev["rss_mb"]) * 1024
            res["rss_marginal_kb"] = round(grown / (n - prev["nodes"]), 2)
            more_cpu = res["scheduler_cpu_s"] / res["window_s"]
            more_cpu -= prev["scheduler_cpu_s"] / prev["window_s"]
            more_beats = res["heartbeats"] / res["window_s"]
            more_beats -= prev["heartbeats"] / prev["window_s"]
            res["heartbeat_cpu_marginal_us"] = (
                round(more_cpu / more_beats * 1e6, 1) if more_beats > 0 else None
            )
        results.append(res)
        print(json.dumps(res), file=sys.stderr, flush=True)
    first, last = results[0], results[-1]
    out: dict[str, Any] = {
        "clients": opts.clients,
        "nofile_limit": [soft, hard],
        "sizes": results,
    }
    if first["heartbeat_cpu_us"] and last["heartbeat_cpu_us"]:
        out["heartbeat_cpu_ratio"] = round(last["heartbeat_cpu_us"] / first["heartbeat_cpu_us"], 3)
    lo, hi = first["heartbeat_cpu_us_slices"]["median"], last["heartbeat_cpu_us_slices"]["median"]
    if lo and hi:
        out["heartbeat_cpu_ratio_slice_medians"] = round(hi / lo, 3)
    e2e = last.get("e2e")
    out["e2e_jobs_per_s"] = e2e["jobs_per_s"] if e2e else None
    out["targets"] = {
        "e2e_jobs_per_s": TARGET_JOBS_PER_S,
        "nodes": TARGET_NODES,
        "heartbeat_cpu_ratio_at_most": FLAT_RATIO,
        "e2e_met": bool(
            e2e and last["nodes"] >= TARGET_NODES and e2e["jobs_per_s"] >= TARGET_JOBS_PER_S
        ),
        "flat_met": len(results) > 1 and out.get("heartbeat_cpu_ratio", 99) <= FLAT_RATIO,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", default="5000", help="sizes, comma-separated, e.g. 500,1000,5000")
    p.add_argument("--clients", type=int, default=2, help="client processes for the agents")
    p.add_argument("--window-s", type=float, default=12.0, help="heartbeat-only window")
    p.add_argument("--jobs", type=int, default=5000, help="e2e jobs (0: no e2e phase)")
    p.add_argument("--concurrency", type=int, default=64, help="submits in flight")
    p.add_argument("--e2e-all", action="store_true", help="the e2e phase at every size")
    p.add_argument(
        "--e2e-timeout-s", type=float, default=120.0, help="the e2e phase ends then at the latest"
    )
    args = p.parse_args()
    sizes = sorted({int(n) for n in args.nodes.split(",") if n.strip() and int(n) > 0})
    if not sizes:
        p.error("--nodes: at least one size")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        opts = Options(
            clients=args.clients,
            window_s=args.window_s,
            jobs=args.jobs,
            concurrency=args.concurrency,
            e2e_timeout_s=args.e2e_timeout_s,
        )
        result = runner.run(bench(sizes, opts, args.e2e_all))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
