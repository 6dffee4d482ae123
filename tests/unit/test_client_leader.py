"""The client follows a standby's 503 not_leader to the leader, over real HTTP on loopback.

Each stand-in scheduler is a small aiohttp server: a standby refuses every call with
``not_leader`` (naming a leader or not), a leader answers the few routes used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web

from cli.jobs_cmd import scheduler_rows
from cli.main import cli
from common import codec
from common.client import BerthClient, NotLeader, SchedulerUnreachable, error_from_body, transport
from common.models import HeartbeatRequest, JobSpec

JOB = {
    "id": "j1",
    "name": "",
    "state": "queued",
    "spec": {"image": "busybox"},
    "created_at": "2024-05-01T12:00:00Z",
}

#: a standby that knows no leader leaves leader_url out
UNKNOWN = object()


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None
    body: bytes


@dataclass
class StandIn:
    """One stand-in scheduler: a leader, or a standby naming ``leader_url``."""

    leader_url: object = None
    is_leader: bool = False
    url: str = ""
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.headers.get("Idempotency-Key")
        self.seen.append(Seen(request.method, request.path, key, body))
        if not self.is_leader:
            details = {} if self.leader_url is UNKNOWN else {"leader_url": self.leader_url}
            error = {"code": "not_leader", "message": "a standby", "details": details}
            return web.json_response({"error": error}, status=503)
        return await _lead(request, body)

    def calls(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen]


async def _lead(request: web.Request, body: bytes) -> web.StreamResponse:
    """What the leader answers to the routes these tests call."""
    path = request.path
    if path == "/api/v1/jobs":
        return web.json_response(JOB, status=201)
    if path == "/api/v1/jobs/j1":
        return web.json_response(JOB)
    if path == "/api/v1/jobs/j1/cancel":
        return web.json_response({**JOB, "state": "cancelled"})
    if path == "/api/v1/blobs":
        return web.json_response({"digest": hashlib.sha256(body).hexdigest()}, status=201)
    if path == "/api/v1/nodes/n1/heartbeat":
        return web.json_response({"heartbeat_interval_s": 5.0, "commands": []})
    if path == "/api/v1/nodes/n1/assignments":
        return web.json_response({"assignments": [], "index": 3})
    if path == "/api/v1/events":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'id: 7\nevent: job.state\ndata: {"type": "job.state", "index": 7}\n\n')
        return resp
    return web.json_response({"error": {"code": "not_found", "message": path}}, status=404)


Start = Callable[..., Awaitable[StandIn]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts stand-in schedulers on 127.0.0.1, each on a port of its own."""
    runners: list[web.AppRunner] = []

    async def make(*, leader_url: object = None, is_leader: bool = False) -> StandIn:
        stand_in = StandIn(leader_url=leader_url, is_leader=is_leader)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", stand_in.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        stand_in.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return stand_in

    yield make
    for runner in runners:
        await runner.cleanup()


async def test_a_submit_lands_on_the_leader_with_one_idempotency_key(start: Start) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url)
    async with BerthClient([standby.url], "tok") as client:
        job = await client.submit_job(JobSpec(image="busybox"))
        await client.submit_job(JobSpec(image="busybox"))
    assert job.id == "j1"
    first = standby.seen[0].idempotency_key
    assert first is not None and len(first) == 32 and int(first, 16) >= 0
    assert leader.seen[0].idempotency_key == first
    assert leader.seen[0].body == standby.seen[0].body
    # The next submit is another logical submit: a key of its own.
    assert leader.seen[1].idempotency_key not in (None, first)


async def test_a_callers_idempotency_key_is_the_one_resent(start: Start) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url)
    async with BerthClient([standby.url, leader.url], None) as client:
        await client.submit_job(JobSpec(image="busybox"), idempotency_key="nightly-42")
    assert [s.idempotency_key for s in standby.seen + leader.seen] == ["nightly-42"] * 2


async def test_the_leader_named_by_a_standby_is_tried_first_from_then_on(start: Start) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url + "/")
    # The leader is not among the configured URLs: it is learned from the standby.
    async with BerthClient([standby.url], None) as client:
        await client.submit_job(JobSpec(image="busybox"))
        await client.get_job("j1")
        await client.cancel_job("j1")
        assert client.url == leader.url
    assert standby.calls() == [("POST", "/api/v1/jobs")]
    assert leader.calls() == [
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/j1"),
        ("POST", "/api/v1/jobs/j1/cancel"),
    ]


async def test_a_call_not_safe_to_resend_follows_a_standby_that_knows_no_leader(
    start: Start,
) -> None:
    lost = await start(leader_url=UNKNOWN)
    null = await start(leader_url=None)
    leader = await start(is_leader=True)
    async with BerthClient([lost.url, null.url, leader.url], None) as client:
        cancelled = await client.cancel_job("j1")
    assert cancelled.state == "cancelled"
    assert lost.calls() == null.calls() == leader.calls() == [("POST", "/api/v1/jobs/j1/cancel")]


