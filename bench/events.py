"""Latency of the live view of a real scheduler process over loopback.

Prints one JSON object with two figures:

- ``sse``: 100 SSE subscribers of ``/api/v1/events`` (two client processes on uvloop)
  while a simulated agent drives about 200 job state transitions per second (submit ->
  assigned -> running -> completed, each report its own request and commit). Latency is
  from the event's ``ts`` to the moment a subscriber's socket delivered its frame. The
  scheduler stamps ``ts`` when it makes the change, just before the change's group
  commit, so the figure includes the commit (fsync) as well as the fan-out. Everything
  runs on one machine, so both ends read the same clock.
- ``logs``: a container (the docker executor of a real agent; the process executor
  when dockerd does not answer) prints a line every 0.1 s with the kernel's boot-time
  clock (``/proc/uptime``, 10 ms steps), and a follower (``BerthClient.follow_logs``)
  notes when each line arrived on the same clock.

With ``--store postgresql`` the scheduler runs on PostgreSQL: a cluster of the bench's
own (``tests.pg``, fsync on as in production, stopped afterwards), or the empty
database a ``postgresql://`` DSN names; the ``ts`` then precedes the leader's commit to
the database. ``--standby`` adds a second scheduler on that database, standing by, and
half the subscribers (the second client process) subscribe to it instead: ``sse`` then
gives ``leader`` and ``standby`` figures from the same run, the latter from the leader
stamping the event, through its commit, the standby hearing of it (NOTIFY) and reading
it back, to the standby's subscriber. On PostgreSQL the JSON says whether the p99s met
their targets (``targets_met``).

Run: ``python bench/events.py [--seconds 15] [--subscribers 100] [--rate 200]
[--store sqlite|postgresql|DSN [--standby]]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import database, valid_store
from cli.loop import event_loop_factory
from common.client import BerthClient
from tests.support import UNLIMITED, SchedulerProcess

#: seconds at the start of the run left out of the figures
WARMUP_S = 2.0
#: how long a simulated job runs between its running and completed reports
HOLD_S = 0.1
LOG_LINES = 100
#: how long a standby may take to start and follow (seconds)
STANDBY_START_S = 60.0
#: commit -> SSE p99 targets (ms): on the leader (any store), on a standby
SSE_P99_MS = 50
STANDBY_SSE_P99_MS = 150
#: the id and the ts of an event frame (the event document starts with index, type, ts)
_FRAME = re.compile(
    rb'id: (\d+)\r\nevent: [^\r]*\r\ndata: \{"index":\d+,"type":"[^"]*","ts":"([^"]+)"'
)
LOG_SCRIPT = (
    f"i=0; while [ $i -lt {LOG_LINES} ]; do read up idle < /proc/uptime; "
    'echo "tick $i $up"; i=$((i+1)); sleep 0.1; done'
)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(p99, 2),
        "max": round(ordered[-1], 2),
    }


# --- the subscriber processes ------------------------------------------------------------


async def subscriber_process(url: str, token: str, count: int) -> None:
    """``count`` SSE subscribers; prints ``ready``, then on ``stop LO HI`` from stdin the
    latencies (ms) of the events in (LO, HI] and how many each subscriber got."""
    ts_of: dict[int, float] = {}
    samples: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    connected = asyncio.Semaphore(0)

    async def subscriber(n: int, http: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        mine = samples[n]
        async with http.get(f"{url}/api/v1/events", headers=headers) as resp:
            assert resp.status == 200
            connected.release()
            buf = b""
            while chunk := await resp.content.readany():
                now = time.time()
                buf += chunk
                end = buf.rfind(b"\r\n\r\n")
                if end < 0:
                    continue
                # Only the id and the ts of each complete frame matter here: a regular
                # expression keeps this process light next to the scheduler.
                for raw_index, raw_ts in _FRAME.findall(buf, 0, end + 4):
                    index = int(raw_index)
                    ts = ts_of.get(index)
                    if ts is None:
                        ts = ts_of[index] = datetime.fromisoformat(raw_ts.decode()).timestamp()
                    mine.append((index, (now - ts) * 1000))
                buf = buf[end + 4 :]

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(subscriber(n, http)) for n in range(count)]
        for _ in range(count):
            await connected.acquire()
        print("ready", flush=True)
        command = (await reader.readline()).decode().split()
        lo, hi = int(command[1]), int(command[2])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [lat for mine in samples for i, lat in mine if lo < i <= hi]
    counts = [sum(1 for i, _ in mine if lo < i <= hi) for mine in samples]
    print(json.dumps({"latencies": [round(x, 3) for x in latencies], "counts": counts}))


# --- the simulated agent -------------------------------------------------------------------


class SimulatedAgent:
    """Long-polls its assignments, reports each running, then completed after HOLD_S."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.node = ""
        self.headers: dict[str, str] = {}
        self.running: dict[str, int] = {}
        self.transitions = 0

    async def register(self, join_token: str) -> None:
        body = {
            "name": "bench-sim",
            "capacity": {"cpu": 1000, "memory_mb": 10**6},
            "max_parallel": 1000,
            "executor": "process",
            "labels": {"pool": "sim"},
        }
        async with self.http.post(
            f"{self.url}/api/v1/nodes/register",
            json=body,
            headers={"Authorization": f"Bearer {join_token}"},
        ) as r:
            reply = orjson.loads(await r.read())
        self.node = reply["node_id"]
        self.headers = {"Authorization": f"Bearer {reply['node_token']}"}

    async def report(self, job_id: str, attempt: int, state: str) -> None:
        body: dict[str, Any] = {"attempt": attempt, "state": state}
        if state == "completed":
            body["exit_code"] = 0
        async with self.http.post(
            f"{self.url}/api/v1/nodes/{self.node}/jobs/{job_id}/report",
            json=body,
            headers=self.headers,
        ) as r:
            await r.read()
        self.transitions += 1

    async def run_job(self, job_id: str, attempt: int) -> None:
        self.running[job_id] = attempt
        self.transitions += 1  # queued -> assigned, made by the scheduler
        await self.report(job_id, attempt, "running")
        await asyncio.sleep(HOLD_S)
        await self.report(job_id, attempt, "completed")
        self.running.pop(job_id, None)

    async def poll_loop(self) -> None:
        after = 0
        jobs: set[asyncio.Task[None]] = set()
        while True:
            async with self.http.get(
                f"{self.url}/api/v1/nodes/{self.node}/assignments",
                params={"after": after, "wait": 30},
                headers=self.headers,
            ) as r:
                reply = orjson.loads(await r.read())
            after = reply["index"]
            for a in reply["assignments"]:
                task = asyncio.create_task(self.run_job(a["job_id"], a["attempt"]))
                jobs.add(task)
                task.add_done_callback(jobs.discard)

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            body = {
                "metrics": {"cpu_percent": 1, "ram_total_mb": 10**6, "ram_free_mb": 10**6},
                "running": [{"job_id": j, "attempt": a} for j, a in self.running.items()],
            }
            async with self.http.post(
                f"{self.url}/api/v1/nodes/{self.node}/heartbeat", json=body, headers=self.headers
            ) as r:
                await r.read()


