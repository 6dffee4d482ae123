"""Host capacity and live metrics from psutil, sampled without blocking."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from common.models import NodeMetrics, Resources

_MIB = 1024 * 1024


def host_capacity() -> Resources:
    """The whole host: logical CPUs and total RAM (the scheduler subtracts ``reserved``)."""
    cpus = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    return Resources(cpu=float(cpus), memory_mb=psutil.virtual_memory().total // _MIB)


def reserved(reserve_cpu: float, reserve_memory_mb: int) -> Resources:
    """What the host keeps for itself, clamped to what it has."""
    cap = host_capacity()
    return Resources(
        cpu=max(0.0, min(reserve_cpu, cap.cpu)),
        memory_mb=max(0, min(reserve_memory_mb, cap.memory_mb)),
    )


def prime() -> None:
    """Start psutil's CPU counter so the first real sample is meaningful."""
    psutil.cpu_percent(interval=None)


def sample(work_dir: Path) -> NodeMetrics:
    """One metrics sample; returns at once (CPU % is since the previous call)."""
    vm = psutil.virtual_memory()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    disk_free = 0
    path = work_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        disk_free = psutil.disk_usage(str(path)).free // _MIB
    except OSError:
        disk_free = 0
    return NodeMetrics(
        cpu_percent=min(100.0, max(0.0, psutil.cpu_percent(interval=None))),
        ram_total_mb=vm.total // _MIB,
        ram_free_mb=vm.available // _MIB,
        load1=max(0.0, load1),
        disk_free_mb=disk_free,
    )
