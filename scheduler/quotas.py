"""Per-owner quotas on what runs at once: CPUs, memory and jobs. A job that would take
its owner past one waits with reason ``quota``. Pure: the state keeps the totals."""

from __future__ import annotations

from dataclasses import dataclass

from common.models import Quota

#: the pending reason's code, Slurm-style
QUOTA = "quota"


@dataclass(slots=True)
class Running:
    """What an owner's jobs on nodes (assigned, running, paused) take."""

    cpu: float = 0.0
    memory_mb: int = 0
    jobs: int = 0

    def add(self, cpu: float, memory_mb: int, sign: int = 1) -> None:
        self.cpu += sign * cpu
        self.memory_mb += sign * memory_mb
        self.jobs += sign


def beyond(owner: str, quota: Quota, running: Running, cpu: float, memory_mb: int) -> str | None:
    """Why one more job of (cpu, memory_mb) would take ``owner`` past its quota, if so."""
    if quota.max_running_jobs is not None and running.jobs + 1 > quota.max_running_jobs:
        return f"{QUOTA}: {owner} runs {running.jobs} of its {quota.max_running_jobs} jobs"
    if quota.max_running_cpu is not None and running.cpu + cpu > quota.max_running_cpu + 1e-9:
        return (
            f"{QUOTA}: {owner} runs {running.cpu:g} of its {quota.max_running_cpu:g} CPUs "
            f"(needs {cpu:g})"
        )
    limit = quota.max_running_memory_mb
    if limit is not None and running.memory_mb + memory_mb > limit:
        return (
            f"{QUOTA}: {owner} runs {running.memory_mb} of its {limit} MiB (needs {memory_mb} MiB)"
        )
    return None
