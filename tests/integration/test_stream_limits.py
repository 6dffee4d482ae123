"""Per-token subscription caps and the byte budget of a slow subscriber, over real HTTP
and WebSockets against a real scheduler process."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.flood import open_socket
from tests.support import QUIET, Api, SchedulerProcess, wait_until

SSE = {"Accept": "text/event-stream"}
UNPLACED = {
    "image": "busybox",
    "command": ["true"],
    "resources": {"cpu": 1, "memory_mb": 64},
    "constraints": {"labels": {"pool": "nowhere"}},
}
DEADLINE_S = 60.0


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(
        tmp_path / "state",
        *QUIET,
        "--submit-rate",
        "0",
        "--max-subscriptions-per-token",
        "3",
        "--stream-queue-bytes",
        str(64 * 1024),
    ).start()
    yield proc
    proc.kill()


async def _token(admin: Api, role: str, name: str) -> str:
    status, made = await admin.post("/api/v1/tokens", {"role": role, "name": name})
    assert status == 201, made
    token: str = made["token"]
    return token


async def _subscribe(ws: aiohttp.ClientWebSocketResponse, sub_id: str) -> dict[str, Any]:
    await ws.send_json({"op": "subscribe", "id": sub_id, "topics": ["jobs"]})
    reply: dict[str, Any] = await ws.receive_json(timeout=DEADLINE_S)
    return reply


async def test_the_subscription_cap_counts_every_socket_and_stream_of_a_token(
    capped: SchedulerProcess,
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        admin = Api(http, capped.url, capped.admin_token)
        alice = {"Authorization": f"Bearer {await _token(admin, 'submit', 'alice')}"}
        bob = {"Authorization": f"Bearer {await _token(admin, 'submit', 'bob')}"}
        first = await http.ws_connect(capped.url + "/api/v1/ws", headers=alice)
        second = await http.ws_connect(capped.url + "/api/v1/ws", headers=alice)
        stream = await http.get(capped.url + "/api/v1/events", headers={**alice, **SSE})
        try:
            assert (await _subscribe(first, "a"))["type"] == "subscribed"
            assert (await _subscribe(first, "b"))["type"] == "subscribed"
            assert stream.status == 200
            # Three held on two sockets and a stream: the fourth is refused anywhere.
            reply = await _subscribe(second, "c")
            assert reply["type"] == "error", reply
            assert reply["error"]["code"] == "too_many_requests"
            details = reply["error"]["details"]
            assert (details["field"], details["limit"]) == ("$.id", 3), details
            async with http.get(capped.url + "/api/v1/events", headers={**alice, **SSE}) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["details"]["limit"] == 3
            # Replacing a subscription it holds takes no new one; another token has its own.
            assert (await _subscribe(first, "a"))["type"] == "subscribed"
            async with http.ws_connect(capped.url + "/api/v1/ws", headers=bob) as other:
                assert (await _subscribe(other, "x"))["type"] == "subscribed"
            # Letting one go makes room on any socket.
            await first.send_json({"op": "unsubscribe", "id": "b"})
            assert (await first.receive_json(timeout=DEADLINE_S))["type"] == "unsubscribed"
            assert (await _subscribe(second, "c"))["type"] == "subscribed"
        finally:
            stream.close()
            await first.close()
            await second.close()


def _cutoffs(metrics: str, kind: str) -> float:
    found = re.search(rf'^berth_stream_cutoffs_total{{kind="{kind}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    """Read whatever is left; whether the scheduler then closed the connection."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


async def test_a_websocket_that_never_reads_is_cut_off_past_its_byte_budget(
    capped: SchedulerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        admin = Api(http, capped.url, capped.admin_token)
        # A tiny receive buffer, one subscription to every job's events, never a read.
        stuck, accepted = await asyncio.to_thread(
            open_socket, "127.0.0.1", capped.port, capped.admin_token, 1
        )
        try:
            assert accepted == 1

            async def cut_off() -> bool:
                status, body = await admin.post("/api/v1/jobs/batch", {"jobs": [UNPLACED] * 200})
                assert status == 201, body
                status, text = await admin.get("/metrics")
                assert status == 200
                return _cutoffs(text.decode(), "ws") >= 1

            # 64 KiB of unsent events is a few hundred: the first batches pass it.
            await wait_until(cut_off, timeout=DEADLINE_S, interval=0.1)
            assert await asyncio.to_thread(_closed_within, stuck, DEADLINE_S)
        finally:
            stuck.close()
