"""The WebSocket handshake over real HTTP: a browser page of another origin cannot open
the event socket with credentials the browser holds; clients that send no Origin (not
browsers) and the origins the operator allows can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import SchedulerProcess

PROXY = "https://berth.example.org"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(tmp_path / "state", "--allowed-origins", f"{PROXY}/, http://x.test")
    yield proc.start()
    proc.kill()


async def _handshake(
    http: aiohttp.ClientSession, sched: SchedulerProcess, origin: str | None
) -> tuple[int, str]:
    """The status of a WebSocket handshake with this Origin, and the refusal's body."""
    headers = {"Authorization": f"Bearer {sched.admin_token}"}
    if origin is not None:
        headers["Origin"] = origin
    try:
        async with http.ws_connect(sched.url + "/api/v1/ws", headers=headers) as ws:
            # Open for real: it answers a subscription.
            await ws.send_json({"op": "subscribe", "id": "s", "topics": ["nodes"]})
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "subscribed", reply
            return 101, ""
    except aiohttp.WSServerHandshakeError as e:
        async with http.get(sched.url + "/api/v1/ws", headers=headers) as r:
            return e.status, await r.text()


async def test_the_websocket_refuses_a_foreign_browser_origin(
    sched: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    own = f"http://127.0.0.1:{sched.port}"
    assert (await _handshake(http, sched, None))[0] == 101
    assert (await _handshake(http, sched, own))[0] == 101
    assert (await _handshake(http, sched, own + "/"))[0] == 101
    for foreign in (
        "https://evil.example",
        "null",
        f"http://127.0.0.1:{sched.port + 1}",
        f"https://127.0.0.1:{sched.port}",
        f"http://localhost:{sched.port}",
    ):
        status, body = await _handshake(http, sched, foreign)
        assert status == 403, (foreign, status)
        assert '"field":"Origin"' in body.replace(" ", ""), body


async def test_allowed_origins_admit_a_proxy_in_front(
    proxied: SchedulerProcess, http: aiohttp.ClientSession
) -> None:
    assert (await _handshake(http, proxied, PROXY))[0] == 101
    assert (await _handshake(http, proxied, "HTTP://X.TEST"))[0] == 101
    assert (await _handshake(http, proxied, f"http://127.0.0.1:{proxied.port}"))[0] == 101
    assert (await _handshake(http, proxied, "https://evil.example"))[0] == 403
