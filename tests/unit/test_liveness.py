"""Liveness and node-health rules as pure functions of times and counts."""

from __future__ import annotations

import pytest

from common.states import NodeState
from scheduler.liveness import heartbeat_deadline, is_late, job_deadline, retry_delay
from scheduler.nodes import cooldown_seconds, node_status

BOOT = 1_000.0


# --- heartbeat_deadline ------------------------------------------------------------------


def test_a_node_long_after_boot_is_offline_ttl_after_its_last_heartbeat() -> None:
    deadline = heartbeat_deadline(5_000.0, 100.0, BOOT, ttl_s=30.0, grace_s=90.0)
    assert deadline == 5_030.0


def test_a_node_that_never_heartbeat_counts_from_its_registration() -> None:
    deadline = heartbeat_deadline(None, 5_000.0, BOOT, ttl_s=30.0, grace_s=90.0)
    assert deadline == 5_030.0


def test_right_after_a_restart_a_node_gets_the_longer_grace_from_boot() -> None:
    # Last heard from 10 s before the scheduler came back: ttl alone would expire it at
    # boot + 20, the restart grace keeps it until boot + 90.
    deadline = heartbeat_deadline(BOOT - 10.0, 0.0, BOOT, ttl_s=30.0, grace_s=90.0)
    assert deadline == BOOT + 90.0


def test_the_restart_grace_stops_mattering_once_the_node_is_heard_from_later() -> None:
    deadline = heartbeat_deadline(BOOT + 80.0, 0.0, BOOT, ttl_s=30.0, grace_s=90.0)
    assert deadline == BOOT + 110.0


def test_with_no_restart_grace_only_the_ttl_counts() -> None:
    deadline = heartbeat_deadline(BOOT + 1.0, 0.0, BOOT, ttl_s=30.0, grace_s=0.0)
    assert deadline == BOOT + 31.0


# --- is_late -----------------------------------------------------------------------------


def test_a_node_is_late_only_after_missing_several_intervals() -> None:
    assert not is_late(100.0, 100.0, interval_s=5.0, late_after=3.0)
    assert not is_late(100.0, 115.0, interval_s=5.0, late_after=3.0)
    assert is_late(100.0, 115.001, interval_s=5.0, late_after=3.0)


def test_a_node_never_heard_from_is_not_late() -> None:
    assert not is_late(None, 1e9, interval_s=5.0, late_after=3.0)


# --- job_deadline ------------------------------------------------------------------------


def test_the_scheduler_times_a_job_out_grace_after_its_own_timeout() -> None:
    assert job_deadline(1_000.0, 60.0, 30.0) == 1_090.0
    assert job_deadline(1_000.0, 60.0, 0.0) == 1_060.0


# --- retry_delay -------------------------------------------------------------------------


def test_retry_delay_doubles_with_every_retry() -> None:
    delays = [retry_delay(n, base_s=1.0, max_s=1_000.0, jitter=0.0) for n in range(1, 6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_retry_delay_is_capped() -> None:
    assert retry_delay(10, base_s=1.0, max_s=300.0, jitter=0.0) == 300.0
    assert retry_delay(60, base_s=1.0, max_s=300.0, jitter=0.0) == 300.0


@pytest.mark.parametrize("retry", [1, 3, 12])
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 0.999999])
def test_retry_jitter_adds_at_most_half_the_delay(retry: int, jitter: float) -> None:
    plain = retry_delay(retry, base_s=2.0, max_s=300.0, jitter=0.0)
    delay = retry_delay(retry, base_s=2.0, max_s=300.0, jitter=jitter)
    assert plain <= delay < plain * 1.5
    assert delay == pytest.approx(plain * (1 + jitter / 2))


def test_retry_jitter_grows_with_the_jitter_value() -> None:
    lo = retry_delay(2, base_s=1.0, max_s=60.0, jitter=0.1)
    hi = retry_delay(2, base_s=1.0, max_s=60.0, jitter=0.9)
    assert lo < hi


# --- cooldown_seconds --------------------------------------------------------------------


def test_no_cooldown_below_the_threshold() -> None:
    for failures in range(3):
        assert cooldown_seconds(failures, threshold=3, base_s=30.0, max_s=3600.0) == 0.0


def test_cooldown_starts_at_base_and_doubles_per_further_failure() -> None:
    got = [cooldown_seconds(n, threshold=3, base_s=30.0, max_s=3600.0) for n in range(3, 8)]
    assert got == [30.0, 60.0, 120.0, 240.0, 480.0]


def test_cooldown_is_capped() -> None:
    assert cooldown_seconds(20, threshold=3, base_s=30.0, max_s=3600.0) == 3600.0
    assert cooldown_seconds(200, threshold=3, base_s=30.0, max_s=3600.0) == 3600.0


def test_cooldown_with_threshold_one_starts_at_the_first_failure() -> None:
    assert cooldown_seconds(0, threshold=1, base_s=5.0, max_s=100.0) == 0.0
    assert cooldown_seconds(1, threshold=1, base_s=5.0, max_s=100.0) == 5.0


# --- node_status -------------------------------------------------------------------------


def _status(
    *,
    offline: str | None = None,
    executor_error: str | None = None,
    cooldown: bool = False,
    late: bool = False,
    jobs: int = 0,
) -> tuple[NodeState, str | None]:
    return node_status(
        offline_reason=offline,
        executor_error=executor_error,
        in_cooldown=cooldown,
        late=late,
        jobs=jobs,
    )


def test_a_healthy_node_without_jobs_is_idle_with_no_reason() -> None:
    assert _status() == (NodeState.IDLE, None)


def test_a_healthy_node_with_jobs_is_busy_with_no_reason() -> None:
    assert _status(jobs=2) == (NodeState.BUSY, None)


def test_offline_wins_over_every_other_condition() -> None:
    got = _status(offline="no heartbeat", executor_error="x", cooldown=True, late=True, jobs=3)
    assert got == (NodeState.OFFLINE, "no heartbeat")


def test_executor_error_wins_over_cooldown_and_lateness() -> None:
    state, reason = _status(executor_error="dockerd down", cooldown=True, late=True, jobs=1)
    assert state is NodeState.UNHEALTHY
    assert reason is not None and "dockerd down" in reason


def test_cooldown_wins_over_lateness() -> None:
    state, reason = _status(cooldown=True, late=True)
    assert state is NodeState.UNHEALTHY
    assert reason is not None and "cooldown" in reason


def test_a_late_node_is_unhealthy_even_with_jobs() -> None:
    state, reason = _status(late=True, jobs=4)
    assert state is NodeState.UNHEALTHY
    assert reason == "heartbeat late"
