"""Events: every state change is recorded with a global, strictly increasing index.

The index doubles as the version of the whole state: a job or node carries the index
of its last change, and blocking queries wait until the index moves past theirs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from msgspec import Struct

#: events kept in memory for replay; older ones are read from the store
RECENT_EVENTS = 10_000


class Event(Struct, gc=False):
    index: int
    type: str
    ts: datetime
    job_id: str | None = None
    node_id: str | None = None
    data: dict[str, Any] | None = None


class EventLog:
    """Hands out indexes and wakes whoever waits for the committed index to move."""

    def __init__(self, last_index: int = 0) -> None:
        #: highest index handed out (possibly not yet committed)
        self.last_index = last_index
        #: highest index known to be committed
        self.committed_index = last_index
        self.recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._advanced: asyncio.Future[None] | None = None
        self._closed = False

    def next_index(self) -> int:
        self.last_index += 1
        return self.last_index

    def committed(self, events: list[Event], up_to: int) -> None:
        """Called after a batch commits: keep its events for replay and wake waiters."""
        self.recent.extend(events)
        if up_to > self.committed_index:
            self.committed_index = up_to
        fut, self._advanced = self._advanced, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def replay(self, after: int) -> Iterator[Event] | None:
        """Committed events with index > ``after`` from memory, or None when memory no
        longer reaches back that far (read them from the store instead)."""
        if self.recent and self.recent[0].index > after + 1:
            return None
        if not self.recent and after < self.committed_index:
            return None
        return (e for e in self.recent if e.index > after)

    def wake_all(self) -> None:
        """Let every waiter return at once (shutdown); later waits return at once too."""
        self._closed = True
        fut, self._advanced = self._advanced, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait_past(self, index: int, timeout: float) -> None:
        """Return once the committed index exceeds ``index`` or ``timeout`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.committed_index <= index and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._advanced is None or self._advanced.done():
                self._advanced = loop.create_future()
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(self._advanced)
            except TimeoutError:
                return
