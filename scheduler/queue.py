"""What keeps a queued job from being placed, decided apart from placement itself:
dependencies, concurrency groups and retry backoff (reservations for jobs that fit
nowhere are scheduler.reservations).

Pure functions over plain values; the state (scheduler.state.scheduling) feeds them
and applies the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.models import Dependency, DependencyEnd
from common.states import TERMINAL, JobState

#: pending reasons, Slurm-style: a code, then the detail
WAITING_TO_RETRY = "waiting to retry"
WAITING_ON = "waiting_on"
GROUP_LIMIT = "group_limit"
DEPENDENCY_FAILED = "dependency_failed"


@dataclass(slots=True, frozen=True)
class Dependencies:
    """Where a job stands with the jobs it depends on."""

    #: a dependency that ended without completing, if any
    failed: str | None
    #: dependencies not ended yet
    waiting: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.failed is None and not self.waiting


#: a depends_on entry: a plain id (it must complete) or its long form
Wanted = str | Dependency
COMPLETED: DependencyEnd = "completed"


def wanted(entry: Wanted) -> tuple[str, DependencyEnd]:
    """(job id, the end it waits for)."""
    if isinstance(entry, str):
        return entry, COMPLETED
    return entry.job, entry.when


def met(state: JobState | None, when: str) -> bool | None:
    """Whether a dependency in ``state`` lets its dependent start: True, False (it
    never will, unless a retry changes the state), None (not ended yet). A job that is
    gone (deleted by retention) ended, but how is not known any more."""
    if state is None:
        return when == "ended"
    if state not in TERMINAL:
        return None
    if when == COMPLETED:
        return state is JobState.COMPLETED
    if when == "failed":
        return state is not JobState.COMPLETED
    return True


def dependencies(
    depends_on: Iterable[Wanted], state_of: Callable[[str], JobState | None]
) -> Dependencies:
    """``failed`` names a dependency that ended in a way that can never let the job
    start (see met); one that is gone (deleted by retention)
    counts as ended, but not as completed nor as failed."""
    waiting = []
    for entry in depends_on:
        dep, when = wanted(entry)
        verdict = met(state_of(dep), when)
        if verdict is False:
            return Dependencies(failed=dep, waiting=())
        if verdict is None:
            waiting.append(dep)
    return Dependencies(failed=None, waiting=tuple(waiting))


def group_room(active: int, limit: int | None) -> int | None:
    """How many more jobs of a group may start (None: no limit)."""
    if limit is None:
        return None
    return max(0, limit - active)
