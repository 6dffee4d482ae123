"""Preemption: which preemptible jobs of lower priority to stop so that a job that fits
nowhere can run, chosen as Kubernetes does: the node whose victims have the lowest
highest priority, then the fewest victims, then the lowest sum of their priorities.

Never for a job of equal or lower priority, so two jobs cannot preempt each other back
and forth. Pure: plain node views and victims in, a choice out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler import placement

#: the pending reason's code of a job waiting for its victims to stop
PREEMPTING = "preempting"


@dataclass(slots=True, frozen=True)
class Candidate:
    """A preemptible job running on a node."""

    job_id: str
    priority: int
    cpu: float
    memory_mb: int
    gpus: int
    #: when it started (epoch seconds): among equals the latest goes first, losing least
    started: float


@dataclass(slots=True, frozen=True)
class Choice:
    node_id: str
    victims: tuple[str, ...]


def _fits(view: placement.NodeView, job: placement.JobRequest, freed: Sequence[Candidate]) -> bool:
    return (
        view.free_slots + len(freed) >= 1
        and view.free_cpu + sum(c.cpu for c in freed) >= job.cpu - placement.CPU_EPSILON
        and view.free_memory_mb + sum(c.memory_mb for c in freed) >= job.memory_mb
        and view.free_gpus + sum(c.gpus for c in freed) >= job.gpus
    )


def victims_on(
    view: placement.NodeView, running: Sequence[Candidate], job: placement.JobRequest
) -> list[Candidate] | None:
    """The fewest, lowest-priority jobs to stop on one node for ``job`` to fit, or None."""
    eligible = sorted(
        (c for c in running if c.priority < job.priority), key=lambda c: (c.priority, -c.started)
    )
    chosen: list[Candidate] = []
    for candidate in eligible:
        if _fits(view, job, chosen):
            break
        chosen.append(candidate)
    if not _fits(view, job, chosen):
        return None
    # Reprieve what is not needed after all, the highest priority first.
    for candidate in sorted(chosen, key=lambda c: (-c.priority, c.started)):
        rest = [c for c in chosen if c is not candidate]
        if _fits(view, job, rest):
            chosen = rest
    return chosen


def choose(
    nodes: Sequence[tuple[placement.NodeView, Sequence[Candidate]]],
    job: placement.JobRequest,
    now: float,
) -> Choice | None:
    """The node and victims that make room for ``job``, or None when stopping
    preemptible jobs of lower priority would make room nowhere."""
    best: tuple[tuple[int, int, int, str], Choice] | None = None
    for view, running in nodes:
        if not running or not placement.admissible(view, job, now):
            continue
        victims = victims_on(view, running, job)
        if not victims:
            continue
        key = (
            max(v.priority for v in victims),
            len(victims),
            sum(v.priority for v in victims),
            view.id,
        )
        if best is None or key < best[0]:
            best = (key, Choice(view.id, tuple(v.job_id for v in victims)))
    return best[1] if best else None
