"""Placement quality: synthetic workloads through the real scheduler state, per policy.

Run from anywhere as ``python bench/placement_quality.py``; prints one JSON document.
Each simulation drives :class:`scheduler.state.State` with a simulated clock
(bench/placement_sim.py says how and what each figure means), so the figures follow
whatever the scheduler does, with nothing of its rules copied here.

Cluster: 100 nodes, 40 x (8 CPU, 32 GiB), 40 x (16 CPU, 64 GiB), 20 x (64 CPU, 256 GiB),
2,240 CPUs in all.

Jobs (seeds 1, 2, 3 by default; each seed makes the workload and the state's own
random choices):

- size: CPUs from a heavy-tailed mix, in percent of jobs
  1: 47, 2: 25, 4: 17, 8: 5, 16: 3.5, 32: 1.8, 48: 0.7. Jobs of 16 CPUs and more are
  6 % of the jobs and carry 41.8 % of the CPU work (147.2 of 352.2 CPU units per 100
  jobs, at equal mean run time); 32 and 48 CPU jobs fit only the 64 CPU nodes.
- memory: 2, 3 or 4 GiB per CPU, equally likely (the nodes have 4 GiB per CPU, so a job
  never needs more memory than its CPUs' share of a node).
- run time: lognormal with median 120 s and 99th percentile 4,500 s (75 min), so
  sigma = ln(37.5) / 2.326 = 1.558 (mean about 400 s); at least 1 s, at most 4 h.
- estimate: users overestimate, so ``expected_runtime_s`` = run time x a factor drawn
  uniformly from 1 to 3, and ``timeout_s`` = 1.25 x that. Every job completes after its
  run time, before its timeout.

Workloads:

- ``steady`` (A): 20,000 jobs arriving as a Poisson stream at 90 % of the CPU capacity:
  rate = 0.9 x 2,240 / mean(cpu x run time), the mean taken over the drawn jobs, so the
  offered load is 90 % for every seed. Lower bound of the makespan:
  max(sum(cpu x run time) / 2,240, max(arrival + run time)).
- ``drain`` (B): 6,000 jobs of the same mix (30 % of ``--jobs``), all submitted at
  time 0. Lower bound: max(sum(cpu x run time) / 2,240, longest run time); the longest
  job (up to 4 h) usually sets it, so ``last_start_s`` (when the queue emptied) says
  more about how fast the queue drains.

Policies are scheduler settings over the defaults: ``greedy`` (no reservations, binpack
by share), ``reserve`` (reservations only), ``size`` (size-aware binpack only) and
``default`` (the scheduler's defaults: both).

Goals (steady workload; the median over seeds of each figure, reported, not asserted):
CPU use while jobs are pending >= 0.88; p99 wait of 16+ CPU jobs <= 900 s and of 48 CPU
jobs <= 1,800 s; p99 wait of jobs under 16 CPUs <= 60 s; reserved idle CPU <= 0.5 % of
all CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.placement_sim import JobPlan, NodePlan, Simulation, figures

GIB = 1024
#: (count, CPUs, GiB) of each kind of node
CLUSTER = ((40, 8, 32), (40, 16, 64), (20, 64, 256))
#: CPUs -> percent of jobs
SIZE_MIX = {1: 47.0, 2: 25.0, 4: 17.0, 8: 5.0, 16: 3.5, 32: 1.8, 48: 0.7}
MEMORY_GIB_PER_CPU = (2, 3, 4)
MEDIAN_RUNTIME_S = 120.0
P99_RUNTIME_S = 4500.0
#: the standard normal's 99th percentile
Z99 = 2.3263
RUNTIME_SIGMA = math.log(P99_RUNTIME_S / MEDIAN_RUNTIME_S) / Z99
MIN_RUNTIME_S = 1.0
MAX_RUNTIME_S = 4 * 3600.0
#: expected_runtime_s = run time x uniform(low, high)
OVERESTIMATE = (1.0, 3.0)
#: timeout_s = expected_runtime_s x this
TIMEOUT_OVER_EXPECTED = 1.25
LOAD = 0.9

STEADY_JOBS = 20_000
#: the drain workload's jobs, as a share of --jobs
DRAIN_SHARE = 0.3
SEEDS = (1, 2, 3)
POLICIES: dict[str, dict[str, Any]] = {
    "greedy": {"reservations": 0, "size_aware": False},
    "reserve": {"reservations": 16, "size_aware": False},
    "size": {"reservations": 0, "size_aware": True},
    "default": {},
}

#: name -> (figure path in the steady figures, "<=" or ">=", target)
GOALS: dict[str, tuple[tuple[str, ...], str, float]] = {
    "cpu_use_while_pending": (("cpu_use_while_pending",), ">=", 0.88),
    "p99_wait_16plus_s": (("wait", "16+", "p99_s"), "<=", 900.0),
    "p99_wait_48_s": (("wait", "48", "p99_s"), "<=", 1800.0),
    "p99_wait_small_s": (("wait", "<16", "p99_s"), "<=", 60.0),
    "reserved_idle_share": (("reserved_idle_share",), "<=", 0.005),
}
#: figures whose median over seeds is given with each policy
SUMMARY: dict[str, tuple[str, ...]] = {
    "makespan_s": ("makespan_s",),
    "makespan_ratio": ("makespan_ratio",),
    "last_start_s": ("last_start_s",),
    "pending_s": ("pending_s",),
    "cpu_use_while_pending": ("cpu_use_while_pending",),
    "memory_use_while_pending": ("memory_use_while_pending",),
    "wait_mean_s": ("wait", "all", "mean_s"),
    "p99_wait_s": ("wait", "all", "p99_s"),
    "p99_wait_small_s": ("wait", "<16", "p99_s"),
    "p99_wait_16plus_s": ("wait", "16+", "p99_s"),
    "p99_wait_48_s": ("wait", "48", "p99_s"),
    "fragmented_jobs": ("fragmentation", "jobs"),
    "reserved_idle_share": ("reserved_idle_share",),
    "wall_s": ("wall_s",),
}


def cluster() -> list[NodePlan]:
    nodes = []
    for count, cpu, gib in CLUSTER:
        for n in range(count):
            nodes.append(NodePlan(f"c{cpu}-{n:02d}", float(cpu), gib * GIB))
    return nodes


def draw_jobs(rng: random.Random, count: int) -> list[tuple[float, int, float, float, float]]:
    """``count`` jobs of the mix: (cpu, memory_mb, run time, expected, timeout)."""
    sizes, weights = list(SIZE_MIX), list(SIZE_MIX.values())
    out = []
    for _ in range(count):
        cpu = rng.choices(sizes, weights)[0]
        memory_mb = cpu * rng.choice(MEMORY_GIB_PER_CPU) * GIB
        runtime = rng.lognormvariate(math.log(MEDIAN_RUNTIME_S), RUNTIME_SIGMA)
        runtime = min(MAX_RUNTIME_S, max(MIN_RUNTIME_S, runtime))
        expected = runtime * rng.uniform(*OVERESTIMATE)
        out.append((float(cpu), memory_mb, runtime, expected, expected * TIMEOUT_OVER_EXPECTED))
    return out


def steady(seed: int, count: int) -> list[JobPlan]:
    """Workload A: a Poisson stream at LOAD of the cluster's CPU capacity."""
    rng = random.Random(seed)
    drawn = draw_jobs(rng, count)
    total_cpu = sum(n.cpu for n in cluster())
    mean_work = statistics.fmean(cpu * runtime for cpu, _m, runtime, _e, _t in drawn)
    rate = LOAD * total_cpu / mean_work
    jobs, at = [], 0.0
    for cpu, memory_mb, runtime, expected, timeout in drawn:
        at += rng.expovariate(rate)
        jobs.append(JobPlan(at, cpu, memory_mb, runtime, expected, timeout))
    return jobs