async def test_a_leader_url_that_is_not_http_is_not_followed(start: Start) -> None:
    odd = await start(leader_url="file:///etc/passwd")
    leader = await start(is_leader=True)
    async with BerthClient([odd.url, leader.url], None) as client:
        await client.get_job("j1")
    assert len(odd.seen) == len(leader.seen) == 1


async def test_an_upload_is_sent_whole_again_to_the_leader(start: Start, tmp_path: Path) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url)
    source = tmp_path / "inputs.tar.gz"
    source.write_bytes(b"x" * 300_000)
    async with BerthClient([standby.url], None) as client:
        digest = await client.upload_blob(source)
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert leader.seen[0].body == source.read_bytes()


async def test_an_event_stream_opens_on_the_leader(start: Start) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url)
    async with BerthClient([standby.url], None) as client:
        events = client.stream_events(since=0)
        first = await anext(events)
        await events.aclose()
    assert first == {"type": "job.state", "index": 7}
    assert standby.calls() == [("GET", "/api/v1/events")]
    assert leader.calls()[0] == ("GET", "/api/v1/events")


async def test_an_agents_heartbeat_and_poll_follow_the_leader_in_their_single_pass(
    start: Start,
) -> None:
    leader = await start(is_leader=True)
    standby = await start(leader_url=leader.url)
    # The agent's loop calls make one pass over the URLs: with one URL configured, the
    # hop to the leader still fits in it.
    async with BerthClient([standby.url], "node-token") as agent:
        reply = await agent.heartbeat("n1", HeartbeatRequest())
        polled = await agent.assignments("n1", after=0, wait=1)
    assert reply.heartbeat_interval_s == 5.0 and polled.index == 3
    assert standby.calls() == [("POST", "/api/v1/nodes/n1/heartbeat")]
    assert leader.calls() == [
        ("POST", "/api/v1/nodes/n1/heartbeat"),
        ("GET", "/api/v1/nodes/n1/assignments"),
    ]


async def test_standbys_naming_each_other_end_in_scheduler_unreachable(start: Start) -> None:
    a = await start()
    b = await start(leader_url=a.url)
    a.leader_url = b.url
    async with BerthClient([a.url], None, retries=1) as client:
        with pytest.raises(SchedulerUnreachable) as gave_up:
            await client.submit_job(JobSpec(image="busybox"))
    assert isinstance(gave_up.value.__cause__, NotLeader)
    # Two passes; in each, the one configured URL and one hop to the leader it names.
    assert len(a.seen) + len(b.seen) == 4
    assert len({s.idempotency_key for s in a.seen + b.seen}) == 1


def test_berth_schedulers_prints_a_table_of_leader_and_standbys() -> None:
    now = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    found: list[dict[str, Any]] = [
        {
            "id": "s1",
            "url": "http://10.0.0.5:8750",
            "role": "leader",
            "epoch": 4,
            "applied_index": 1200,
            "seen": "2024-05-01T12:00:28Z",
        },
        {"id": "s2", "url": None, "role": "standby", "epoch": 4, "seen": "not a time"},
    ]
    lines = scheduler_rows(found, now).splitlines()
    assert lines[0].split() == ["ID", "URL", "ROLE", "EPOCH", "APPLIED", "SEEN"]
    assert lines[1].split() == ["s1", "http://10.0.0.5:8750", "leader", "4", "1200", "2s", "ago"]
    assert lines[2].split() == ["s2", "-", "standby", "4", "-", "-"]
    assert cli.get_command(click.Context(cli), "schedulers") is not None


def test_a_not_leader_reply_comes_back_as_not_leader() -> None:
    body = codec.dumps(
        {"error": {"code": "not_leader", "message": "m", "details": {"leader_url": "http://x"}}}
    )
    error = error_from_body(503, body)
    assert isinstance(error, NotLeader) and error.details["leader_url"] == "http://x"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose host drops connection attempts unanswered, as a scheduler's vanished
    host does: a listening socket whose full accept queue drops every further SYN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield f"http://127.0.0.1:{port}"
    for sock in [*fillers, listener]:
        sock.close()


async def test_a_long_poll_moves_on_from_a_scheduler_that_never_answers_the_connection(
    start: Start, silent_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The poll's own timeout (an hour here) is not what bounds the attempt on the silent
    # URL: the connection bound is.
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT_S", 0.3)
    leader = await start(is_leader=True)
    async with BerthClient([silent_url, leader.url], "tok") as client:
        reply = await asyncio.wait_for(
            client.request("GET", "/api/v1/nodes/n1/assignments", timeout=3600), 30
        )
    assert codec.decode(reply, dict)["index"] == 3
    assert leader.calls() == [("GET", "/api/v1/nodes/n1/assignments")]


async def test_a_submit_is_sent_on_when_the_first_scheduler_never_answers_the_connection(
    start: Start, silent_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing was sent to the silent URL, so even a call not safe to send twice moves on.
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT_S", 0.3)
    leader = await start(is_leader=True)
    async with BerthClient([silent_url, leader.url], "tok") as client:
        job = await client.submit_job(JobSpec(image="busybox"))
    assert job.id == "j1"
