"""Job and node states, and the one table of legal job transitions."""

from __future__ import annotations

from enum import StrEnum

from common.errors import IllegalTransition


class JobState(StrEnum):
    #: waiting for a node
    QUEUED = "queued"
    #: placed on a node, resources reserved, not yet started by the agent
    ASSIGNED = "assigned"
    #: the agent reports it running
    RUNNING = "running"
    #: stopped by an operator; resources stay reserved
    PAUSED = "paused"
    #: exited 0
    COMPLETED = "completed"
    #: exited non-zero, could not start, or lost with no retries left
    FAILED = "failed"
    #: cancelled by a client
    CANCELLED = "cancelled"
    #: ran past its timeout
    TIMED_OUT = "timed_out"


class NodeState(StrEnum):
    #: healthy, no jobs
    IDLE = "idle"
    #: healthy, running jobs
    BUSY = "busy"
    #: heartbeat late, in cooldown, or its executor reported broken
    UNHEALTHY = "unhealthy"
    #: no heartbeat within TTL + grace
    OFFLINE = "offline"


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)
#: States in which a job holds resources on a node.
ON_NODE: frozenset[JobState] = frozenset({JobState.ASSIGNED, JobState.RUNNING, JobState.PAUSED})

_J = JobState
#: The legal job transitions. Anything not listed here is refused (HTTP 409).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # queued -> failed: a job it depends on ended failed, cancelled or timed out.
    _J.QUEUED: frozenset({_J.ASSIGNED, _J.CANCELLED, _J.FAILED}),
    # assigned -> failed: the job could not start and has no retries left;
    # assigned -> timed_out: the scheduler enforces the timeout of a silent agent.
    _J.ASSIGNED: frozenset({_J.RUNNING, _J.QUEUED, _J.CANCELLED, _J.FAILED, _J.TIMED_OUT}),
    _J.RUNNING: frozenset(
        {_J.COMPLETED, _J.FAILED, _J.TIMED_OUT, _J.PAUSED, _J.QUEUED, _J.CANCELLED}
    ),
    # paused -> completed/failed/timed_out: it ended before the pause reached it.
    _J.PAUSED: frozenset(
        {_J.RUNNING, _J.QUEUED, _J.CANCELLED, _J.COMPLETED, _J.FAILED, _J.TIMED_OUT}
    ),
    _J.COMPLETED: frozenset(),
    # Manual retry: the same job, attempt + 1.
    _J.FAILED: frozenset({_J.QUEUED}),
    _J.CANCELLED: frozenset({_J.QUEUED}),
    _J.TIMED_OUT: frozenset({_J.QUEUED}),
}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]


def check_transition(old: JobState, new: JobState) -> None:
    """Raise IllegalTransition unless old -> new is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old.value, new.value)
