"""Shipping one attempt's output to the scheduler in batches at byte offsets.

The scheduler stores an attempt's log as bytes with an end offset. An append names
the offset its bytes start at: bytes the server already has are ignored (so a resend
after a lost reply is harmless), and an offset past the server's end is refused with
a Conflict carrying the server's end, from which the shipper resends. The shipper
keeps every byte until the server has acknowledged it, so a failed append loses
nothing; the caller just flushes again later.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from agent.config import LOG_FLUSH_BYTES, LOG_MAX_APPEND
from common.errors import Conflict, StaleAttempt

log = logging.getLogger(__name__)

#: ``send(offset, data) -> new end``; raises Conflict(details.offset) or transport errors
SendFn = Callable[[int, bytes], Awaitable[int]]

_LOST_MARKER = b"\n[berth: %d bytes of output were lost]\n"


class LogShipper:
    """The unacknowledged output of one attempt and the server's offset for it."""

    def __init__(
        self,
        send: SendFn,
        *,
        flush_bytes: int = LOG_FLUSH_BYTES,
        max_append: int = LOG_MAX_APPEND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._clock = clock
        self.flush_bytes = flush_bytes
        self.max_append = max_append
        #: the server's end offset as last acknowledged
        self.offset = 0
        self._buf = bytearray()
        self._skip = 0
        #: bytes ever written, skipped ones included (the position in the stream)
        self.stream_pos = 0
        #: the server stores no more output of this attempt (its per-job cap)
        self.capped = False
        #: bytes ever put in the buffer, and ever taken out of it as acknowledged
        self._buffered = 0
        self._acked = 0
        #: (self._buffered after a write, when it was written), oldest first, for the
        #: writes not wholly acknowledged: the first one dates the oldest waiting byte
        self._writes: deque[tuple[int, float]] = deque()

    @property
    def pending(self) -> int:
        """Bytes not yet acknowledged."""
        return len(self._buf)

    def lag_s(self) -> float:
        """Seconds the oldest byte not yet acknowledged has waited (0 when none waits)."""
        if not self._buf or not self._writes:
            return 0.0
        return max(0.0, self._clock() - self._writes[0][1])

    def should_flush(self) -> bool:
        return len(self._buf) >= self.flush_bytes

    async def sync(self) -> int:
        """Learn the server's end before anything is written (after a re-adoption).

        The first ``end`` bytes written afterwards are the ones the server already has
        and are dropped. Returns the end.
        """
        end = await self._append(0, b"")
        self.offset = end
        self._skip = max(0, end - self.stream_pos)
        return end

    def write(self, data: bytes) -> bytes:
        """Buffer output; returns the part that is new to the server."""
        self.stream_pos += len(data)
        if self._skip:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        if not self.capped and data:
            self._buf += data
            self._buffered += len(data)
            self._writes.append((self._buffered, self._clock()))
        return data

    async def flush(self) -> None:
        """Send what is buffered now. Transport errors propagate; nothing is lost by them."""
        left = len(self._buf)
        while left > 0 and self._buf:
            chunk = bytes(self._buf[: min(self.max_append, left)])
            left -= len(chunk)
            end = await self._append(self.offset, chunk)
            if end != self.offset + len(chunk) and end >= self.offset:
                # The server kept less (or added its truncation marker): its cap is
                # reached, and nothing more of this attempt will be stored.
                log.info("log of this attempt reached the scheduler's cap at %d bytes", end)
                self.capped = True
                self._taken(len(self._buf))
                self._buf.clear()
                self.offset = end
                return
            if not self._acknowledge(end):
                left = len(self._buf)  # rebased on the server's end: send it all again

    async def _append(self, offset: int, chunk: bytes) -> int:
        try:
            return await self._send(offset, chunk)
        except StaleAttempt:
            raise
        except Conflict as e:
            end = e.details.get("offset")
            if not isinstance(end, int):
                raise
            return end

    def _acknowledge(self, end: int) -> bool:
        """Drop what the server has; False when it had less than acknowledged before."""
        if end >= self.offset:
            done = end - self.offset
            take = min(done, len(self._buf))
            del self._buf[:take]
            self._taken(take)
            self.offset = end
            # The server had more than this shipper held: skip that much future output.
            self._skip += done - take
            return True
        else:
            # The server lost bytes that were acknowledged before; say so in the log.
            lost = self.offset - end
            log.warning(
                "the scheduler lost %d acknowledged log bytes; resending from %d", lost, end
            )
            marker = _LOST_MARKER % lost
            self._buf[:0] = marker
            # The marker waits ahead of what is buffered, dated by the oldest write.
            self._acked -= len(marker)
            self.offset = end
            return False

    def _taken(self, n: int) -> None:
        """``n`` bytes left the buffer acknowledged: forget the writes they finish."""
        self._acked += n
        while self._writes and self._writes[0][0] <= self._acked:
            self._writes.popleft()
