"""The cluster's history and a job's usage over time, as the API serves them.

``GET /api/v1/stats/history`` answers a :class:`History`; each ``stats.sample`` event
carries one :class:`HistoryPoint` with its nodes (:class:`SampleNode`).
``GET /api/v1/jobs/{id}/usage`` answers a :class:`JobUsage`, and each ``job.usage``
event the :class:`UsagePoint` samples an agent has just sent.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

#: the most samples one report may carry (an agent sends every few seconds, sampling
#: every two: a report that waited through a scheduler's absence carries the newest)
MAX_SAMPLES_PER_REPORT = 64


class UsagePoint(Struct, forbid_unknown_fields=True, gc=False):
    """One sample of what an attempt used, taken by its agent."""

    #: when, in Unix seconds
    t: Annotated[float, Meta(ge=0, le=1e11)]
    cpu_percent: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    memory_mb: Annotated[float, Meta(ge=0, le=1e9)] = 0.0


class JobUsage(Struct):
    """An attempt's usage samples, oldest first. Older samples may have been thinned
    (every other one dropped) to keep an attempt's count bounded."""

    job_id: str
    attempt: int
    #: how often the agent samples (seconds)
    interval_s: float
    samples: list[UsagePoint]


class Gauge(Struct, gc=False):
    """A resource in cores (cpu) or MiB (memory): what is there, what jobs were given,
    what the hosts report in use."""

    capacity: float = 0.0
    allocated: float = 0.0
    used: float = 0.0


class GpuGauge(Struct, gc=False):
    """GPUs: counted, and in use as the sum of their utilisations (0..capacity)."""

    capacity: int = 0
    allocated: int = 0
    used: float = 0.0


class HistoryPoint(Struct, gc=False):
    """The cluster at one moment (or averaged over one step)."""

    #: Unix seconds: the sample's time, or the start of its step
    t: float
    queued: int
    running: int
    #: jobs by state
    jobs: dict[str, int]
    #: jobs that started, and that ended, during the interval (or step)
    started: int
    ended: int
    cpu: Gauge
    memory_mb: Gauge
    gpus: GpuGauge


class NodePoint(Struct, gc=False):
    """One node at one moment (or averaged over one step)."""

    t: float
    cpu: Gauge
    memory_mb: Gauge
    gpus: GpuGauge


class NodeHistory(Struct):
    id: str
    name: str
    points: list[NodePoint]


class History(Struct):
    """The cluster's history from ``since`` to ``until``, one point per ``step``
    seconds where a sample was taken (none where the scheduler was down)."""

    since: float
    until: float
    step: int
    points: list[HistoryPoint]
    nodes: list[NodeHistory] = field(default_factory=list)


class SampleNode(Struct, gc=False):
    """One node in a ``stats.sample`` event."""

    id: str
    name: str
    cpu: Gauge
    memory_mb: Gauge
    gpus: GpuGauge


class StatsSample(HistoryPoint, kw_only=True):
    """The data of a ``stats.sample`` event: a point and its nodes."""

    nodes: list[SampleNode] = field(default_factory=list)
