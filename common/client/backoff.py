"""Exponential backoff with jitter, for the client's retries and the agent's loops."""

from __future__ import annotations

import random
from collections.abc import Callable

#: first backoff delay, doubled on every retry
BACKOFF_BASE_S = 0.2
#: the longest backoff delay
BACKOFF_MAX_S = 10.0


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_MAX_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential with equal jitter.

    The ceiling doubles with every attempt up to ``cap``; the delay is half the ceiling
    plus a random share of the other half, so retries of many clients spread out
    without ever collapsing to zero.
    """
    ceiling = min(cap, base * float(2 ** min(attempt, 32)))
    return ceiling / 2 + rand() * ceiling / 2


class Backoff:
    """Stateful exponential backoff with jitter: ``next()`` grows, ``reset()`` restarts."""

    def __init__(
        self,
        base: float = BACKOFF_BASE_S,
        cap: float = BACKOFF_MAX_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rand = rand

    def next(self) -> float:
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, rand=self._rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
