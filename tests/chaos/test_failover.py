"""Three schedulers share one PostgreSQL database; the leader is killed, paused, and the
database itself restarted, while jobs are submitted and run without a pause.

The rig is real processes only: a throwaway PostgreSQL cluster of the module's own
(scenario c restarts it), three `berth scheduler` processes on one database, each with
its own state directory and ``--advertise-url``, and two `berth agent --executor
process` processes given all three URLs. A submitter (``BerthClient`` with all three
URLs) submits trivial jobs all along, each under an Idempotency-Key that it resends
until the submit is acknowledged. Each job's command records its run by creating the
file ``<markers>/<job id>-<attempt>`` with O_EXCL semantics (``set -C``); a second run
of the same (job, attempt) finds the file there, leaves a ``twice-`` file and fails. An
event follower (the client's SSE stream, all three URLs) records every event index.

Every write transaction of the stores is seen by audit triggers the test puts on the
``leader``, ``jobs`` and ``events`` tables: each row they log says which scheduler's
connection committed it (a custom setting in that scheduler's DSN) and who held the
epoch the transaction ran under. A fenced write rolls back with its audit rows, so a
row whose writer is not the epoch's holder is a write that fencing let through.

Scenarios, one test each, each on a fresh database:

a. the leader is SIGKILLed five times and started again as a standby each time; the
   seconds from each kill to the first acknowledged submit are printed;
b. the leader is SIGSTOPped for 20 s: a standby takes over meanwhile; once continued,
   the paused one commits nothing, stands by (listed as standby, ``/readyz?leader=1``
   answers 503, ``/readyz`` 200) and follows;
c. PostgreSQL is stopped (fast shutdown) and started again on the same data directory;
   the schedulers reconnect, one leads, and the work goes on.

After each: every acknowledged job completed, once; no (job, attempt) ran twice and
each completed job's final attempt ran; no job exists that was not acknowledged; the
follower saw every event index exactly once, in order, up to the last committed; the
events table has no hole; and every audited write was made by the epoch's holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from common.client import BerthClient
from common.errors import Unavailable
from common.models import Job, JobResources, JobSpec
from tests.chaos.conftest import Figures
from tests.e2e.conftest import AgentProcess, wait_for_nodes
from tests.pg import PgCluster, required_bin, start_cluster
from tests.support import SchedulerProcess, free_port

#: the schedulers' names, also their ids (kept in each state directory's scheduler.id)
NAMES = ("sched-a", "sched-b", "sched-c")
AGENTS = ("agent-1", "agent-2")
#: liveness as the other chaos tests set it: nodes go offline only after a real outage
SCHEDULER_FLAGS = (
    "--heartbeat-interval",
    "0.5",
    "--node-ttl",
    "10",
    "--restart-grace",
    "10",
    "--submit-rate",
    "0",
)
AGENT_PARALLEL = "3"
#: concurrent submit loops, and the pause of each between two submits
SUBMITTERS = 3
SUBMIT_PAUSE_S = 0.3
#: one request of the clients; a paused leader holds a request this long at most
CLIENT_TIMEOUT_S = 5.0
#: how long a submit is resent before the test gives up on it
SUBMIT_DEADLINE_S = 60.0
#: the event follower keeps reconnecting this long after it lost its stream
FOLLOW_RECONNECT_S = 120.0
#: the bound of each wait for the rig (a leader, a standby following, a first ack)
WAIT_S = 30.0
#: how long every acknowledged job may take to end once submitting stopped
SETTLE_S = 120.0
KILLS = 5
#: submits acknowledged between two faults, and before the first
BETWEEN_FAULTS = 15
PAUSE_S = 20.0
#: how long PostgreSQL stays down
PG_DOWN_S = 2.0
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}

# Row-level audit of every committed write to the tables a leader writes: the setting
# ``berth_test.who`` comes from the writer's DSN, the holder from the leader row as the
# writing transaction sees it (it holds that row's lock from its fence on).
AUDIT_SQL = """
CREATE TABLE fence_audit (
    n bigserial PRIMARY KEY, tbl text NOT NULL, key text, who text, epoch bigint,
    holder text, at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION fence_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    l record;
BEGIN
    SELECT epoch, holder INTO l FROM leader WHERE id = 1;
    INSERT INTO fence_audit (tbl, key, who, epoch, holder)
    VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> TG_ARGV[0],
            current_setting('berth_test.who', true), l.epoch, l.holder);
    RETURN NULL;
