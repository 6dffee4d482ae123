"""The GPUs of `berth nodes`: a column of the node table and a table of the devices,
each with the job that holds it and its live use."""

from __future__ import annotations

from cli.text import table
from common.models import Node


def has_gpus(nodes: list[Node]) -> bool:
    return any(n.capacity.gpus or n.devices for n in nodes)


def gpu_cell(node: Node) -> str:
    """``1/2``: GPUs allocated of those offered (capacity less reserved); ``-`` for none."""
    total = node.capacity.gpus - node.reserved.gpus
    return f"{node.allocated.gpus}/{total}" if node.capacity.gpus else "-"


def device_rows(nodes: list[Node]) -> str:
    """One line per GPU: node, index, model, memory, the job holding it, live use."""
    rows = []
    for n in nodes:
        use = {u.index: u for u in n.metrics.gpus} if n.metrics is not None else {}
        devices = {d.index: d for d in n.devices}
        for i in sorted(devices) or range(n.capacity.gpus):
            d = devices.get(i)
            u = use.get(i)
            rows.append(
                [
                    n.name,
                    str(i),
                    (d.model if d is not None else None) or "unknown",
                    f"{d.memory_mb} MiB" if d is not None and d.memory_mb else "-",
                    n.device_jobs.get(i, "-"),
                    f"{u.utilization_percent:.0f}%" if u is not None else "-",
                    f"{u.memory_used_mb} MiB" if u is not None else "-",
                    (d.uuid if d is not None else None) or "-",
                ]
            )
    headers = ["NODE", "GPU", "MODEL", "MEMORY", "JOB", "USE", "MEMORY USED", "UUID"]
    return table(headers, rows, flexible=7)
