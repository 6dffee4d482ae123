"""The parser of server-sent events (``text/event-stream``), as the event stream sends them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp


async def sse_frames(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, str, str]]:
    """Server-sent events of a reply as ``(id, event, data)``, comments skipped.

    Lines may end with CRLF, LF or CR. A frame is yielded only once its closing
    blank line arrived, so one cut short by a dropped connection never is.
    """
    buf = b""
    frame_id: str | None = None
    kind = ""
    data: list[str] = []
    async for chunk in resp.content.iter_any():
        buf += chunk
        held = b""
        if buf.endswith(b"\r"):
            # A CR may be the first half of a CRLF: wait for the next byte.
            buf, held = buf[:-1], b"\r"
        lines = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        buf = lines.pop() + held
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if not line:
                if data:
                    yield frame_id, kind or "message", "\n".join(data)
                frame_id, kind, data = None, "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id" and "\0" not in value:
                frame_id = value
