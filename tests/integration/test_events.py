"""The event stream of a real scheduler process: exact replay across reconnects, SSE and
WebSocket alike, filters, retention resets, subscribers that leave or stall, and the
`berth events` / `berth watch` commands.

Every comparison is against the plain JSON pages of ``/api/v1/events``, which read the
same committed history the streams replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import REPO, Api, SchedulerProcess, SimAgent, wait_until

SSE = {"Accept": "text/event-stream"}
SPEC = {"image": "busybox", "command": ["true"], "resources": {"cpu": 1, "memory_mb": 64}}
#: a job no node matches: it stays queued and takes no agent's capacity
UNPLACED = {**SPEC, "constraints": {"labels": {"pool": "nowhere"}}}
#: how long any single wait in these tests may take on a loaded machine
DEADLINE_S = 60.0
#: samples told live only, never stored or replayed (scheduler.bus): not part of the
#: stored sequences these tests compare
LIVE_ONLY = frozenset({"stats.sample", "job.usage"})


# --- reading the stream ------------------------------------------------------------------


@dataclass
class Frame:
    id: str | None
    event: str
    data: str

    @property
    def doc(self) -> Any:
        return orjson.loads(self.data)

    @property
    def index(self) -> int:
        return int(self.id or 0)


def parse_frames(buf: bytes) -> tuple[list[Frame], bytes]:
    """The complete server-sent events in ``buf`` and the bytes of an unfinished one."""
    text = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    frames: list[Frame] = []
    *blocks, rest = text.split(b"\n\n")
    for block in blocks:
        ident, event, data = None, "message", []
        for line in block.decode().split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                ident = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
        if data and event not in LIVE_ONLY:
            frames.append(Frame(ident, event, "\n".join(data)))
    return frames, rest


async def page_events(
    api: Api, since: int, upto: int, params: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every stored event in (since, upto], through the JSON pages."""
    out: list[dict[str, Any]] = []
    after = since
    while True:
        status, page = await api.get("/api/v1/events", params={"since": after, **(params or {})})
        assert status == 200, page
        batch = [e for e in page["events"] if e["index"] <= upto]
        out.extend(batch)
        if len(batch) < len(page["events"]) or not page["events"] or page["next"] >= upto:
            return out
        after = page["next"]


async def current_index(api: Api) -> int:
    status, page = await api.get("/api/v1/events", params={"since": 10**12})
    assert status == 200, page
    index: int = page["index"]
    return index


async def read_sse_until(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    stop_at: int,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> list[Frame]:
    """Frames of one SSE connection up to index ``stop_at``, once one at or past it came."""
    frames: list[Frame] = []
    buf = b""
    hdrs = {"Authorization": f"Bearer {token}", **SSE, **(headers or {})}
    async with asyncio.timeout(DEADLINE_S):
        async with http.get(url, params=params, headers=hdrs) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            while not frames or frames[-1].index < stop_at:
                chunk = await resp.content.readany()
                assert chunk, "the stream ended early"
                got, buf = parse_frames(buf + chunk)
                frames.extend(got)
            resp.close()
    return [f for f in frames if f.index <= stop_at]


def same_events(frames: list[Frame], expected: list[dict[str, Any]]) -> None:
    """The frames carry exactly the expected events, in order, ids and types included."""
    assert [f.index for f in frames] == [e["index"] for e in expected]
    for f, e in zip(frames, expected, strict=True):
        assert f.id == str(e["index"])
        assert f.event == e["type"]
        assert f.doc == e


# --- a workload of jobs and an agent ------------------------------------------------------


@dataclass
class Workload:
    """Drives jobs through their states with a simulated agent and an admin client."""

    admin: Api
    agent: SimAgent
    jobs: list[str] = field(default_factory=list)

    async def beat(self) -> None:
        for cmd in await self.agent.heartbeat():
            if cmd["action"] == "cancel":
                self.agent.running.pop(cmd["job_id"], None)

    async def assigned(self, job_id: str) -> bool:
        """Wait a little for the job's assignment; False if it has none (cancelled)."""
        deadline = time.monotonic() + 2.0
        while job_id not in self.agent.running:
            _, job = await self.admin.get(f"/api/v1/jobs/{job_id}")
            if job["state"] != "queued" and job_id not in self.agent.running:
                # Assignments are handed out once committed, which may be a moment
                # after the job reads as assigned: a short long poll waits for that.
                await self.agent.poll(wait=1.0)
                return job_id in self.agent.running
            if time.monotonic() > deadline:
                return False
            await self.agent.poll(wait=0.5)
        return True

    async def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "submit":
            if op[1] == 1:
                status, job = await self.admin.post("/api/v1/jobs", SPEC)
                assert status == 201, job
                self.jobs.append(job["id"])
            else:
                status, body = await self.admin.post("/api/v1/jobs/batch", {"jobs": [SPEC] * op[1]})
                assert status == 201, body
                self.jobs.extend(j["id"] for j in body["jobs"])
            return
        if kind == "heartbeat":
            await self.beat()
            return
        if kind == "drain":
            path = f"/api/v1/nodes/{self.agent.node_id}/drain"
            assert (await self.admin.post(path, {"drain": True, "reason": "test"}))[0] == 200
            assert (await self.admin.post(path, {"drain": False}))[0] == 200
            return
        if not self.jobs:
            return
        job_id = self.jobs[op[1] % len(self.jobs)]
        if kind == "cancel":
            await self.admin.post(f"/api/v1/jobs/{job_id}/cancel")
            return
        if not await self.assigned(job_id):
            return
        if kind == "start":
            await self.agent.report(job_id, "running")
        elif kind == "progress":
            await self.agent.report(job_id, None, progress={"percent": op[2], "message": "x"})
        elif kind == "finish":
            await self.agent.report(job_id, "running")
            exit_code = 0 if op[2] == "completed" else 3
            await self.agent.report(job_id, op[2], exit_code=exit_code)


OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 3)),
    st.tuples(st.just("start"), st.integers(0, 40)),
    st.tuples(st.just("progress"), st.integers(0, 40), st.integers(0, 100)),
    st.tuples(st.just("finish"), st.integers(0, 40), st.sampled_from(["completed", "failed"])),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("drain")),
)
FIXED_OPS: list[tuple[Any, ...]] = [
    ("submit", 3),
    ("start", 0),
    ("progress", 0, 30),
    ("submit", 1),
    ("drain",),
    ("finish", 1, "completed"),
    ("cancel", 2),
    ("progress", 0, 60),
    ("heartbeat",),
    ("finish", 0, "failed"),
    ("submit", 2),
    ("start", 4),
    ("cancel", 3),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[SchedulerProcess]:
    """One scheduler for the tests that only add jobs; heartbeats are not needed often."""
    proc = SchedulerProcess(
        tmp_path_factory.mktemp("events") / "state", "--heartbeat-interval", "30"
    ).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
async def live_http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=DEADLINE_S)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def live_admin(live: SchedulerProcess, live_http: aiohttp.ClientSession) -> Api:
    return Api(live_http, live.url, live.admin_token)


