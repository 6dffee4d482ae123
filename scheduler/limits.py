"""Per-token limits: how fast a token may create jobs, and how many streams it may hold
open; and how big one job's spec may be. Pure bookkeeping with an injected clock; the
routes turn a refusal into a 429 (a spec too big: 413)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from common import codec
from common.errors import PayloadTooLarge, TooManyRequests
from common.models import JobSpec


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float


class RateLimiter:
    """A token bucket per key: ``rate`` per second, up to ``burst`` at once.

    A request for n jobs takes n from the bucket or nothing at all, so a batch is
    accepted or refused whole. A rate of 0 means no limit.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, n: int = 1) -> float:
        """Take ``n`` for ``key``; 0.0 when allowed, else the seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        b.level = min(float(self.burst), b.level + (now - b.at) * self.rate)
        b.at = now
        if n <= b.level:
            b.level -= n
            return 0.0
        if n > self.burst:
            # Never possible at once: the caller must split the request.
            return math.inf
        return (n - b.level) / self.rate


class StreamSlots:
    """How many long-lived streams (SSE, WebSocket, log follows) each token holds; with
    ``what="subscriptions"``, how many event subscriptions across all of them."""

    def __init__(self, per_key: int, what: str = "streams") -> None:
        self.per_key = per_key
        self.what = what
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def acquire(self, key: str) -> None:
        if self.per_key > 0 and self.held(key) >= self.per_key:
            raise TooManyRequests(
                f"this token already has {self.per_key} {self.what} open; close one first",
                {"limit": self.per_key},
                retry_after_s=5,
            )
        self._held[key] = self.held(key) + 1

    def release(self, key: str) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)


class FairSlots:
    """At most ``total`` holders at once, and at most one per key: a key's other
    waiters queue behind its own holder, so a token with many replays waits for one
    turn among the tokens, not one turn per replay."""

    def __init__(self, total: int) -> None:
        self._total = asyncio.Semaphore(max(1, total))
        #: each key's lock and how many hold or wait for it
        self._keys: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        lock, users = self._keys.get(key) or (asyncio.Lock(), 0)
        self._keys[key] = (lock, users + 1)
        try:
            async with lock, self._total:
                yield
        finally:
            lock, users = self._keys[key]
            if users > 1:
                self._keys[key] = (lock, users - 1)
            else:
                del self._keys[key]


def spec_bytes(spec: JobSpec) -> int:
    """A spec's size as stored and sent: its encoded JSON."""
    return len(codec.encode(spec))


def check_spec_size(spec: JobSpec, max_bytes: int, field: str) -> int:
    """The spec's encoded size; 413 naming ``field`` past ``max_bytes``."""
    size = spec_bytes(spec)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"the job spec is {size} bytes as JSON, past the limit of {max_bytes} bytes "
            "(--max-spec-bytes); pass large data as an input archive",
            {"field": field, "bytes": size, "max_bytes": max_bytes},
        )
    return size