END $$;
CREATE TRIGGER fence_audit AFTER UPDATE ON leader
    FOR EACH ROW EXECUTE FUNCTION fence_audit('seq');
CREATE TRIGGER fence_audit AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION fence_audit('id');
CREATE TRIGGER fence_audit AFTER INSERT OR UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION fence_audit('idx');
"""


# --- the rig -----------------------------------------------------------------------------


@dataclass
class Scheduler:
    name: str
    proc: SchedulerProcess

    @property
    def url(self) -> str:
        return self.proc.url


class Rig:
    """PostgreSQL, three schedulers on one database, real agents and a client;
    ``audit`` puts the audit triggers on the database (see the module docstring)."""

    def __init__(
        self,
        cluster: PgCluster,
        root: Path,
        *,
        agents: tuple[str, ...] = AGENTS,
        audit: bool = True,
    ) -> None:
        self.cluster = cluster
        self.audit = audit
        self.root = root
        self.db = cluster.new_database()
        #: for the test's own queries (no ``who``: its writes are not audited)
        self.dsn = cluster.dsn(self.db)
        self.markers = root / "markers"
        self.markers.mkdir(parents=True, exist_ok=True)
        self.schedulers: dict[str, Scheduler] = {}
        for name in NAMES:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            store = f"{self.dsn}&berth_test.who={name}"
            proc = SchedulerProcess(
                root / name,
                "--store",
                store,
                "--advertise-url",
                url,
                *SCHEDULER_FLAGS,
                port=port,
            )
            self.schedulers[name] = Scheduler(name, proc)
        self.agent_names = agents
        self.agents: list[AgentProcess] = []
        self.client: BerthClient | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.schedulers.values()]

    async def start(self) -> None:
        """The first scheduler alone (it leads and writes the tokens), the audit, then
        the standbys with the same tokens, then the agents."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        first, *others = self.schedulers.values()
        for s in self.schedulers.values():
            s.proc.state_dir.mkdir(parents=True)
            # Its id is its name, so that the leader row and the audit read plainly.
            (s.proc.state_dir / "scheduler.id").write_text(s.name + "\n")
        await asyncio.to_thread(first.proc.start, WAIT_S)
        await self.wait_ready(first, leader=True)
        if self.audit:
            await self.sql(AUDIT_SQL)
        for s in others:
            for token in ("admin.token", "join.token"):
                shutil.copy2(first.proc.state_dir / token, s.proc.state_dir / token)
            await asyncio.to_thread(s.proc.start, WAIT_S)
        for s in others:
            await self.wait_ready(s)
        self.client = self.new_client()
        for name in self.agent_names:
            agent = AgentProcess(
                first.proc,
                name,
                self.root / name,
                "--executor",
                "process",
                "--max-parallel",
                AGENT_PARALLEL,
                scheduler_url=",".join(self.urls),
            )
            self.agents.append(agent.start())
        await wait_for_nodes(self.client, list(self.agent_names), timeout=WAIT_S)

    def new_client(self) -> BerthClient:
        token = next(iter(self.schedulers.values())).proc.admin_token
        return BerthClient(self.urls, token, timeout=CLIENT_TIMEOUT_S)

    async def close(self) -> None:
        for agent in self.agents:
            agent.kill()
        for s in self.schedulers.values():
            if s.proc.proc is not None and s.proc.proc.poll() is None:
                # A paused process takes no SIGKILL until it runs again: continue it.
                s.proc.proc.send_signal(signal.SIGCONT)
            s.proc.kill()
        if self.client is not None:
            await self.client.close()
        if self._http is not None:
            await self._http.close()

    # --- the database ------------------------------------------------------------------

    async def sql(self, statement: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def leader_row(self) -> tuple[int, str | None]:
        (row,) = await self.fetch("SELECT epoch, holder FROM leader WHERE id = 1")
        return int(row["epoch"]), row["holder"]

    # --- the schedulers ----------------------------------------------------------------

    async def readyz(self, s: Scheduler, *, leader: bool = False) -> int:
        """The status /readyz answers (0: no answer within a second)."""
        assert self._http is not None
        params = {"leader": "1"} if leader else {}
        try:
            async with self._http.get(s.url + "/readyz", params=params) as r:
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def wait_ready(self, s: Scheduler, *, leader: bool = False) -> None:
        """Until ``s`` leads (``leader``) or stands by and follows."""
        deadline = time.monotonic() + WAIT_S
        while await self.readyz(s, leader=leader) != 200:
            if time.monotonic() > deadline:
                raise AssertionError(f"{s.name} not ready (leader={leader}) in {WAIT_S:g} s")
            await asyncio.sleep(0.05)

    async def leader(self, *, epoch_above: int = 0, other_than: str = "") -> tuple[Scheduler, int]:
        """The scheduler that leads, once the epoch passed ``epoch_above`` and it says so
        itself (``/readyz?leader=1``); with its epoch."""
        deadline = time.monotonic() + WAIT_S
        while True:
            epoch, holder = await self.leader_row()
            s = self.schedulers.get(holder or "")
            wanted = s is not None and epoch > epoch_above and s.name != other_than
            if s is not None and wanted and await self.readyz(s, leader=True) == 200:
                return s, epoch
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader past epoch {epoch_above} in {WAIT_S:g} s")
            await asyncio.sleep(0.05)

    async def restart(self, s: Scheduler) -> None:
        """Start ``s`` again after a kill; it comes back as a standby that follows."""
        await asyncio.to_thread(s.proc.start, WAIT_S)
        await self.wait_ready(s)


# --- the load ------------------------------------------------------------------------------


def marker_command(markers: Path) -> str:
    """A shell command that records its (job, attempt) run once: a second run of the
    same pair finds the marker there, leaves a ``twice-`` file and exits 3."""
    mark = f'"{markers}/$BERTH_JOB_ID-$BERTH_ATTEMPT"'
    twice = f'"{markers}/twice-$BERTH_JOB_ID-$BERTH_ATTEMPT-$$"'
    # In a subshell: a special builtin's failed redirection ends the shell it runs in.
    return f"if ! (set -C; : > {mark}) 2>/dev/null; then : > {twice}; exit 3; fi"


def marker_spec(markers: Path, name: str) -> JobSpec:
    return JobSpec(
        image="berth-test/busybox:1",
        name=name,
        command=marker_command(markers),
        resources=JobResources(cpu=0.1, memory_mb=16),
        max_retries=3,
        retry_delay_s=0.2,
        timeout_s=60,
    )


@dataclass
class Load:
    """Submit loops on one client: acknowledged job ids per key, and when each submit
    call began and was acknowledged."""

    client: BerthClient
    markers: Path
    prefix: str
    submitters: int = SUBMITTERS
    pause_s: float = SUBMIT_PAUSE_S
    acked: dict[str, str] = field(default_factory=dict)
    #: keys answered with two different job ids (a resend made a second job)
    forked: list[str] = field(default_factory=list)
    #: (monotonic start of the submit call, monotonic time it was acknowledged)
    calls: list[tuple[float, float]] = field(default_factory=list)
    #: submit sends refused as unavailable (no leader reachable yet), then resent
    resends: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.submitters)]

    async def stop(self) -> None:
        """Stop submitting; each loop finishes the submit it is in (until acknowledged)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        """Stop submitting at once (a test that failed half-way)."""
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self.submit(f"{self.prefix}-{next(self._numbers):05d}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pause_s)

    async def submit(self, key: str) -> Job:
        """Send one submit until it is acknowledged, always under the same key."""
        started = time.monotonic()
        while True:
            try:
                job = await self.client.submit_job(marker_spec(self.markers, key), key)
                break
            except Unavailable:
                # No leader reachable within the client's own retries: a failover.
                if time.monotonic() - started > SUBMIT_DEADLINE_S:
                    raise
                self.resends += 1
                await asyncio.sleep(0.05)
        self.calls.append((started, time.monotonic()))
        earlier = self.acked.setdefault(key, job.id)
        if earlier != job.id:
            self.forked.append(key)
        return job

    def first_ack_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first acknowledgement of a submit sent after it
        (a reply the old leader had sent before ``t`` does not count)."""
        after = [acked for started, acked in self.calls if started >= t]
        return min(after) - t if after else None

    async def wait_acks(self, n: int) -> None:
        """Until ``n`` more submits are acknowledged."""
        want = len(self.calls) + n
        deadline = time.monotonic() + WAIT_S
        while len(self.calls) < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} submits not acknowledged within {WAIT_S:g} s")
            await asyncio.sleep(0.05)

    async def wait_ack_after(self, t: float) -> float:
        deadline = time.monotonic() + WAIT_S
        while (got := self.first_ack_after(t)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no submit acknowledged within {WAIT_S:g} s of the fault")
            await asyncio.sleep(0.01)
        return got


@dataclass
class Follower:
    """The event stream through the client, from the first event on."""

    client: BerthClient
    #: event indexes in the order they arrived
    seen: list[int] = field(default_factory=list)
    #: (wall-clock time, job id) of each job.state event to completed
    completed: list[tuple[float, str]] = field(default_factory=list)
    resets: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        stream = self.client.stream_events(since=0, reconnect_for=FOLLOW_RECONNECT_S)
        async for ev in stream:
            if ev.get("type") == "reset":
                self.resets.append(ev)
                continue
            if ev["type"] in ("stats.sample", "job.usage"):
                # Told live only: they carry the index of the last stored event.
                continue
            self.seen.append(int(ev["index"]))
            data = ev.get("data") or {}
            if ev["type"] == "job.state" and data.get("state") == "completed":
                self.completed.append((datetime.fromisoformat(ev["ts"]).timestamp(), ev["job_id"]))

    async def wait_for(self, index: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while not self.seen or max(self.seen) < index:
            assert self._task is not None
            if self._task.done():
                self._task.result()
                raise AssertionError("the event stream ended")
            if time.monotonic() > deadline:
                got = max(self.seen) if self.seen else None
                raise AssertionError(f"the follower got to {got}, not {index}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def first_completed_after(self, wall: float) -> float | None:
        after = [ts for ts, _ in self.completed if ts >= wall]
        return min(after) - wall if after else None


# --- the checks ----------------------------------------------------------------------------


async def all_jobs(client: BerthClient) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    cursor: str | None = None
    while True:
        page = await client.list_jobs(limit=1000, cursor=cursor)
        jobs.update((j.id, j) for j in page.jobs)
        cursor = page.next_cursor
        if not cursor:
            return jobs


async def settle(client: BerthClient, ids: set[str]) -> dict[str, Job]:
    """Every job, once every acknowledged one has ended (or SETTLE_S passed)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        jobs = await all_jobs(client)
        if all(i in jobs and jobs[i].state in TERMINAL for i in ids):
            return jobs
        if time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(0.5)


def read_markers(markers: Path) -> tuple[set[tuple[str, int]], list[str]]:
    """The (job, attempt) pairs that ran, and the names of second runs' files."""
    ran: set[tuple[str, int]] = set()
    twice: list[str] = []
    for name in os.listdir(markers):
        if name.startswith("twice-"):
            twice.append(name)
            continue
        job_id, _, attempt = name.rpartition("-")
        ran.add((job_id, int(attempt)))
    return ran, twice


async def check_all(rig: Rig, load: Load, follower: Follower, fig: Figures) -> None:
    """Stop the load, let every acknowledged job end, and check what the module
    docstring promises after each scenario."""
    await load.stop()
    assert rig.client is not None
    ids = set(load.acked.values())
    fig.jobs = fig.acknowledged = len(ids)
    t_settle = time.monotonic()
    jobs = await settle(rig.client, ids)
    fig.extra["settle_s"] = round(time.monotonic() - t_settle, 2)
    states = Counter(str(jobs[i].state) if i in jobs else "missing" for i in ids)
    fig.terminal = sum(n for s, n in states.items() if s in TERMINAL)
    fig.losses = sum(n for s, n in states.items() if s != "completed")

    ran, twice = read_markers(rig.markers)
    final_ran = {i for i in ids if i in jobs and (i, jobs[i].attempt) in ran}
    strays = sorted((j, a) for j, a in ran if j not in ids or (j in jobs and a > jobs[j].attempt))
    earlier_completed = [
        i for i in ids if i in jobs and any(str(a.state) == "completed" for a in jobs[i].attempts)
    ]
    phantoms = sorted(set(jobs) - ids)
    fig.duplicates = len(twice) + len(load.forked) + len(earlier_completed)

    # The follower and the event table, up to what is committed now.
    (row,) = await rig.fetch("SELECT count(*) AS n, min(idx) AS lo, max(idx) AS hi FROM events")
    await follower.wait_for(row["hi"])
    seen = follower.seen
    first = seen[0] if seen else None
    repeated = [i for i, n in Counter(seen).items() if n > 1]
    in_order = seen == list(range(seen[0], seen[0] + len(seen))) if seen else False

    bad_writes = await rig.fetch(
        "SELECT tbl, key, who, epoch, holder FROM fence_audit "
        "WHERE who IS DISTINCT FROM holder ORDER BY n LIMIT 5"
    )
    (audited,) = await rig.fetch("SELECT count(*) AS n FROM fence_audit")
    epochs = await rig.fetch(
        "SELECT epoch, holder, min(n) AS first, count(*) AS writes FROM fence_audit "
        "GROUP BY epoch, holder ORDER BY min(n)"
    )
    fig.extra.update(
        {
            "states": dict(states),
            "resent_submits": load.resends,
            "markers": len(ran),
            "reruns": len(ran) - len(ids),
            "events_seen": len(seen),
            "first_event_seen": first,
            "last_event_committed": row["hi"],
            "stream_resets": len(follower.resets),
            "audited_writes": audited["n"],
            "epochs": [(r["epoch"], r["holder"], r["writes"]) for r in epochs],
        }
    )
    assert ids, "nothing was acknowledged"
    missing = sorted(i for i in ids if i not in jobs)
    if missing:
        # Whether the leader's memory or the database lost it, and who wrote it if so.
        stored = await rig.fetch(
            "SELECT key, who, epoch, holder FROM fence_audit WHERE key = ANY($1::text[])",
            missing,
        )
        keys = [k for k, i in load.acked.items() if i in missing]
        raise AssertionError(f"acknowledged, missing: {keys}, written: {[*map(dict, stored)]}")
    assert dict(states) == {"completed": len(ids)}, dict(states)
    assert not load.forked, f"resent submits made second jobs: {load.forked[:5]}"
    assert not phantoms, f"jobs nobody acknowledged: {phantoms[:5]}"
    assert not twice, f"(job, attempt) pairs that ran twice: {twice[:5]}"
    assert not strays, f"runs of no acknowledged job or of a later attempt: {strays[:5]}"
    assert not earlier_completed, f"an earlier attempt completed: {earlier_completed[:5]}"
    assert len(final_ran) == states["completed"], "a completed job's final attempt never ran"
    assert not follower.resets, follower.resets[:2]
    assert not repeated, f"events seen twice: {repeated[:10]}"
    assert in_order, f"events seen out of order or with gaps: {_gaps(seen)[:10]}"
    assert row["n"] == row["hi"] - row["lo"] + 1, "the events table has a hole"
    assert not bad_writes, [dict(r) for r in bad_writes]
    # The epochs follow one another, each with one holder.
    assert [r["epoch"] for r in epochs] == sorted({r["epoch"] for r in epochs})


def _gaps(seen: list[int]) -> list[tuple[int, int]]:
    """(previous, next) where the indexes do not go up by one."""
    return [(a, b) for a, b in itertools.pairwise(seen) if b != a + 1]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failover_pg() -> Iterator[PgCluster]:
    """A PostgreSQL cluster for this module alone: scenario c restarts it."""
    cluster = start_cluster(required_bin())
    yield cluster
    cluster.stop()


@pytest.fixture
async def rig(failover_pg: PgCluster, tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(failover_pg, tmp_path)
    try:
        await r.start()
        yield r
    finally:
        await r.close()


@pytest.fixture
async def loaded(rig: Rig) -> AsyncIterator[tuple[Load, Follower]]:
    """The submit loops and the event follower, running on the rig."""
    assert rig.client is not None
    load = Load(rig.client, rig.markers, "job")
    follower = Follower(rig.new_client())
    follower.start()
    load.start()
    try:
        yield load, follower
    finally:
        await load.cancel()
        await follower.stop()
        await follower.client.close()


# --- the scenarios -------------------------------------------------------------------------


async def test_leader_killed_five_times_under_load_loses_and_repeats_nothing(
    rig: Rig, loaded: tuple[Load, Follower], figures: Figures
) -> None:
    """Five SIGKILLs of the leader, each followed by a takeover and the killed one's
    return as a standby, under continuous submits: nothing acknowledged is lost or run
    twice, no event is missed or repeated, each epoch has one writer."""
    load, follower = loaded
    figures.suite = "failover_kill"
    to_ack: list[float] = []
    kill_walls: list[float] = []
    killed_epoch = 0
    await load.wait_acks(BETWEEN_FAULTS)
    for n in range(1, KILLS + 1):
        leader, killed_epoch = await rig.leader(epoch_above=killed_epoch)
        kill_walls.append(time.time())
        t_kill = time.monotonic()
        leader.proc.kill()
        figures.faults += 1
        took = await load.wait_ack_after(t_kill)
        to_ack.append(round(took, 3))
        print(f"kill {n} of {leader.name}: first acknowledged submit after {took:.3f} s")
        # Three stay up: the killed one comes back, as a standby.
        await rig.restart(leader)
        await load.wait_acks(BETWEEN_FAULTS)
    figures.extra["kill_to_first_ack_s"] = to_ack
    figures.extra["kill_to_first_ack_s_median"] = round(statistics.median(to_ack), 3)
    await check_all(rig, load, follower, figures)
    to_done = [follower.first_completed_after(w) for w in kill_walls]
    figures.extra["kill_to_first_completed_s"] = [
        None if t is None else round(t, 3) for t in to_done
    ]
    epochs = {e for e, _, _ in figures.extra["epochs"]}
    assert len(epochs) >= KILLS + 1, epochs


async def test_paused_leader_is_fenced_and_comes_back_as_a_standby(
    rig: Rig, loaded: tuple[Load, Follower], figures: Figures
) -> None:
    """A leader frozen for 20 s loses the lead to a standby; continued, it commits
    nothing once the new epoch began, stands by and says so (its own line in the list,
    /readyz, /readyz?leader=1), and the event stream it served goes on without a gap."""
    load, follower = loaded
    figures.suite = "failover_pause"
    await load.wait_acks(BETWEEN_FAULTS)
    paused, old_epoch = await rig.leader()
    assert paused.proc.proc is not None
    t_stop = time.monotonic()
    paused.proc.proc.send_signal(signal.SIGSTOP)
    figures.faults = 1
    try:
        successor, new_epoch = await rig.leader(epoch_above=old_epoch, other_than=paused.name)
        took_over = time.monotonic() - t_stop
        to_ack = await load.wait_ack_after(t_stop)
        print(
            f"paused {paused.name}: {successor.name} led after {took_over:.2f} s, "
            f"first acknowledged submit after {to_ack:.3f} s"
        )
        await asyncio.sleep(max(0.0, t_stop + PAUSE_S - time.monotonic()))
    finally:
        paused.proc.proc.send_signal(signal.SIGCONT)
    t_cont = time.time()

    # The continued process finds its lead gone: it stands by, and says so itself.
    deadline = time.monotonic() + WAIT_S
    while True:
        noted = await rig.fetch(
            "SELECT role, extract(epoch FROM seen)::float8 AS seen FROM schedulers WHERE id = $1",
            paused.name,
        )
        standby = noted and noted[0]["role"] == "standby" and noted[0]["seen"] > t_cont
        if standby and await rig.readyz(paused) == 200:
            break
        assert time.monotonic() < deadline, f"{paused.name} did not stand by: {noted}"
        await asyncio.sleep(0.1)
    assert await rig.readyz(paused, leader=True) == 503
    assert rig.client is not None
    listed = {s["id"]: s for s in await rig.client.schedulers()}
    assert listed[paused.name]["role"] == "standby", listed
    assert listed[successor.name]["role"] == "leader", listed
    assert (await rig.leader_row()) == (new_epoch, successor.name)
    await load.wait_acks(BETWEEN_FAULTS)

    # Nothing the paused one wrote committed once the new epoch began.
    late = await rig.fetch(
        "SELECT tbl, key, epoch FROM fence_audit WHERE who = $1 AND n > "
        "(SELECT min(n) FROM fence_audit WHERE epoch >= $2) LIMIT 5",
        paused.name,
        new_epoch,
    )
    figures.extra.update(
        {
            "takeover_s": round(took_over, 3),
            "pause_to_first_ack_s": round(to_ack, 3),
            "old_epoch": old_epoch,
            "new_epoch": new_epoch,
        }
    )
    assert not late, [dict(r) for r in late]
    await check_all(rig, load, follower, figures)


async def test_postgresql_restart_under_load_resumes_work(
    rig: Rig, loaded: tuple[Load, Follower], figures: Figures
) -> None:
    """PostgreSQL restarted under load: every scheduler loses its connections and the
    leader its lock; once the database is back one of them leads a new epoch, work
    resumes, and nothing acknowledged before, during or after is lost or repeated."""
    load, follower = loaded
    figures.suite = "failover_pg_restart"
    await load.wait_acks(BETWEEN_FAULTS)
    _, old_epoch = await rig.leader()
    t_down = time.monotonic()
    await asyncio.to_thread(rig.cluster.restart, PG_DOWN_S)
    figures.faults = 1
    t_up = time.monotonic()
    leader, epoch = await rig.leader(epoch_above=old_epoch)
    to_ack = await load.wait_ack_after(t_up)
    print(
        f"PostgreSQL down {t_up - t_down:.2f} s; {leader.name} leads (epoch {epoch}); "
        f"first acknowledged submit {to_ack:.3f} s after it was up"
    )
    figures.extra.update(
        {
            "pg_down_s": round(t_up - t_down, 3),
            "up_to_first_ack_s": round(to_ack, 3),
            "epoch_before": old_epoch,
            "epoch_after": epoch,
        }
    )
    await load.wait_acks(2 * BETWEEN_FAULTS)
    await check_all(rig, load, follower, figures)
