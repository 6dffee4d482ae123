"""Plain text for the terminal: times relative to now, and tables sized to the terminal."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def _span(seconds: int) -> str:
    """``seconds`` in its largest whole unit: ``3d``, ``2h``, ``12m``, ``40s``."""
    for unit, size in _UNITS:
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(ts: datetime | None, now: datetime) -> str:
    """How long before ``now`` ``ts`` was: ``12m ago``; ``-`` for no time."""
    if ts is None:
        return "-"
    return f"{_span(max(0, int((now - ts).total_seconds())))} ago"


def until(ts: datetime, now: datetime) -> str:
    """How long after ``now`` ``ts`` comes: ``in 12m``; ``due now`` once it has come."""
    s = int((ts - now).total_seconds())
    return f"in {_span(s)}" if s > 0 else "due now"


def utc(ts: datetime) -> str:
    """``2026-12-03 14:05:00 UTC``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(headers: list[str], rows: list[list[str]], *, flexible: int) -> str:
    """Columns padded to their widths; column ``flexible`` shrinks to fit the terminal."""
    width = shutil.get_terminal_size((120, 24)).columns
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    if over > 0:
        widths[flexible] = max(len(headers[flexible]), widths[flexible] - over)

    def line(cells: list[str]) -> str:
        out = []
        for cell, w in zip(cells, widths, strict=True):
            out.append(cell if len(cell) <= w else cell[: max(0, w - 1)] + "…")
        return "  ".join(c.ljust(w) for c, w in zip(out, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