@pytest.fixture(scope="module")
async def workload(
    live: SchedulerProcess, live_http: aiohttp.ClientSession, live_admin: Api
) -> Workload:
    agent = SimAgent(
        live_http, live.url, live.join_token, "w1", cpu=1000, memory_mb=10**6, max_parallel=1000
    )
    await agent.register()
    return Workload(live_admin, agent)


# --- exact replay --------------------------------------------------------------------------


async def read_with_cuts(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    since: int,
    cuts: list[int],
    final: Callable[[], int | None],
) -> list[Frame]:
    """Read the stream from ``since``, dropping connection i after ``cuts[i]`` bytes and
    reconnecting with Last-Event-ID as a browser's EventSource does: only complete
    frames count. Stops once the event with index ``final()`` arrived."""
    collected: list[Frame] = []
    last: int | None = None
    deadline = time.monotonic() + DEADLINE_S

    def reached() -> bool:
        done = final()
        return done is not None and bool(collected) and collected[-1].index >= done

    for cut in [*cuts, None]:
        headers = {"Authorization": f"Bearer {token}", **SSE}
        params: dict[str, Any] = {}
        if last is None:
            params["since"] = since
        else:
            headers["Last-Event-ID"] = str(last)
        buf = b""
        conn: list[Frame] = []
        async with http.get(url, params=params, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            while cut is None or len(buf) < cut:
                if final() is not None and conn and conn[-1].index >= (final() or 0):
                    break
                assert time.monotonic() < deadline, "the stream is too slow"
                want = cut - len(buf) if cut is not None else 65536
                try:
                    chunk = await asyncio.wait_for(resp.content.read(want), 0.5)
                except TimeoutError:
                    if cut is not None and final() is not None:
                        break  # nothing more is coming: cut here
                    continue
                assert chunk, "the server ended the stream"
                buf += chunk
                conn, _ = parse_frames(buf)
            # Drop the connection, mid-frame or not.
            resp.close()
        collected.extend(conn)
        if conn:
            last = conn[-1].index
        if reached():
            break
    return collected


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=3, max_size=18), cuts=st.lists(st.integers(1, 2500), max_size=7))
async def test_reconnecting_with_last_event_id_gives_exactly_the_missed_events(
    live: SchedulerProcess,
    live_http: aiohttp.ClientSession,
    live_admin: Api,
    workload: Workload,
    ops: list[tuple[Any, ...]],
    cuts: list[int],
) -> None:
    """While a random workload runs, a reader drops its connection after random numbers
    of bytes (often mid-frame) and reconnects with Last-Event-ID. What it collected is
    exactly the stored history after its start: every event once, in order."""
    start = await current_index(live_admin)
    final: int | None = None

    async def drive() -> None:
        nonlocal final
        # Something always happens: a run starts with a submit.
        for op in [("submit", 1), *ops]:
            await workload.run(op)
        final = await current_index(live_admin)

    reader = asyncio.create_task(
        read_with_cuts(
            live_http, f"{live.url}/api/v1/events", live.admin_token, start, cuts, lambda: final
        )
    )
    await drive()
    assert final is not None
    frames = await reader
    frames = [f for f in frames if f.index <= final]
    expected = await page_events(live_admin, start, final)
    assert expected, "the workload made no events"
    same_events(frames, expected)


