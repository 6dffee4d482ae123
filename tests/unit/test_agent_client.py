"""The client library against a small real HTTP server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from common import codec
from common.client import BerthClient, SchedulerUnreachable
from common.errors import IllegalTransition, StaleAttempt, Unavailable
from tests.support import free_port


class Server:
    """Answers from a script: each path has a list of (status, body) replies in turn."""

    def __init__(self) -> None:
        self.replies: dict[str, list[tuple[int, object]]] = {}
        self.seen: list[tuple[str, str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("Authorization", "")))
        status, body = self.replies[request.path].pop(0)
        return web.Response(status=status, body=codec.dumps(body), content_type="application/json")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


def _error(code: str, message: str, **details: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "details": details}}


async def test_errors_come_back_as_their_classes_with_the_bearer_token_sent(
    server: Server,
) -> None:
    server.replies["/x"] = [(409, _error("illegal_transition", "cannot go", **{"from": "a"}))]
    server.replies["/y"] = [(409, _error("stale_attempt", "old attempt", command="cancel"))]
    async with BerthClient(server.url, "tok") as client:
        with pytest.raises(IllegalTransition) as illegal:
            await client.request("POST", "/x", body=b"{}")
        with pytest.raises(StaleAttempt) as stale:
            await client.request("POST", "/y", body=b"{}")
    assert illegal.value.message == "cannot go"
    assert stale.value.details == {"command": "cancel"}
    assert {auth for _, _, auth in server.seen} == {"Bearer tok"}


async def test_idempotent_calls_retry_on_503_and_fail_over_from_a_dead_url(
    server: Server,
) -> None:
    server.replies["/api/v1/stats"] = [
        (503, _error("unavailable", "standby")),
        (
            200,
            {
                "jobs": {"queued": 1},
                "nodes": {},
                "capacity": {},
                "allocated": {},
                "queue_depth": 1,
                "index": 7,
            },
        ),
    ]
    dead = f"http://127.0.0.1:{free_port()}"
    async with BerthClient([dead, server.url], None, retries=3) as client:
        stats = await client.stats()
    assert stats.index == 7
    assert len(server.seen) == 2


async def test_a_post_not_marked_idempotent_is_not_retried(server: Server) -> None:
    server.replies["/api/v1/jobs/j1/cancel"] = [(503, _error("unavailable", "busy"))]
    async with BerthClient(server.url, None, retries=3) as client:
        with pytest.raises(Unavailable):
            await client.cancel_job("j1")
    assert len(server.seen) == 1


async def test_no_url_answering_is_scheduler_unreachable() -> None:
    async with BerthClient(f"http://127.0.0.1:{free_port()}", None, retries=1) as client:
        with pytest.raises(SchedulerUnreachable):
            await client.list_nodes()
