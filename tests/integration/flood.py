"""A hostile user of the event stream, run as its own process so that its reading costs
the measuring test nothing: one submit token holds WebSockets full of subscriptions and
never reads them, and one read token holds SSE streams replaying history from index 0,
reading and dropping everything as fast as the scheduler sends it.

Run: ``python -m tests.integration.flood URL SUBMIT_TOKEN READ_TOKEN SOCKETS SUBS STREAMS``.
Prints ``ready W N S`` once W sockets asked for their subscriptions (N of them accepted;
a refusal is an error message on the socket) and S streams answered 200,
then ``bytes N`` (what the streams received) when stdin closes.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import struct
import sys
import threading
from urllib.parse import urlsplit

import orjson

#: the receive buffer of a socket that never reads: the scheduler's writes stall at once
TINY_RCVBUF = 1024


def _connect(host: str, port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, port))
    return sock


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The HTTP response head and whatever came after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _masked_text(payload: bytes) -> bytes:
    """One client-to-server WebSocket text frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    short = n < 126
    header = struct.pack("!BB", 0x81, 0x80 | n) if short else struct.pack("!BBH", 0x81, 0xFE, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def _server_frames(sock: socket.socket, buf: bytes, count: int) -> list[bytes]:
    """The next ``count`` unmasked server frames' payloads."""
    out: list[bytes] = []
    while len(out) < count:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                at = 2
                if n == 126 and len(buf) >= 4:
                    n, at = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, at = struct.unpack("!Q", buf[2:10])[0], 10
                if (n < 126 or at > 2) and len(buf) >= at + n:
                    out.append(buf[at : at + n])
                    buf = buf[at + n :]
                    break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the WebSocket closed during the handshake")
            buf += chunk
    return out


def open_socket(host: str, port: int, token: str, subs: int) -> tuple[socket.socket, int]:
    """A WebSocket asking for ``subs`` live subscriptions to every topic, never read
    again, and how many of them the scheduler accepted."""
    sock = _connect(host, port, rcvbuf=TINY_RCVBUF)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head, rest = _read_head(sock)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    frames = b"".join(
        _masked_text(orjson.dumps({"op": "subscribe", "id": f"s{i}"})) for i in range(subs)
    )
    sock.sendall(frames)
    replies = [orjson.loads(p) for p in _server_frames(sock, rest, subs)]
    return sock, sum(1 for r in replies if r.get("type") == "subscribed")


def open_stream(host: str, port: int, token: str) -> socket.socket:
    """An SSE stream of everything since index 0."""
    sock = _connect(host, port)
    sock.sendall(
        (
            f"GET /api/v1/events?since=0 HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    head, _ = _read_head(sock)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode(errors="replace"))
    sock.setblocking(False)
    return sock


def drain(streams: list[socket.socket], stop: threading.Event, total: list[int]) -> None:
    """Read and drop whatever the streams receive until ``stop``."""
    sel = selectors.DefaultSelector()
    for s in streams:
        sel.register(s, selectors.EVENT_READ)
    buf = bytearray(1 << 20)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                n = 0
            if not n:
                sel.unregister(sock)
                continue
            total[0] += n


def main() -> None:
    url, submit_token, read_token, sockets, subs, streams = sys.argv[1:7]
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    held = [open_socket(host, port, submit_token, int(subs)) for _ in range(int(sockets))]
    accepted = sum(n for _, n in held)
    open_streams = [open_stream(host, port, read_token) for _ in range(int(streams))]
    stop = threading.Event()
    total = [0]
    reader = threading.Thread(target=drain, args=(open_streams, stop, total), daemon=True)
    reader.start()
    print(f"ready {len(held)} {accepted} {len(open_streams)}", flush=True)
    sys.stdin.read()
    stop.set()
    reader.join()
    print(f"bytes {total[0]}", flush=True)


if __name__ == "__main__":
    main()
