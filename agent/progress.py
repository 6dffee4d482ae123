"""The progress protocol of a job's output: ``::progress::45 Searching the index``.

A line that starts with ``::progress::`` followed by a percentage (0-100, decimals
allowed) and an optional message reports progress; every other line is plain output.
"""

from __future__ import annotations

import re

from common.models import MAX_PROGRESS_MESSAGE, Progress

PREFIX = b"::progress::"
_LINE = re.compile(rb"^::progress::\s*([0-9]+(?:\.[0-9]+)?)%?(?:\s+(.*?))?\s*$")
#: longest message kept from a progress line (what the scheduler accepts)
MAX_MESSAGE = MAX_PROGRESS_MESSAGE


def parse_progress(line: bytes | str) -> Progress | None:
    """The Progress a line reports, or None when it is not a progress line.

    >>> parse_progress("::progress::45 Searching the index")
    Progress(percent=45.0, message='Searching the index')
    """
    raw = line.encode() if isinstance(line, str) else line
    raw = raw.rstrip(b"\r\n")
    if not raw.startswith(PREFIX):
        return None
    m = _LINE.match(raw)
    if m is None:
        return None
    percent = float(m.group(1))
    if percent > 100.0:
        return None
    message = (m.group(2) or b"").decode("utf-8", "replace")[:MAX_MESSAGE]
    return Progress(percent=percent, message=message)


class LineSplitter:
    """Cuts a byte stream into lines, keeping an incomplete last line for later."""

    #: a line longer than this is cut (it is never a progress line)
    MAX_LINE = 64 * 1024

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self.MAX_LINE:
            self._rest = b""
        return lines

    def finish(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return [rest] if rest else []


def last_progress(splitter: LineSplitter, data: bytes) -> Progress | None:
    """The last progress line in ``data`` (fed through ``splitter``), if any."""
    found = None
    for line in splitter.feed(data):
        p = parse_progress(line)
        if p is not None:
            found = p
    return found
