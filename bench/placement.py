"""Placement throughput: 1,000 nodes x 10,000 queued jobs, one pass at a time.

Run from anywhere as ``python bench/placement.py``; prints one JSON object. Two scenarios:
``main`` (a mixed cluster with room for most of the queue; size-aware binpack, the
scheduler's default, then binpack by the fraction of a node left and spread once more)
and ``scarce`` (nodes already 90-100 % allocated, so most jobs cannot be placed and the
pass is dominated by rejections; its ``jobs_examined_per_s`` counts every queued job).
Inputs are built from fixed seeds, and every run gets fresh copies of them.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.placement import JobRequest, NodeView, PlacementResult, Strategy, place

NODES = 1_000
JOBS = 10_000
RUNS = 5
TARGET_DECISIONS_PER_S = 20_000
NOW = 1_700_000_000.0
GIB = 1024

ZONES = ("zone-a", "zone-b", "zone-c")


def make_nodes(rng: random.Random, used_fraction: tuple[float, float]) -> list[NodeView]:
    """Nodes of mixed sizes; each already has a random share of its capacity allocated."""
    nodes = []
    for n in range(NODES):
        cores = rng.choice((4, 8, 16, 32, 64))
        memory_mb = min(256, cores * rng.choice((2, 4, 8))) * GIB
        memory_mb = max(memory_mb, 8 * GIB)
        gpus = rng.choice((1, 2, 4, 8)) if rng.random() < 0.1 else 0
        max_parallel = rng.randint(8, 64)
        used = rng.uniform(*used_fraction)
        labels = {"zone": rng.choice(ZONES), "arch": "arm64" if rng.random() < 0.2 else "amd64"}
        if rng.random() < 0.3:
            labels["disk"] = "ssd"
        if gpus:
            labels["gpu"] = "nvidia"
        free_memory_mb = int(memory_mb * (1 - used))
        roll = rng.random()
        nodes.append(
            NodeView(
                id=f"node-{n:04d}",
                free_cpu=round(cores * (1 - used), 2),
                free_memory_mb=free_memory_mb,
                free_gpus=gpus - int(gpus * used),
                free_slots=max_parallel - int(max_parallel * used),
                total_cpu=float(cores),
                total_memory_mb=memory_mb,
                labels=labels,
                healthy=roll >= 0.02,
                draining=0.02 <= roll < 0.03,
                cooldown_until=NOW + 60 if 0.03 <= roll < 0.04 else None,
                live_free_memory_mb=(
                    None if rng.random() < 0.3 else int(free_memory_mb * rng.uniform(0.8, 1.0))
                ),
                cpu_percent=rng.uniform(0, 100),
            )
        )
    return nodes


def make_jobs(rng: random.Random, node_ids: list[str]) -> list[JobRequest]:
    """Mostly small jobs, some large ones, a few GPU jobs; a third carry constraints."""
    jobs = []
    for seq in range(JOBS):
        constraints: dict[str, str] = {}
        roll = rng.random()
        if roll < 0.15:
            constraints["zone"] = rng.choice(ZONES)
        elif roll < 0.25:
            constraints["arch"] = "arm64"
        elif roll < 0.30:
            constraints = {"zone": rng.choice(ZONES), "disk": "ssd"}
        gpus = 0
        if rng.random() < 0.03:
            gpus = rng.choice((1, 1, 2))
            constraints["gpu"] = "nvidia"
        avoid = frozenset(rng.sample(node_ids, 2)) if rng.random() < 0.05 else frozenset()
        jobs.append(
            JobRequest(
                id=f"job-{seq:05d}",
                cpu=rng.choice((0.1, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0)),
                memory_mb=rng.choice((128, 256, 512, 512, 1024, 1024, 2048, 4096, 8192, 16384)),
                gpus=gpus,
                priority=rng.choice((10, 50, 50, 50, 90)),
                seq=seq,
                constraints=constraints,
                avoid=avoid,
            )
        )
    return jobs


def run(
    nodes: list[NodeView], jobs: list[JobRequest], seed: int, strategy: Strategy, size_aware: bool
) -> tuple[float, PlacementResult]:
    fresh_nodes = [dataclasses.replace(node, labels=dict(node.labels)) for node in nodes]
    fresh_jobs = [dataclasses.replace(job, constraints=dict(job.constraints)) for job in jobs]
    rng = random.Random(seed)
    started = time.perf_counter()
    result = place(
        fresh_nodes, fresh_jobs, now=NOW, strategy=strategy, rng=rng, size_aware=size_aware
    )
    return time.perf_counter() - started, result


def scenario(
    used_fraction: tuple[float, float],
    seed: int,
    strategy: Strategy = "binpack",
    size_aware: bool = True,
) -> dict[str, object]:
    rng = random.Random(seed)
    nodes = make_nodes(rng, used_fraction)
    jobs = make_jobs(rng, [node.id for node in nodes])
    seconds: list[float] = []
    decisions: list[int] = []
    unplaced: list[int] = []
    for r in range(RUNS):
        elapsed, result = run(nodes, jobs, 1000 + r, strategy, size_aware)
        seconds.append(elapsed)
        decisions.append(len(result.decisions))
        unplaced.append(len(result.unplaced))
    median_s = statistics.median(seconds)
    return {
        "decisions_per_run": decisions,
        "unplaced_per_run": unplaced,
        "median_s_per_pass": round(median_s, 4),
        "median_decisions_per_s": round(statistics.median(decisions) / median_s),
        "median_jobs_examined_per_s": round(JOBS / median_s),
    }


def main() -> None:
    main_figures = scenario(used_fraction=(0.0, 0.5), seed=1)
    fraction = scenario(used_fraction=(0.0, 0.5), seed=1, size_aware=False)
    spread = scenario(used_fraction=(0.0, 0.5), seed=1, strategy="spread")
    scarce = scenario(used_fraction=(0.9, 1.0), seed=2)
    print(
        json.dumps(
            {
                "benchmark": "placement",
                "nodes": NODES,
                "jobs": JOBS,
                "runs": RUNS,
                "decisions_per_run": main_figures["decisions_per_run"],
                "unplaced_per_run": main_figures["unplaced_per_run"],
                "median_s_per_pass": main_figures["median_s_per_pass"],
                "median_decisions_per_s": main_figures["median_decisions_per_s"],
                "target_decisions_per_s": TARGET_DECISIONS_PER_S,
                "fraction_median_decisions_per_s": fraction["median_decisions_per_s"],
                "spread_median_decisions_per_s": spread["median_decisions_per_s"],
                "scarce": scarce,
            }
        )
    )


if __name__ == "__main__":
    main()
