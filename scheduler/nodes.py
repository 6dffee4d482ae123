"""Node health: one function decides a node's state and reason; cooldown arithmetic."""

from __future__ import annotations

from common.models import Resources
from common.states import NodeState


def node_status(
    *,
    offline_reason: str | None,
    executor_error: str | None,
    in_cooldown: bool,
    late: bool,
    jobs: int,
) -> tuple[NodeState, str | None]:
    """The state and human-readable reason of a node; the worst condition wins."""
    if offline_reason is not None:
        return NodeState.OFFLINE, offline_reason
    if executor_error is not None:
        return NodeState.UNHEALTHY, f"executor error: {executor_error}"
    if in_cooldown:
        return NodeState.UNHEALTHY, "in cooldown after repeated infrastructure failures"
    if late:
        return NodeState.UNHEALTHY, "heartbeat late"
    return (NodeState.BUSY if jobs else NodeState.IDLE), None


def cooldown_seconds(failures: int, *, threshold: int, base_s: float, max_s: float) -> float:
    """Cooldown after ``failures`` consecutive infrastructure failures (0 below threshold).

    Doubles with every failure past the threshold: base, 2*base, 4*base, ... up to max.
    """
    if failures < threshold:
        return 0.0
    return float(min(max_s, base_s * 2 ** (failures - threshold)))


def add(a: Resources, b: Resources) -> Resources:
    return Resources(cpu=a.cpu + b.cpu, memory_mb=a.memory_mb + b.memory_mb, gpus=a.gpus + b.gpus)


def sub(a: Resources, b: Resources) -> Resources:
    # Rounding keeps repeated float additions and subtractions from drifting below zero.
    return Resources(
        cpu=max(0.0, round(a.cpu - b.cpu, 6)),
        memory_mb=max(0, a.memory_mb - b.memory_mb),
        gpus=max(0, a.gpus - b.gpus),
    )
