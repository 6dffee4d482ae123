"""Liveness rules as pure functions of times: when a node is late or offline, when a job
has run out its time, how long a retry waits. The clock is always passed in."""

from __future__ import annotations

from collections.abc import Sequence


def heartbeat_deadline(
    last_heartbeat: float | None, registered: float, booted: float, *, ttl_s: float, grace_s: float
) -> float:
    """Time after which a silent node is offline.

    Right after a scheduler restart every node gets ``grace_s`` from the boot, so agents
    that were fine while the scheduler was down are not declared lost before they can
    reach it again.
    """
    seen = last_heartbeat if last_heartbeat is not None else registered
    return max(seen + ttl_s, booted + grace_s)


def is_late(
    last_heartbeat: float | None, now: float, *, interval_s: float, late_after: float
) -> bool:
    """A node is late when it missed several heartbeats in a row (not yet offline)."""
    return last_heartbeat is not None and now - last_heartbeat > interval_s * late_after


def job_deadline(started: float, timeout_s: float, grace_s: float) -> float:
    """When the scheduler itself times out a job whose agent did not.

    The agent kills the job at ``timeout_s``; the scheduler steps in only ``grace_s``
    later, for agents that went silent.
    """
    return started + timeout_s + grace_s


def retry_delay(retry: int, *, base_s: float, max_s: float, jitter: float) -> float:
    """Exponential backoff before the ``retry``-th automatic retry (1-based).

    ``jitter`` in [0, 1) spreads retries of many jobs that failed together.
    """
    delay = min(max_s, base_s * 2 ** (retry - 1))
    return float(delay * (1.0 + jitter * 0.5))


def retries_exit_code(
    code: int | None, retry_on: Sequence[int] | None, no_retry_on: Sequence[int] | None
) -> bool:
    """Whether a failure that ended with ``code`` may be retried, by the job's exit-code
    rules (Kubernetes' podFailurePolicy, GitLab's retry:when). A failure without an
    exit code (a timeout, a start that failed) is not theirs to judge."""
    if code is None:
        return True
    if no_retry_on is not None and code in no_retry_on:
        return False
    return retry_on is None or code in retry_on
