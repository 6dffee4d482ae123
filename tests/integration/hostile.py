"""Plain HTTP for the hostile-input tests: the exact bytes given go out, the exact bytes
answered come back.

``Http`` keeps one connection alive (property tests send hundreds of requests) and
lets header values be bytes, which the usual clients refuse to send as they are.
``raw_request`` writes a request byte for byte on a fresh socket, for what even
http.client will not put on the wire (bytes above 0x7f in the request line).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

#: how long one request may take
TIMEOUT_S = 60.0
#: no JSON body (``None`` is sent as JSON ``null``)
NO_BODY: Any = object()


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def field(self) -> str | None:
        """The field an error names (``details.field``), if it names one."""
        try:
            details = self.json()["error"]["details"]
        except (ValueError, KeyError, TypeError):
            return None
        value = details.get("field") if isinstance(details, dict) else None
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class Http:
    """One kept-alive connection to the scheduler on ``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = NO_BODY,
        raw: bytes | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Reply:
        """``body`` is sent as JSON (``allow_nan`` off: what is sent is valid JSON),
        ``raw`` as it is."""
        data = raw
        if body is not NO_BODY:
            data = json.dumps(body, allow_nan=False).encode()
        target = quote(path, safe="/%") + ("?" + urlencode(query) if query else "")
        for tried in range(2):
            conn = self._connect()
            try:
                conn.putrequest(method, target, skip_accept_encoding=True)
                if token is not None:
                    conn.putheader("Authorization", f"Bearer {token}")
                if data is not None:
                    conn.putheader("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(data or b"")))
                conn.endheaders(data)
                r = conn.getresponse()
                return Reply(r.status, r.read(), {k.lower(): v for k, v in r.getheaders()})
            except (OSError, http.client.HTTPException):
                # The scheduler may close a connection after refusing a body it did not
                # read; a fresh one is tried once.
                self.close()
                if tried:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, token: str, **query: Any) -> Any:
        reply = self.call("GET", path, token=token, query=query or None)
        assert reply.status == 200, (path, reply)
        return reply.json()

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` (which should say ``Connection: close``) as it is on a fresh
    connection; the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(request)
        # No half-close: aiohttp drops a connection whose client stopped sending before
        # it answered. The request asks the scheduler to close once it has.
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), answer


def files_below(root: Path) -> list[str]:
    """Every path below ``root``, relative and sorted (what a blob store holds)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)
