"""Which GPU of a node each job holds: pure bookkeeping over a node's record.

Placement counts GPUs (``free_gpus``); this module names them. When a job is assigned,
``take`` gives it the node's free GPUs with the lowest indices and records the job
against each in ``node.device_jobs``; ``give_back`` frees them when the job's resources
are released. A GPU is held exactly as long as the resources it came with, so the
count and the names never disagree: a node has at least as many free GPUs by name as
placement counts, and never gives one GPU to two jobs. After a restart or on a standby
the holding is rebuilt from the jobs (``holders``), as allocations are.

A node's GPUs are those its agent registered (``node.devices``); an agent that lists
none but counts some (``capacity.gpus``) has them by index, 0 to gpus - 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from common.models import GpuDevice, HeldAttempt, Job, Node, RegisterRequest
from scheduler.placement import GpuFilter


def indices(node: Node) -> list[int]:
    """The indices of the node's GPUs, in order."""
    if node.devices:
        return sorted(d.index for d in node.devices)
    return list(range(node.capacity.gpus))


def free(node: Node) -> list[int]:
    """The node's GPUs no job holds, lowest index first."""
    held = node.device_jobs
    return [i for i in indices(node) if i not in held]


def take(node: Node, job_id: str, count: int) -> tuple[int, ...]:
    """Give ``count`` free GPUs of the node to the job and record it against them.

    Raises ValueError when fewer are free, which placement's count rules out."""
    if count <= 0:
        return ()
    available = free(node)
    if len(available) < count:
        raise ValueError(
            f"node {node.name} has {len(available)} free GPUs, job {job_id} needs {count}"
        )
    taken = tuple(available[:count])
    for i in taken:
        node.device_jobs[i] = job_id
    return taken


def give_back(node: Node, job_id: str, devices: Iterable[int]) -> None:
    """The job no longer holds these GPUs of the node (only those it holds are freed)."""
    held = node.device_jobs
    for i in devices:
        if held.get(i) == job_id:
            del held[i]


def holders(running: Iterable[Job], releasing: Iterable[HeldAttempt]) -> dict[int, str]:
    """Who holds each GPU of a node, from the jobs it runs and the attempts it stops."""
    held: dict[int, str] = {}
    for h in releasing:
        for i in h.gpu_devices:
            held[i] = h.job_id
    for job in running:
        for i in job.gpu_devices:
            held[i] = job.id
    return held


def facts(devices: Sequence[GpuDevice]) -> tuple[str | None, int]:
    """What placement may filter on: the model all the GPUs are (None when there are
    none, models differ or one is unknown) and the memory of the smallest (0 when
    there are none or one is unknown)."""
    if not devices:
        return None, 0
    models = {d.model for d in devices}
    model = models.pop() if len(models) == 1 else None
    memory = [d.memory_mb for d in devices]
    smallest = 0 if None in memory else min(m for m in memory if m is not None)
    return model, smallest


def gpu_filter(model: str | None, memory_mb: int | None) -> GpuFilter | None:
    """A job's ask of its node's GPUs (constraints.gpu_model, gpu_memory_mb), if any."""
    if model is None and not memory_mb:
        return None
    return GpuFilter(model=model, memory_mb=memory_mb or 0)


def registered(req: RegisterRequest) -> list[GpuDevice]:
    """The devices of a registration, by index."""
    return sorted(req.devices, key=lambda d: d.index)
