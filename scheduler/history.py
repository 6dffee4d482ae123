"""The cluster's history: what one sample holds, how samples are averaged into coarser
steps, which stored resolution answers a range, and when coarser rows are due.

Pure: plain records in, plain records out, no clock, no I/O (the leader's loop in
``scheduler.sampler`` takes the samples and stores them; ``scheduler.store`` keeps
them as rows of ``(tier, t, document)``).

Resolutions, like an RRD archive (Munin, collectd): tier 0 keeps every sample (one per
``--history-interval``, 10 s by default) for a day; tier 1 one-minute averages for
three days; tier 2 five-minute averages for a week. Coarser tiers are averaged from
tier 0 as each of their steps completes, so every tier covers its whole span: a range
is answered from one tier, and only its last, incomplete step from tier 0. Counters
(jobs started and ended) are summed over a step, everything else is averaged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.history_models import (
    Gauge,
    GpuGauge,
    History,
    HistoryPoint,
    NodeHistory,
    NodePoint,
    SampleNode,
    StatsSample,
)
from common.models import Node
from common.states import TERMINAL, JobState, NodeState
from scheduler.config import HISTORY_INTERVAL_S
from scheduler.events import Event

#: seconds between two samples, unless --history-interval says otherwise
DEFAULT_INTERVAL_S = HISTORY_INTERVAL_S
#: the most points a reply holds when the request names no step
MAX_POINTS = 720
#: the most points a request may ask for with a small step
MAX_ASKED_POINTS = 20_000
#: the range served when the request names none (seconds)
DEFAULT_SINCE_S = 3600.0
#: the longest step a request may ask for (seconds)
MAX_STEP_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Tier:
    """One stored resolution: a row per ``step_s`` (tier 0: per sample), kept for
    ``keep_s``."""

    step_s: float
    keep_s: float


#: tier 0's step is the sampling interval; its value here is the default's
TIERS: tuple[Tier, ...] = (
    Tier(DEFAULT_INTERVAL_S, 86400.0),
    Tier(60.0, 3 * 86400.0),
    Tier(300.0, 7 * 86400.0),
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(raw: str | None, now: float) -> float:
    """``since`` as Unix seconds: a duration back from ``now`` (``15m``, ``1h``, ``7d``;
    plain seconds below a year) or a Unix time. Raises ValueError."""
    if raw is None or raw == "":
        return now - DEFAULT_SINCE_S
    m = _DURATION.match(raw)
    if m is None:
        raise ValueError("since must be a duration such as 15m, 1h, 24h, 7d or a Unix time")
    value = float(m.group(1))
    if not m.group(2) and value >= 365 * 86400:
        # A bare number that large is a moment, not a span.
        if value > now + 86400:
            raise ValueError("since is in the future")
        return value
    span = value * _UNIT_S[m.group(2)]
    if span <= 0 or span > 366 * 86400:
        raise ValueError("since must reach back more than 0 s and at most a year")
    return now - span


def parse_step(raw: str | None) -> int | None:
    """``step`` in whole seconds, None when not given. Raises ValueError."""
    if raw is None or raw == "":
        return None
    try:
        step = int(raw)
    except ValueError:
        raise ValueError("step must be a whole number of seconds") from None
    if not 1 <= step <= MAX_STEP_S:
        raise ValueError(f"step must be between 1 and {MAX_STEP_S} seconds")
    return step


def tiers_for(interval_s: float) -> tuple[Tier, ...]:
    """The tiers with tier 0 at the sampling interval."""
    return (Tier(interval_s, TIERS[0].keep_s), *TIERS[1:])


def choose(since: float, until: float, interval_s: float, step: int | None) -> tuple[int, int]:
    """(tier, step) that answer a range. The step: the one asked for, else the step of
    the finest tier that still keeps ``since`` (the coarsest when none does), coarsened
    so that the reply holds at most ``MAX_POINTS``. The tier: the coarsest that keeps
    ``since`` and whose step divides the reply's (fewest rows to read). Raises
    ValueError when the step asked for would make too many points."""
    tiers = tiers_for(interval_s)
    span = max(0.0, until - since)
    finest = next((i for i, t in enumerate(tiers) if t.keep_s >= span), len(tiers) - 1)
    if step is not None:
        if span / step > MAX_ASKED_POINTS:
            raise ValueError(f"step is too small for this range: at most {MAX_ASKED_POINTS} points")
    else:
        base = tiers[finest].step_s
        wanted = max(base, span / MAX_POINTS)
        # A whole number of stored steps per point, so each point averages alike.
        step = max(1, math.ceil(math.ceil(wanted / base - 1e-9) * base - 1e-9))
    tier = finest
    for i in range(finest + 1, len(tiers)):
        if step % tiers[i].step_s == 0:
            tier = i
    return tier, step


# --- samples -------------------------------------------------------------------------


class Tally:
    """Jobs started and ended, counted from committed job.state events between two
    samples."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def see(self, events: Iterable[Event]) -> None:
        for e in events:
            if e.type != "job.state" or not e.data:
                continue
            state = e.data.get("state")
            if state == JobState.RUNNING and e.data.get("from") != JobState.PAUSED:
                self.started += 1
            elif state in TERMINAL:
                self.ended += 1

    def take(self) -> tuple[int, int]:
        out = (self.started, self.ended)
        self.started = self.ended = 0
        return out