# --- the two measurements ------------------------------------------------------------------


async def current_index(http: aiohttp.ClientSession, url: str, admin: dict[str, str]) -> int:
    async with http.get(f"{url}/api/v1/events", params={"since": 10**12}, headers=admin) as r:
        return int(orjson.loads(await r.read())["index"])


async def measure_sse(
    sched: SchedulerProcess,
    seconds: float,
    subscribers: int,
    rate: float,
    standby: SchedulerProcess | None = None,
) -> dict[str, Any]:
    workers = []
    # Two client processes; with a standby, the second one subscribes to it.
    per_process = [
        (sched, subscribers // 2),
        (standby or sched, subscribers - subscribers // 2),
    ]
    for target, count in per_process:
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--subscriber",
                target.url,
                sched.admin_token,
                str(count),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for w in workers:
        assert w.stdout is not None
        line = await asyncio.wait_for(w.stdout.readline(), 60)
        assert line.strip() == b"ready", line

    admin = {"Authorization": f"Bearer {sched.admin_token}"}
    spec = {
        "image": "busybox",
        "command": ["true"],
        "resources": {"cpu": 0.1, "memory_mb": 16},
        "constraints": {"labels": {"pool": "sim"}},
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        agent = SimulatedAgent(http, sched.url)
        await agent.register(sched.join_token)
        loops = [
            asyncio.create_task(agent.poll_loop()),
            asyncio.create_task(agent.heartbeat_loop()),
        ]
        # Three transitions per job (assigned, running, completed).
        interval = 3.0 / rate

        async def submit() -> None:
            async with http.post(f"{sched.url}/api/v1/jobs", json=spec, headers=admin) as r:
                assert r.status == 201, await r.text()

        pending: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        lo = hi = 0
        transitions_at_lo = 0
        t_lo = start
        next_at = start
        while True:
            now = time.monotonic()
            if now - start >= WARMUP_S and not lo:
                lo, t_lo, transitions_at_lo = (
                    await current_index(http, sched.url, admin),
                    time.monotonic(),
                    agent.transitions,
                )
            if now - start >= WARMUP_S + seconds:
                break
            task = asyncio.create_task(submit())
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        hi = await current_index(http, sched.url, admin)
        t_hi = time.monotonic()
        transitions = agent.transitions - transitions_at_lo
        await asyncio.gather(*pending)
        # Let the last events reach every subscriber.
        await asyncio.sleep(1.0)
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    results = []
    for w in workers:
        assert w.stdin is not None and w.stdout is not None
        w.stdin.write(f"stop {lo} {hi}\n".encode())
        await w.stdin.drain()
        results.append(orjson.loads(await w.stdout.read()))
        await w.wait()
    window = t_hi - t_lo
    out: dict[str, Any] = {
        "subscribers": subscribers,
        "client_processes": len(workers),
        "measured_s": round(window, 1),
        "job_transitions_per_s": round(transitions / window, 1),
        "events_per_s": round((hi - lo) / window, 1),
        "events": hi - lo,
    }
    measured_from = (
        "the event's ts, stamped when the change is made just before its group "
        "commit (so the commit's fsync is included), to the subscriber's socket read"
    )
    if standby is None:
        out.update(_figures(results, hi - lo))
        return {**out, "measured_from": measured_from}
    leader_subscribers, standby_subscribers = per_process[0][1], per_process[1][1]
    return {
        **out,
        "leader": {"subscribers": leader_subscribers, **_figures(results[:1], hi - lo)},
        "standby": {"subscribers": standby_subscribers, **_figures(results[1:], hi - lo)},
        "measured_from": measured_from
        + " (the standby's: after it heard of the commit, read it back and applied it)",
    }


def _figures(results: list[Any], events: int) -> dict[str, Any]:
    """What the subscriber processes in ``results`` saw of the measured ``events``."""
    latencies = [x for r in results for x in r["latencies"]]
    counts = [c for r in results for c in r["counts"]]
    return {
        "samples": len(latencies),
        "every_subscriber_got_every_event": all(c == events for c in counts),
        "commit_to_subscriber_ms": percentiles(latencies),
    }


async def start_standby(
    leader: SchedulerProcess, state_dir: Path, flags: tuple[str, ...]
) -> SchedulerProcess:
    """A second scheduler on the leader's database; returns once it stands by and
    follows (``/readyz`` answers 200 "standby")."""
    standby = SchedulerProcess(state_dir, *flags)

    def start() -> None:
        # Only a scheduler that has led writes the token files that start() waits for;
        # the tokens live in the database, so the leader's are good here too.
        state_dir.mkdir(parents=True)
        for name in ("admin.token", "join.token"):
            shutil.copy2(leader.state_dir / name, state_dir / name)
        standby.start(STANDBY_START_S)

    try:
        await asyncio.to_thread(start)
        deadline = time.monotonic() + STANDBY_START_S
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    async with http.get(f"{standby.url}/readyz") as r:
                        if r.status == 200 and (await r.json())["status"] == "standby":
                            return standby
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby did not follow: {standby.log_path}")
                await asyncio.sleep(0.1)
    except BaseException:
        standby.kill()
        raise


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


async def measure_logs(sched: SchedulerProcess, root: Path) -> dict[str, Any]:
    from tests.e2e.conftest import AgentProcess, ensure_test_image

    executor = "docker" if docker_answers() else "process"
    image = ensure_test_image() if executor == "docker" else "busybox"
    agent = AgentProcess(
        sched,
        "bench-agent",
        root / "agent",
        "--executor",
        executor,
        "--max-parallel",
        "1",
        "--label",
        "pool=real",
        "--log-level",
        "warning",
    ).start()
    try:
        async with BerthClient(sched.url, sched.admin_token) as client:
            deadline = time.monotonic() + 60
            while not any(
                n.name == "bench-agent" and n.state in ("idle", "busy")
                for n in (await client.list_nodes()).nodes
            ):
                assert time.monotonic() < deadline, agent.log_text()[-2000:]
                await asyncio.sleep(0.2)
            from common.models import Constraints, JobResources, JobSpec

            job = await client.submit_job(
                JobSpec(
                    image=image,
                    command=LOG_SCRIPT,
                    resources=JobResources(cpu=0.5, memory_mb=64),
                    constraints=Constraints(labels={"pool": "real"}),
                    timeout_s=120,
                )
            )
            latencies: list[float] = []
            buf = b""
            async for chunk in client.follow_logs(job.id, attempt=1):
                now = time.clock_gettime(time.CLOCK_BOOTTIME)
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == b"tick":
                        latencies.append((now - float(parts[2])) * 1000)
            done = await client.get_job(job.id)
    finally:
        agent.kill()
        if executor == "docker":
            from tests.e2e.conftest import remove_containers_of

            remove_containers_of(root)
    return {
        "executor": executor,
        "job_state": done.state.value,
        "lines": len(latencies),
        "stdout_to_follower_ms": percentiles(latencies),
        "measured_from": (
            "/proc/uptime printed by the job with each line (10 ms steps) to the "
            "follower's read, on the same boot-time clock"
        ),
    }


async def bench(
    seconds: float, subscribers: int, rate: float, store: str, with_standby: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, database(store) as dsn:
        flags = UNLIMITED if dsn is None else ("--store", dsn, *UNLIMITED)
        sched = SchedulerProcess(Path(tmp) / "state", *flags).start()
        standby = None
        try:
            if with_standby:
                standby = await start_standby(sched, Path(tmp) / "standby", flags)
            sse = await measure_sse(sched, seconds, subscribers, rate, standby)
            logs = await measure_logs(sched, Path(tmp))
        finally:
            # The standby first: it would take the lead from a leader stopping first.
            if standby is not None:
                standby.stop()
            sched.stop()
    targets = {"commit_to_sse_p99_ms": SSE_P99_MS, "stdout_to_follower_p99_ms": 1500}
    if dsn is None:
        return {"sse": sse, "logs": logs, "targets": targets}
    on_leader = sse["leader"] if standby is not None else sse
    met = {"commit_to_sse_p99_ms": on_leader["commit_to_subscriber_ms"]["p99"] <= SSE_P99_MS}
    if standby is not None:
        targets["standby_commit_to_sse_p99_ms"] = STANDBY_SSE_P99_MS
        p99 = sse["standby"]["commit_to_subscriber_ms"]["p99"]
        met["standby_commit_to_sse_p99_ms"] = p99 <= STANDBY_SSE_P99_MS
    return {
        "store": "postgresql",
        "standby": standby is not None,
        "sse": sse,
        "logs": logs,
        "targets": targets,
        "targets_met": met,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds")
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--rate", type=float, default=200.0, help="job state transitions per second")
    p.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), postgresql (a cluster of its own, fsync on) or the DSN "
        "of an empty PostgreSQL database",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="a second scheduler standing by on the same PostgreSQL database; half the "
        "subscribers subscribe to it",
    )
    p.add_argument("--subscriber", nargs=3, metavar=("URL", "TOKEN", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not valid_store(args.store):
        p.error("--store: sqlite, postgresql or a postgresql:// DSN")
    if args.standby and args.store == "sqlite":
        p.error("--standby needs --store postgresql (or a DSN)")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        if args.subscriber:
            url, token, count = args.subscriber
            with contextlib.suppress(KeyboardInterrupt):
                runner.run(subscriber_process(url, token, int(count)))
            return
        result = runner.run(
            bench(args.seconds, args.subscribers, args.rate, args.store, args.standby)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