async def test_last_event_id_wins_over_since(
    live: SchedulerProcess, live_http: aiohttp.ClientSession, live_admin: Api, workload: Workload
) -> None:
    start = await current_index(live_admin)
    for op in FIXED_OPS[:4]:
        await workload.run(op)
    final = await current_index(live_admin)
    expected = await page_events(live_admin, start, final)
    middle = expected[len(expected) // 2]["index"]
    frames = await read_sse_until(
        live_http,
        f"{live.url}/api/v1/events",
        live.admin_token,
        final,
        params={"since": start},
        headers={"Last-Event-ID": str(middle)},
    )
    same_events(frames, [e for e in expected if e["index"] > middle])


async def test_without_since_the_stream_is_live_only(
    live: SchedulerProcess, live_http: aiohttp.ClientSession, live_admin: Api
) -> None:
    before = await current_index(live_admin)
    headers = {"Authorization": f"Bearer {live.admin_token}", **SSE}
    async with asyncio.timeout(DEADLINE_S):
        async with live_http.get(f"{live.url}/api/v1/events", headers=headers) as resp:
            # The subscription exists once the headers are sent.
            assert resp.status == 200
            status, job = await live_admin.post("/api/v1/jobs", SPEC)
            assert status == 201
            buf = b""
            frames: list[Frame] = []
            while not any(f.doc.get("job_id") == job["id"] for f in frames):
                buf += await resp.content.readany()
                frames, _ = parse_frames(buf)
            resp.close()
    assert all(f.index > before for f in frames)
    mine = [f for f in frames if f.doc.get("job_id") == job["id"]]
    assert mine[0].event == "job.created"


async def test_json_page_holds_at_most_1000_events_and_says_where_to_go_on(
    live_admin: Api,
) -> None:
    start = await current_index(live_admin)
    status, _ = await live_admin.post("/api/v1/jobs/batch", {"jobs": [UNPLACED] * 1000})
    assert status == 201
    status, _ = await live_admin.post("/api/v1/jobs/batch", {"jobs": [UNPLACED] * 200})
    assert status == 201
    status, page = await live_admin.get("/api/v1/events", params={"since": start})
    assert status == 200
    assert len(page["events"]) == 1000
    assert page["next"] == page["events"][-1]["index"]
    assert page["index"] >= start + 1200
    indexes = [e["index"] for e in page["events"]]
    assert indexes == sorted(set(indexes)) and indexes[0] == start + 1
    status, rest = await live_admin.get("/api/v1/events", params={"since": page["next"]})
    assert status == 200
    assert rest["events"][0]["index"] == page["next"] + 1
    assert sum(e["type"] == "job.created" for e in page["events"] + rest["events"]) >= 1200


# --- SSE and WebSocket -------------------------------------------------------------------


async def read_ws_until(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    stop_at: int,
    subscribe: dict[str, Any],
) -> list[dict[str, Any]]:
    """Events of one WebSocket subscription until one with index >= ``stop_at``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S):
        async with http.ws_connect(
            url + "/api/v1/ws", headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await ws.send_json({"op": "subscribe", "id": "s1", **subscribe})
            reply = await ws.receive_json()
            assert reply["type"] == "subscribed" and reply["id"] == "s1", reply
            assert isinstance(reply["index"], int)
            while not events or events[-1]["index"] < stop_at:
                msg = await ws.receive_json()
                assert msg["type"] == "event" and msg["id"] == "s1", msg
                if msg["event"]["type"] not in LIVE_ONLY:
                    events.append(msg["event"])
            await ws.send_json({"op": "unsubscribe", "id": "s1"})
            while (msg := await ws.receive_json())["type"] == "event":
                pass
            assert msg == {"type": "unsubscribed", "id": "s1"}
    return events


async def test_sse_and_websocket_deliver_identical_sequences(
    live: SchedulerProcess, live_http: aiohttp.ClientSession, live_admin: Api, workload: Workload
) -> None:
    """Both read while the events are made, from the same index."""
    start = await current_index(live_admin)
    final: int | None = None
    got_sse: list[Frame] = []
    got_ws: list[dict[str, Any]] = []

    def more(last: int | None) -> bool:
        return final is None or last is None or last < final

    async def sse() -> None:
        headers = {"Authorization": f"Bearer {live.admin_token}", **SSE}
        buf = b""
        async with live_http.get(
            f"{live.url}/api/v1/events", params={"since": start}, headers=headers
        ) as resp:
            while more(got_sse[-1].index if got_sse else None):
                buf += await resp.content.readany()
                got_sse[:], _ = parse_frames(buf)
            resp.close()

    async def ws() -> None:
        async with live_http.ws_connect(
            f"{live.url}/api/v1/ws", headers={"Authorization": f"Bearer {live.admin_token}"}
        ) as sock:
            await sock.send_json({"op": "subscribe", "id": "a", "since": start})
            assert (await sock.receive_json())["type"] == "subscribed"
            while more(got_ws[-1]["index"] if got_ws else None):
                msg = await sock.receive_json()
                assert msg["type"] == "event" and msg["id"] == "a", msg
                if msg["event"]["type"] not in LIVE_ONLY:
                    got_ws.append(msg["event"])

    readers = asyncio.gather(sse(), ws())
    for op in FIXED_OPS:
        await workload.run(op)
    final = await current_index(live_admin)
    # One more event, so that a reader waiting for the next one wakes up and stops.
    await workload.run(("submit", 1))
    async with asyncio.timeout(DEADLINE_S):
        await readers
    expected = await page_events(live_admin, start, final)
    same_events([f for f in got_sse if f.index <= final], expected)
    assert [e for e in got_ws if e["index"] <= final] == expected


async def test_websocket_reports_bad_messages_and_keeps_going(
    live: SchedulerProcess, live_http: aiohttp.ClientSession
) -> None:
    async with live_http.ws_connect(
        f"{live.url}/api/v1/ws", headers={"Authorization": f"Bearer {live.admin_token}"}
    ) as ws:
        await ws.send_str("not json")
        err = await ws.receive_json(timeout=10)
        assert err["type"] == "error" and err["error"]["code"] == "invalid"
        await ws.send_json({"op": "dance", "id": "x"})
        err = await ws.receive_json(timeout=10)
        assert err["error"]["details"]["field"] == "$.op"
        await ws.send_json({"op": "subscribe", "id": "x", "topics": ["cats"]})
        err = await ws.receive_json(timeout=10)
        assert err["error"]["details"]["field"] == "$.topics"
        await ws.send_json({"op": "subscribe", "id": "x", "job": "nosuchjob"})
        err = await ws.receive_json(timeout=10)
        assert err["error"]["code"] == "not_found"
        await ws.send_json({"op": "subscribe", "id": "x", "since": -1})
        err = await ws.receive_json(timeout=10)
        assert err["error"]["details"]["field"] == "$.since"
        await ws.send_json({"op": "subscribe", "id": "x", "since": 0})
        ok = await ws.receive_json(timeout=10)
        assert ok["type"] == "subscribed"
    # The handshake itself is refused without a token.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with live_http.ws_connect(f"{live.url}/api/v1/ws"):
            pass
    assert refused.value.status == 401


# --- filters -------------------------------------------------------------------------------


async def test_topic_and_job_filters(
    live: SchedulerProcess, live_http: aiohttp.ClientSession, live_admin: Api, workload: Workload
) -> None:
    start = await current_index(live_admin)
    first = len(workload.jobs)
    for op in [("submit", 2), ("drain",), ("start", first), ("finish", first + 1, "completed")]:
        await workload.run(op)
    other = SimAgent(live_http, live.url, live.join_token, f"filter-{start}")
    await other.register()
    final = await current_index(live_admin)
    everything = await page_events(live_admin, start, final)
    job_id = workload.jobs[first]

    jobs = await page_events(live_admin, start, final, {"topics": "jobs"})
    nodes = await page_events(live_admin, start, final, {"topics": "nodes"})
    one = await page_events(live_admin, start, final, {"job": job_id})
    both = await page_events(live_admin, start, final, {"topics": "nodes,jobs"})
    assert jobs == [e for e in everything if e["type"].startswith("job.")]
    assert nodes == [e for e in everything if e["type"].startswith("node.")]
    assert one == [e for e in everything if e["job_id"] == job_id]
    assert both == everything
    assert {e["type"] for e in nodes} >= {"node.state", "node.registered"}
    assert [e["type"] for e in one][:2] == ["job.created", "job.state"]

    url = f"{live.url}/api/v1/events"
    token = live.admin_token
    sse_nodes = await read_sse_until(
        live_http, url, token, nodes[-1]["index"], params={"since": start, "topics": "nodes"}
    )
    same_events(sse_nodes, nodes)
    sse_jobs = await read_sse_until(
        live_http, url, token, jobs[-1]["index"], params={"since": start, "topics": "jobs"}
    )
    same_events(sse_jobs, jobs)
    sse_one = await read_sse_until(
        live_http, url, token, one[-1]["index"], params={"since": start, "job": job_id}
    )
    same_events(sse_one, one)
    per_job = await read_sse_until(
        live_http,
        f"{live.url}/api/v1/jobs/{job_id}/events",
        token,
        one[-1]["index"],
        params={"since": start},
    )
    same_events(per_job, one)
    status, page = await live_admin.get(f"/api/v1/jobs/{job_id}/events", params={"since": 0})
    assert status == 200 and page["events"] == one
    ws_one = await read_ws_until(
        live_http, live.url, token, one[-1]["index"], {"job": job_id, "since": start}
    )
    assert ws_one == one
    ws_nodes = await read_ws_until(
        live_http, live.url, token, nodes[-1]["index"], {"topics": ["nodes"], "since": start}
    )
    assert ws_nodes == nodes


async def test_bad_filters_are_refused(live_admin: Api) -> None:
    status, body = await live_admin.get("/api/v1/events", params={"topics": "jobs,cats"})
    assert status == 400 and body["error"]["details"]["field"] == "topics"
    status, body = await live_admin.get("/api/v1/events", params={"job": "nosuchjob"})
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await live_admin.get("/api/v1/jobs/nosuchjob/events")
    assert status == 404
    status, body = await live_admin.get("/api/v1/events", params={"since": "soon"})
    assert status == 400 and body["error"]["details"]["field"] == "since"
    status, body = await live_admin.get(
        "/api/v1/events", headers={**SSE, "Last-Event-ID": "yesterday"}
    )
    assert status == 400 and body["error"]["details"]["field"] == "Last-Event-ID"
    anonymous = Api(live_admin.session, live_admin.url, None)
    status, body = await anonymous.get("/api/v1/events", headers=SSE)
    assert status == 401


# --- retention -----------------------------------------------------------------------------


async def test_asking_before_what_is_kept_gets_an_explicit_reset(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With the smallest event window (1,000), more node events than that, and a restart
    (retention runs when the scheduler starts, then every minute)."""
    window = 1000
    proc = SchedulerProcess(
        tmp_path / "state", "--event-window", str(window), "--heartbeat-interval", "30"
    ).start()
    try:
        admin = Api(http, proc.url, proc.admin_token)
        status, job = await admin.post("/api/v1/jobs", SPEC)
        assert status == 201
        agents = [SimAgent(http, proc.url, proc.join_token, f"r{i}") for i in range(10)]
        for a in agents:
            await a.register()

        async def toggle(a: SimAgent) -> None:
            for i in range(110):
                path = f"/api/v1/nodes/{a.node_id}/drain"
                assert (await admin.post(path, {"drain": i % 2 == 0}))[0] == 200

        await asyncio.gather(*(toggle(a) for a in agents))
        before = await page_events(admin, 0, await current_index(admin))
        assert len(before) > window + 100
        proc.stop()
        proc.start()
        admin = Api(http, proc.url, proc.admin_token)

        async def pruned() -> Any:
            status, body = await admin.get("/api/v1/events", params={"since": 0})
            return body if status == 410 else None

        body = await wait_until(pruned, timeout=DEADLINE_S)
        top = await current_index(admin)
        assert top == before[-1]["index"]
        oldest = top - window + 1
        assert body["error"]["code"] == "gone"
        assert body["error"]["details"] == {"oldest": oldest, "index": top}

        # A stream gets a reset frame naming what is kept, then goes on live.
        headers = {"Authorization": f"Bearer {proc.admin_token}", **SSE}
        async with asyncio.timeout(DEADLINE_S):
            async with http.get(
                f"{proc.url}/api/v1/events", params={"since": 0}, headers=headers
            ) as resp:
                assert resp.status == 200
                buf = b""
                frames: list[Frame] = []
                while not frames:
                    buf += await resp.content.readany()
                    frames, _ = parse_frames(buf)
                assert frames[0].event == "reset"
                assert frames[0].id == str(top)
                reset = frames[0].doc
                assert reset["oldest"] == oldest and reset["index"] == top
                assert reset["reason"]
                status, later = await admin.post("/api/v1/jobs", SPEC)
                assert status == 201
                while len(frames) < 2:
                    buf += await resp.content.readany()
                    frames, _ = parse_frames(buf)
                assert frames[1].event == "job.created"
                assert frames[1].doc["job_id"] == later["id"]
                assert frames[1].index == top + 1
                resp.close()

        # The WebSocket says the same.
        async with http.ws_connect(
            f"{proc.url}/api/v1/ws", headers={"Authorization": f"Bearer {proc.admin_token}"}
        ) as ws:
            await ws.send_json({"op": "subscribe", "id": "r", "since": 0})
            assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
            msg = await ws.receive_json(timeout=10)
            assert msg["type"] == "reset" and msg["oldest"] == oldest

        # From the oldest kept index on, replay is whole again: what was kept is intact.
        kept = await page_events(admin, oldest - 1, top)
        survivors = [e for e in before if e["index"] >= oldest]
        assert kept == survivors
        assert [e["index"] for e in kept] == list(range(oldest, top + 1))
        # A job's own history is kept as long as the job, whatever the window.
        status, page = await admin.get(f"/api/v1/jobs/{job['id']}/events", params={"since": 0})
        assert status == 200
        assert page["events"][0]["type"] == "job.created"
        assert page["events"][0]["index"] < oldest
        assert page["events"] == [e for e in before if e["job_id"] == job["id"]]
    finally:
        proc.kill()


# --- subscribers that leave, or stop reading ------------------------------------------------

#: a scheduler process with one extra read-only route reporting its asyncio tasks and
#: bus subscribers; everything else is the plain `berth scheduler`
INTROSPECTED = """
import asyncio
from aiohttp import web
import scheduler.app as app_module
from scheduler.routes import SERVICE

_build = app_module.build_app

def build_app(config):
    app = _build(config)

    async def introspect(request):
        svc = request.app[SERVICE]
        return web.json_response(
            {"tasks": len(asyncio.all_tasks()), "subscribers": len(svc.bus)}
        )

    app.router.add_get("/api/v1/_introspect", introspect)
    return app

app_module.build_app = build_app
from cli.main import main
main()
"""


class IntrospectedScheduler(SchedulerProcess):
    """`berth scheduler` with a route that counts its asyncio tasks and subscribers."""

    def start(self, timeout: float = 20.0) -> IntrospectedScheduler:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-c",
            INTROSPECTED,
            "scheduler",
            "--state-dir",
            str(self.state_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if (self.state_dir / "admin.token").exists():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"scheduler did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[IntrospectedScheduler]:
    # These tests open a thousand streams and submit in bursts with one token: the
    # per-token limits are lifted so that they measure the fan-out, not the limits.
    proc = IntrospectedScheduler(
        tmp_path / "state", "--max-streams-per-token", "5000", "--submit-rate", "0"
    ).start()
    yield proc
    proc.kill()


async def introspect(api: Api) -> dict[str, int]:
    status, body = await api.get("/api/v1/_introspect")
    assert status == 200, body
    return dict(body)


async def _subscribers_come_and_go(
    http: aiohttp.ClientSession, url: str, token: str, job_id: str, count: int
) -> None:
    """``count`` subscribers of every kind connect at once, then all leave."""
    auth = {"Authorization": f"Bearer {token}"}
    opened: list[Any] = []

    async def sse(path: str, params: dict[str, Any]) -> None:
        resp = await http.get(url + path, params=params, headers={**auth, **SSE})
        assert resp.status == 200
        opened.append(resp)

    async def ws() -> None:
        sock = await http.ws_connect(url + "/api/v1/ws", headers=auth)
        await sock.send_json({"op": "subscribe", "id": "s", "since": 0})
        assert (await sock.receive_json(timeout=DEADLINE_S))["type"] == "subscribed"
        opened.append(sock)

    kinds: list[Callable[[], Awaitable[None]]] = [
        lambda: sse("/api/v1/events", {}),
        lambda: sse("/api/v1/events", {"since": 0}),
        lambda: sse(f"/api/v1/jobs/{job_id}/events", {"since": 0}),
        lambda: sse("/api/v1/events", {"topics": "jobs"}),
        ws,
    ]
    async with asyncio.timeout(DEADLINE_S * 2):
        for start in range(0, count, 100):
            await asyncio.gather(*(kinds[i % len(kinds)]() for i in range(start, start + 100)))
    for item in opened:
        if isinstance(item, aiohttp.ClientResponse):
            item.close()
        else:
            await item.close()


async def test_a_thousand_subscribers_leave_no_fds_tasks_or_memory_behind(
    probed: IntrospectedScheduler,
) -> None:
    """1,000 subscribers (SSE live, SSE replaying, per-job SSE, topic SSE, WebSocket)
    connect at once and leave, twice. The first round sets the high-water mark of the
    allocator; after the second, tasks, descriptors and RSS are back where they were."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        admin = Api(http, probed.url, probed.admin_token)
        job_id = ""

        async def settled() -> bool:
            # An SSE stream finds out that its subscriber left when it next sends it
            # something, so the stream moves on: a new job, and an end for the old one.
            status, _ = await admin.post("/api/v1/jobs", SPEC)
            assert status == 201
            await admin.post(f"/api/v1/jobs/{job_id}/cancel")
            return (await introspect(admin))["subscribers"] == 0

        async def round_of(count: int) -> None:
            nonlocal job_id
            status, job = await admin.post("/api/v1/jobs", SPEC)
            assert status == 201
            job_id = job["id"]
            await _subscribers_come_and_go(http, probed.url, probed.admin_token, job_id, count)
            await wait_until(settled, timeout=DEADLINE_S, interval=0.3)

        await round_of(1000)
        base = await introspect(admin)
        base_fds, base_rss = probed.fds(), probed.rss()

        await round_of(1000)

        async def tasks_back() -> bool:
            return (await introspect(admin))["tasks"] <= base["tasks"]

        await wait_until(tasks_back, timeout=DEADLINE_S, interval=0.3)
        assert probed.fds() <= base_fds + 2
        grown = probed.rss() - base_rss
        assert grown < 8 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


def read_to_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the peer still sends, and whether it then closed the connection."""
    sock.settimeout(1.0)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


async def test_a_subscriber_that_never_reads_is_cut_off_while_others_keep_receiving(
    probed: IntrospectedScheduler,
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        admin = Api(http, probed.url, probed.admin_token)
        start = await current_index(admin)

        # The stuck subscriber: a tiny receive buffer, a request, and never a read.
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stuck.connect(("127.0.0.1", probed.port))
        stuck.sendall(
            (
                f"GET /api/v1/events?topics=jobs&since={start} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {probed.admin_token}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )
        received: list[Frame] = []
        healthy_done = asyncio.Event()

        async def healthy() -> None:
            headers = {"Authorization": f"Bearer {probed.admin_token}", **SSE}
            buf = b""
            async with http.get(
                f"{probed.url}/api/v1/events", params={"since": start}, headers=headers
            ) as resp:
                while not healthy_done.is_set():
                    chunk = await resp.content.readany()
                    assert chunk, "the healthy subscriber was cut off"
                    frames, buf = parse_frames(buf + chunk)
                    received.extend(frames)
                resp.close()

        async def subscribers() -> int:
            return (await introspect(admin))["subscribers"]

        async def only_healthy() -> bool:
            return await subscribers() == 1

        async def both() -> bool:
            return await subscribers() == 2

        reader = asyncio.create_task(healthy())
        try:
            await wait_until(both, timeout=DEADLINE_S)

            async def submit_batch() -> int:
                status, body = await admin.post("/api/v1/jobs/batch", {"jobs": [UNPLACED] * 1000})
                assert status == 201, body
                top = await current_index(admin)
                # The healthy subscriber keeps up; the stuck one falls behind.
                await wait_until(
                    lambda: received and received[-1].index >= top,
                    timeout=DEADLINE_S,
                    interval=0.02,
                )
                return top

            # Its queue holds 10,000 events, and the kernel's socket buffers on loopback
            # take up to 4 MiB more (a few thousand events of about 250 bytes): 30,000
            # overflow both. The scheduler lets it go then, or once a write stayed
            # blocked for 10 s, whichever comes first.
            top = start
            for _ in range(30):
                top = await submit_batch()
                if await only_healthy():
                    break
            await wait_until(only_healthy, timeout=DEADLINE_S)

            # The healthy one got every event, once, in order, and keeps receiving.
            assert [f.index for f in received] == list(range(start + 1, top + 1))
            top = await submit_batch()
            assert [f.index for f in received] == list(range(start + 1, top + 1))

            # The scheduler closed the stuck connection (a reset may discard what the
            # kernel still held for it). Nothing that did arrive was out of order.
            data, closed = await asyncio.to_thread(read_to_eof, stuck, DEADLINE_S)
            assert closed, "the scheduler kept the stuck connection open"
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            frames, _ = parse_frames(dechunk(body))
            events = [f for f in frames if f.event != "resync"]
            assert [f.index for f in events] == list(range(start + 1, start + 1 + len(events)))
            assert top > start + 10_000
        finally:
            healthy_done.set()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, AssertionError):
                await reader
            stuck.close()


def dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body, as far as it goes."""
    out = bytearray()
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def test_client_stream_resumes_across_a_scheduler_restart(tmp_path: Path) -> None:
    """BerthClient.stream_events reconnects with Last-Event-ID when the scheduler is
    killed and started again: every event once, in order."""
    from common.client import BerthClient

    # A fresh connection per request: pooled ones die with the killed scheduler.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    proc = SchedulerProcess(tmp_path / "state").start()
    try:
        admin = Api(http, proc.url, proc.admin_token)
        start = await current_index(admin)
        got: list[dict[str, Any]] = []
        async with BerthClient(proc.url, proc.admin_token) as client:

            async def collect() -> None:
                async for event in client.stream_events(since=start):
                    got.append(event)

            reader = asyncio.create_task(collect())
            try:
                for _ in range(3):
                    assert (await admin.post("/api/v1/jobs", UNPLACED))[0] == 201
                await wait_until(lambda: len(got) >= 3, timeout=DEADLINE_S)
                proc.kill()
                proc.start()
                admin = Api(http, proc.url, proc.admin_token)
                for _ in range(3):
                    assert (await admin.post("/api/v1/jobs", UNPLACED))[0] == 201
                top = await current_index(admin)
                await wait_until(lambda: got and got[-1]["index"] >= top, timeout=DEADLINE_S)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        assert got == await page_events(admin, start, top)
        assert sum(e["type"] == "job.created" for e in got) == 6
    finally:
        proc.kill()
        await http.close()


# --- the command line ------------------------------------------------------------------------


def berth(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli.main import main; main()", *args]


def cli_env(sched: SchedulerProcess, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BERTH_ADDR=sched.url, BERTH_TOKEN=sched.admin_token, PYTHONPATH=str(REPO))
    env.update(extra)
    return env


async def test_berth_events_prints_the_stream_as_json_lines(
    live: SchedulerProcess, live_admin: Api, workload: Workload
) -> None:
    start = await current_index(live_admin)
    for op in FIXED_OPS[:6]:
        await workload.run(op)
    final = await current_index(live_admin)
    expected = await page_events(live_admin, start, final)
    done = await asyncio.to_thread(
        subprocess.run,
        berth("events", "--since", str(start), "-n", str(len(expected))),
        env=cli_env(live),
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == expected

    jobs_only = [e for e in expected if e["type"].startswith("job.")]
    done = await asyncio.to_thread(
        subprocess.run,
        berth("events", "--topics", "jobs", "--since", str(start), "-n", str(len(jobs_only))),
        env=cli_env(live),
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == jobs_only


async def test_berth_events_errors_are_one_line_with_distinct_codes(
    live: SchedulerProcess,
) -> None:
    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return await asyncio.to_thread(
            subprocess.run,
            berth(*args),
            env=cli_env(live, **env),
            cwd=REPO,
            capture_output=True,
            timeout=DEADLINE_S,
        )

    from tests.support import free_port

    down = await run("events", "--addr", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 69
    assert down.stderr.decode().strip().startswith("berth: cannot reach the scheduler at")
    assert len(down.stderr.decode().strip().splitlines()) == 1

    refused = await run("events", "--token", "not-a-token")
    assert refused.returncode == 77
    assert refused.stderr.decode().strip() == (
        "berth: the scheduler refused the token (invalid token)"
    )

    bad = await run("events", "--topics", "cats")
    assert bad.returncode == 2

    missing = await run("events", "--job", "nosuchjob", "--since", "0")
    assert missing.returncode == 66
    assert "nosuchjob" in missing.stderr.decode()


async def test_berth_events_uses_the_admin_token_of_the_local_state_dir(
    live: SchedulerProcess, live_admin: Api, tmp_path: Path
) -> None:
    start = await current_index(live_admin)
    status, _ = await live_admin.post("/api/v1/jobs", SPEC)
    assert status == 201
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "admin.token").write_text(live.admin_token + "\n")
    env = cli_env(live)
    del env["BERTH_TOKEN"]
    env.pop("BERTH_STATE_DIR", None)
    done = await asyncio.to_thread(
        subprocess.run,
        berth("events", "--since", str(start), "-n", "1"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["index"] == start + 1

    done = await asyncio.to_thread(
        subprocess.run,
        berth("events", "--since", str(start), "-n", "1"),
        env=env,
        cwd=tmp_path / "state",
        capture_output=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 77
    assert b"no token" in done.stderr


async def test_berth_watch_redraws_the_table_as_jobs_move(
    live: SchedulerProcess, live_admin: Api, workload: Workload
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *berth("watch", "--limit", "5"),
        env=cli_env(live),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = bytearray()

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            out.extend(chunk)

    def last_table() -> str:
        tables = out.decode(errors="replace").strip().split("\n\n")
        return tables[-1] if tables else ""

    def row_of(job_id: str) -> str | None:
        return next((ln for ln in last_table().splitlines() if ln.startswith(job_id)), None)

    reader = asyncio.create_task(pump())
    try:
        await wait_until(lambda: "berth watch" in last_table(), timeout=DEADLINE_S)
        status, job = await live_admin.post("/api/v1/jobs", {**SPEC, "name": "watched"})
        assert status == 201
        workload.jobs.append(job["id"])
        await wait_until(lambda: row_of(job["id"]), timeout=DEADLINE_S)
        assert await workload.assigned(job["id"])
        await workload.agent.report(job["id"], "running")
        await workload.agent.report(job["id"], None, progress={"percent": 45, "message": "half"})

        def shows(*parts: str) -> bool:
            row = row_of(job["id"])
            return row is not None and all(p in row for p in parts)

        await wait_until(lambda: shows("watched", "running", "w1", "45%", "half"), DEADLINE_S)
        assert "[" + "#" * 9 + "-" * 11 + "]" in (row_of(job["id"]) or "")
        await workload.agent.report(job["id"], "completed", exit_code=0)
        await wait_until(lambda: shows("completed", "100%"), timeout=DEADLINE_S)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), DEADLINE_S)
        await reader
    assert code == 0