def node_gauges(node: Node) -> tuple[Gauge, Gauge, GpuGauge]:
    """A node's CPU (cores), memory (MiB) and GPUs: what it offers (less what is
    reserved for its host), what jobs hold, what its host reports in use."""
    cap, res, alloc, m = node.capacity, node.reserved, node.allocated, node.metrics
    cpu_used = mem_used = gpu_used = 0.0
    if m is not None:
        cpu_used = m.cpu_percent / 100.0 * cap.cpu
        mem_used = float(max(0, m.ram_total_mb - m.ram_free_mb))
        gpu_used = sum(g.utilization_percent for g in m.gpus) / 100.0
    return (
        Gauge(max(0.0, cap.cpu - res.cpu), alloc.cpu, round(cpu_used, 3)),
        Gauge(float(max(0, cap.memory_mb - res.memory_mb)), float(alloc.memory_mb), mem_used),
        GpuGauge(max(0, cap.gpus - res.gpus), alloc.gpus, round(gpu_used, 3)),
    )


def sample(
    t: float,
    counts: dict[JobState, int],
    nodes: Iterable[Node],
    started: int,
    ended: int,
) -> StatsSample:
    """The cluster now: jobs by state, and every node that is not offline."""
    cpu, mem, gpu = Gauge(), Gauge(), GpuGauge()
    per_node = []
    for node in nodes:
        if node.state is NodeState.OFFLINE:
            continue
        c, m, g = node_gauges(node)
        per_node.append(SampleNode(node.id, node.name, c, m, g))
        _add(cpu, c)
        _add(mem, m)
        gpu.capacity += g.capacity
        gpu.allocated += g.allocated
        gpu.used += g.used
    return StatsSample(
        t=t,
        queued=counts.get(JobState.QUEUED, 0),
        running=counts.get(JobState.RUNNING, 0),
        jobs={s.value: n for s, n in counts.items()},
        started=started,
        ended=ended,
        cpu=_rounded(cpu),
        memory_mb=_rounded(mem),
        gpus=GpuGauge(gpu.capacity, gpu.allocated, round(gpu.used, 3)),
        nodes=per_node,
    )


def _add(total: Gauge, g: Gauge) -> None:
    total.capacity += g.capacity
    total.allocated += g.allocated
    total.used += g.used


def _rounded(g: Gauge) -> Gauge:
    return Gauge(round(g.capacity, 3), round(g.allocated, 3), round(g.used, 3))


# --- averaging -----------------------------------------------------------------------


def rollup(samples: Sequence[StatsSample], step: float) -> list[StatsSample]:
    """Samples averaged per step (aligned on multiples of ``step``; ``t`` is the step's
    start), oldest first. Counters are summed; a node is averaged over the samples it
    appears in and keeps its newest name."""
    buckets: dict[float, list[StatsSample]] = {}
    for s in sorted(samples, key=lambda s: s.t):
        buckets.setdefault(math.floor(s.t / step) * step, []).append(s)
    return [_average(t, group) for t, group in buckets.items()]