def drain(seed: int, count: int) -> list[JobPlan]:
    """Workload B: every job submitted at time 0."""
    rng = random.Random(seed)
    return [JobPlan(0.0, *drawn) for drawn in draw_jobs(rng, count)]


def _at(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _median(runs: list[dict[str, Any]], path: Sequence[str]) -> float | None:
    values = [v for v in (_at(r, path) for r in runs) if v is not None]
    return round(statistics.median(values), 5) if values else None


def run_one(workload: str, policy: str, seed: int, count: int) -> dict[str, Any]:
    """The figures of one simulation."""
    make = steady if workload == "steady" else drain
    sim = Simulation(cluster(), make(seed, count), overrides=POLICIES[policy], seed=seed)
    result = figures(sim.run())
    print(f"{workload} {policy} seed {seed}: {result['wall_s']:.1f} s", file=sys.stderr)
    return result


def simulate(
    workload: str, policies: Sequence[str], seeds: Sequence[int], count: int, workers: int = 1
) -> dict[str, dict[str, Any]]:
    """One workload under each policy for each seed, with medians over the seeds; with
    ``workers`` > 1 the simulations run in that many processes."""
    tasks = [(workload, p, seed, count) for p in policies for seed in seeds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(run_one, *zip(*tasks, strict=True)))
    else:
        results = [run_one(*task) for task in tasks]
    out: dict[str, dict[str, Any]] = {}
    for (_w, policy, seed, _c), result in zip(tasks, results, strict=True):
        out.setdefault(policy, {"median": {}, "seeds": {}})["seeds"][str(seed)] = result
    for entry in out.values():
        runs = list(entry["seeds"].values())
        entry["median"] = {name: _median(runs, path) for name, path in SUMMARY.items()}
    return out


def goals(steady_results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each goal per policy: the median over seeds, the target, and whether it is met
    (None when there is no figure to judge)."""
    out: dict[str, Any] = {}
    for policy, result in steady_results.items():
        runs = list(result["seeds"].values())
        out[policy] = {}
        for name, (path, op, target) in GOALS.items():
            value = _median(runs, path)
            # None: no figure (no job waited, or no job of that size ran)
            met = None if value is None else value >= target if op == ">=" else value <= target
            out[policy][name] = {"median": value, "target": f"{op} {target:g}", "met": met}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=STEADY_JOBS, help="steady workload's jobs")
    parser.add_argument(
        "--drain-jobs", type=int, default=None, help="drain workload's jobs (30%% of --jobs)"
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--workload", choices=("steady", "drain", "both"), default="both")
    parser.add_argument(
        "--workers", type=int, default=1, help="simulations run at once, one process each"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    drain_jobs = args.drain_jobs if args.drain_jobs is not None else round(DRAIN_SHARE * args.jobs)
    doc: dict[str, Any] = {
        "cluster": {"nodes": len(cluster()), "cpu": sum(n.cpu for n in cluster())},
        "seeds": seeds,
        "policies": {p: POLICIES[p] for p in policies},
    }
    if args.workload in ("steady", "both"):
        results = simulate("steady", policies, seeds, args.jobs, args.workers)
        doc["steady"] = {"jobs": args.jobs, "load": LOAD, "by_policy": results}
        doc["goals"] = goals(results)
    if args.workload in ("drain", "both"):
        results = simulate("drain", policies, seeds, drain_jobs, args.workers)
        doc["drain"] = {"jobs": drain_jobs, "by_policy": results}
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
