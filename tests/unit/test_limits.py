"""The per-token limits, with a clock the test moves."""

from __future__ import annotations

import math

import pytest

from common.errors import TooManyRequests
from scheduler.limits import RateLimiter, StreamSlots


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_the_rate_applies() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=5, clock=clock)
    assert [limiter.take("alice") for _ in range(5)] == [0.0] * 5
    assert limiter.take("alice") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") == pytest.approx(0.5)


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") > 0
    assert limiter.take("bob") == 0.0


def test_a_batch_is_taken_whole_or_not_at_all() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)
    assert limiter.take("a", 8) == 0.0
    # 2 left: a batch of 5 waits for 3 more, and takes nothing meanwhile.
    assert limiter.take("a", 5) == pytest.approx(0.3)
    assert limiter.take("a", 2) == 0.0
    assert limiter.take("a", 11) == math.inf


def test_the_bucket_never_fills_past_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=100.0, burst=3, clock=clock)
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") for _ in range(3)] == [0.0] * 3
    assert limiter.take("a") > 0


def test_rate_zero_means_no_limit() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=Clock())
    assert all(limiter.take("a", 1000) == 0.0 for _ in range(100))


def test_stream_slots_are_counted_per_token_and_given_back() -> None:
    slots = StreamSlots(per_key=2)
    with slots.slot("a"), slots.slot("a"):
        with pytest.raises(TooManyRequests) as refused, slots.slot("a"):
            pass
        assert refused.value.retry_after_s >= 1
        with slots.slot("b"):
            assert slots.held("b") == 1
    assert slots.held("a") == 0
    with pytest.raises(RuntimeError), slots.slot("a"):
        raise RuntimeError("the stream broke")
    assert slots.held("a") == 0