def _average(t: float, group: list[StatsSample]) -> StatsSample:
    n = len(group)
    states: dict[str, float] = {}
    for s in group:
        for state, count in s.jobs.items():
            states[state] = states.get(state, 0.0) + count
    by_node: dict[str, list[SampleNode]] = {}
    for s in group:
        for node in s.nodes:
            by_node.setdefault(node.id, []).append(node)
    nodes = [
        SampleNode(
            node_id,
            seen[-1].name,
            _mean_gauge([x.cpu for x in seen]),
            _mean_gauge([x.memory_mb for x in seen]),
            _mean_gpus([x.gpus for x in seen]),
        )
        for node_id, seen in by_node.items()
    ]
    return StatsSample(
        t=t,
        queued=round(sum(s.queued for s in group) / n),
        running=round(sum(s.running for s in group) / n),
        jobs={state: round(total / n) for state, total in states.items()},
        started=sum(s.started for s in group),
        ended=sum(s.ended for s in group),
        cpu=_mean_gauge([s.cpu for s in group]),
        memory_mb=_mean_gauge([s.memory_mb for s in group]),
        gpus=_mean_gpus([s.gpus for s in group]),
        nodes=nodes,
    )


def _mean_gauge(gs: list[Gauge]) -> Gauge:
    n = len(gs)
    return Gauge(
        round(sum(g.capacity for g in gs) / n, 3),
        round(sum(g.allocated for g in gs) / n, 3),
        round(sum(g.used for g in gs) / n, 3),
    )


def _mean_gpus(gs: list[GpuGauge]) -> GpuGauge:
    n = len(gs)
    return GpuGauge(
        round(sum(g.capacity for g in gs) / n),
        round(sum(g.allocated for g in gs) / n),
        round(sum(g.used for g in gs) / n, 3),
    )


def history(samples: Sequence[StatsSample], since: float, until: float, step: int) -> History:
    """The reply of GET /api/v1/stats/history: ``samples`` averaged per ``step``, the
    cluster's points and each node's, nodes in name order."""
    points: list[HistoryPoint] = []
    nodes: dict[str, NodeHistory] = {}
    for s in rollup([s for s in samples if since <= s.t <= until], step):
        points.append(
            HistoryPoint(
                s.t, s.queued, s.running, s.jobs, s.started, s.ended, s.cpu, s.memory_mb, s.gpus
            )
        )
        for node in s.nodes:
            entry = nodes.get(node.id)
            if entry is None:
                entry = nodes[node.id] = NodeHistory(node.id, node.name, [])
            entry.name = node.name
            entry.points.append(NodePoint(s.t, node.cpu, node.memory_mb, node.gpus))
    listed = sorted(nodes.values(), key=lambda n: (n.name, n.id))
    return History(since=since, until=until, step=step, points=points, nodes=listed)


# --- coarser tiers -------------------------------------------------------------------


class Roller:
    """Which steps of the coarser tiers are complete and not stored yet.

    ``done[i]`` is where tier i's stored rows end (the start of its first step not
    stored); None until known, when the first call starts from the oldest step that
    tier 0 may still hold.
    """

    def __init__(self, interval_s: float, done: Sequence[float | None]) -> None:
        self.tiers = tiers_for(interval_s)
        self.done: list[float | None] = [None, *done[: len(self.tiers) - 1]]
        self.done += [None] * (len(self.tiers) - len(self.done))

    def due(self, now: float) -> list[tuple[int, float, float]]:
        """(tier, start, end) of each coarser tier whose steps in [start, end) are
        complete at ``now`` and not stored yet; tier 0's samples there make them."""
        out = []
        for i, tier in enumerate(self.tiers[1:], start=1):
            end = math.floor(now / tier.step_s) * tier.step_s
            start = self.done[i]
            if start is None:
                start = math.floor((now - self.tiers[0].keep_s) / tier.step_s) * tier.step_s
            if end > start:
                out.append((i, start, end))
        return out

    def stored(self, tier: int, end: float) -> None:
        self.done[tier] = end

    def cutoffs(self, now: float) -> dict[int, float]:
        """Per tier, the time before which its rows are past keeping."""
        return {i: now - t.keep_s for i, t in enumerate(self.tiers)}
