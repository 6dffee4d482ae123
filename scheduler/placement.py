"""Placement decides, for one snapshot of nodes and queued jobs, which node each job runs on.

The module is pure: no I/O, no clock (the caller passes ``now``), no globals, and the
caller's objects are never mutated. One pass is a short pipeline, after Nomad's
``scheduler/feasible`` stack (``stack.go``, ``select.go``, ``rank.go``):

    order jobs (priority, then FIFO)
      -> filter: available nodes with a free slot, matching labels, an allow-list
                 that covers what the job needs, and GPUs of the model and memory
                 it asks for  (_Candidates)
      -> limit:  from a random offset, score only the first few feasible nodes  (_select)
      -> score:  Nomad's fit score minus penalties  (score_binpack / score_spread)
      -> pick:   the highest score, ties broken with the caller's rng  (_select)
      -> consume the chosen node's capacity so later jobs see what is left  (_Cluster)

A job that fits nowhere gets a one-word reason from ``Pass.offer``; ``Pass.pending`` then
says, node by node, why each one cannot take it (``blocker``, counted per cause in
PENDING_KEYS order), and ``waiting_sentence`` turns the counts into "0/5 nodes are
available: 2 at their parallel limit, 2 lack memory (needs 512 MiB), 1 draining".

``fits`` is the one fit check; the scheduler's reserve step calls it again before it
commits a decision. Inside ``place`` the same check runs over flat per-node arrays
(``_select``), because calling it per node would cost more than the whole budget of a
decision; the unit tests hold the two to the same answers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from common.policy import describe, permits_all, waiting_reason

if TYPE_CHECKING:
    from scheduler.reservations import Held

Strategy = Literal["binpack", "spread"]

#: Slack when comparing fractional cores, so that 0.1 + 0.2 cores fit into 0.3 free.
CPU_EPSILON = 1e-9
#: Nomad's fit scores lie in [0, 18] (binPackingMaxFitScore in scheduler/feasible/rank.go);
#: dividing by it gives 0..1.
MAX_FIT_SCORE = 18.0
#: Live CPU load, in percent, above which a node starts to rank lower ...
LOAD_PENALTY_START = 80.0
#: ... losing up to this much score (out of a fit score of 0..1) at 100 % load, linearly.
LOAD_PENALTY_MAX = 0.5
#: Score taken off a node where the job failed before. A fit score lies in 0..1 and the
#: load penalty in 0..LOAD_PENALTY_MAX, so any other fitting node outranks an avoided one.
AVOID_PENALTY = 10.0
#: Up to this many nodes, every feasible node is scored: small clusters get the exact best fit.
EXACT_NODE_LIMIT = 64
#: Nomad's floor for the limit stage ("the power of two choices").
MIN_CANDIDATES = 2
#: How many failed request shapes a pass remembers per set of constraints.
MAX_FAILED_SHAPES = 32

REASON_NO_FIT = "no node fits the request"
REASON_NO_MATCH = "no node matches the constraints"
REASON_NO_ELIGIBLE = "no node is taking jobs (all unhealthy, draining or in cooldown)"
#: how a reason that counts the nodes by cause begins ("0/5 nodes are available: ...")
REASON_NODES_PREFIX = "0/"

#: why a node cannot take a job, in order of precedence: a node counts under the first
#: that applies. These are the keys of a queued job's ``pending`` counts.
OFFLINE = "offline"
DRAINING = "draining"
COOLDOWN = "cooldown"
#: late heartbeat, or its executor reported broken
UNHEALTHY = "unhealthy"
#: the node's allow-list does not cover what the job needs (privileged, host network, mounts)
ALLOW_LIST = "allow_list"
#: the node does not carry the job's constraint labels
LABELS = "labels"
#: the node's GPUs are not of the model, or have less memory, than the job asks for
GPU_MODEL = "gpu_model"
#: no free slot: the node runs max_parallel jobs already
PARALLEL_LIMIT = "parallel_limit"
CPU = "cpu"
MEMORY = "memory"
GPUS = "gpus"
#: the node has the room now, but it is reserved for a job earlier in the queue
#: (scheduler.reservations) and this one would delay it
RESERVED = "reserved"
PENDING_KEYS = (
    OFFLINE,
    DRAINING,
    COOLDOWN,
    UNHEALTHY,
    ALLOW_LIST,
    LABELS,
    GPU_MODEL,
    PARALLEL_LIMIT,
    CPU,
    MEMORY,
    GPUS,
    RESERVED,
)
_PRECEDENCE = {key: i for i, key in enumerate(PENDING_KEYS)}

# A node that can take no further job in this pass has its free CPU set to this, so the
# first comparison of the fit check rejects it.
_GONE = -math.inf


@dataclass(slots=True, frozen=True)
class GpuFilter:
    """What a job asks of every GPU of its node (constraints.gpu_model, gpu_memory_mb)."""

    #: the model, exactly as the agent registered it; None: any
    model: str | None = None
    #: the least memory, in MiB
    memory_mb: int = 0

    def admits(self, model: str | None, memory_mb: int) -> bool:
        """Whether a node whose GPUs are all ``model`` (None: mixed or unknown), the
        smallest with ``memory_mb``, passes."""
        return (self.model is None or model == self.model) and memory_mb >= self.memory_mb

    def describe(self) -> str:
        """ "NVIDIA H200 GPUs with at least 40000 MiB" (either part may be absent)."""
        what = "GPUs" if self.model is None else f"{self.model} GPUs"
        return f"{what} with at least {self.memory_mb} MiB" if self.memory_mb else what


@dataclass(slots=True)
class NodeView:
    """What placement needs to know about one node; built by the caller per pass."""

    id: str
    #: capacity - reserved - allocated
    free_cpu: float
    free_memory_mb: int
    free_gpus: int
    #: max_parallel - jobs currently on the node
    free_slots: int
    #: capacity - reserved (for normalising scores)
    total_cpu: float
    total_memory_mb: int
    labels: Mapping[str, str]
    #: the node is idle or busy (the caller decides)
    healthy: bool = True
    draining: bool = False
    #: epoch seconds; the node takes no job before this time
    cooldown_until: float | None = None
    #: from the node's live metrics; None means unknown, and is not filtered on
    live_free_memory_mb: int | None = None
    #: live CPU load 0-100; heavily loaded nodes rank lower
    cpu_percent: float = 0.0
    #: what the node's agent permits beyond the sandbox (common.policy)
    allows: tuple[str, ...] = ()
    #: the model every GPU of the node is (None: no GPUs, mixed models, or unknown)
    gpu_model: str | None = None
    #: the memory of its smallest GPU, in MiB (0: no GPUs, or unknown)
    gpu_memory_mb: int = 0


@dataclass(slots=True)
class JobRequest:
    """What placement needs to know about one queued job."""

    id: str
    cpu: float
    memory_mb: int
    gpus: int = 0
    #: 0-100, higher first
    priority: int = 50
    #: submission order: FIFO within a priority
    seq: int = 0
    #: node.labels[k] must equal v for every item
    constraints: Mapping[str, str] = field(default_factory=dict)
    #: nodes where this job failed before: penalised, not excluded
    avoid: frozenset[str] = frozenset()
    #: permissions the job needs from its node (common.policy.needs); empty for most
    needs: tuple[str, ...] = ()
    #: what it asks of the node's GPUs' model and memory; None for most
    gpu: GpuFilter | None = None
    #: who submitted it (its token's name): the fair-share order and quotas go by it
    owner: str = ""
    #: how long it is expected to run, in seconds (expected_runtime_s, else timeout_s):
    #: it may backfill onto a reserved node only if it ends before the reservation
    estimate: float = math.inf


@dataclass(slots=True, frozen=True)
class Decision:
    job_id: str
    node_id: str
    #: the node's score for this job when it was chosen (see score_binpack)
    score: float


@dataclass(slots=True)
class PlacementResult:
    #: in the order the jobs were placed
    decisions: list[Decision]
    #: job id -> why it could not be placed in this pass
    unplaced: dict[str, str]


# --- filter ------------------------------------------------------------------------------


def _is_available(node: NodeView, now: float) -> bool:
    """Healthy, not draining and out of cooldown: the node takes new jobs at all."""
    return (
        node.healthy
        and not node.draining
        and (node.cooldown_until is None or node.cooldown_until <= now)
    )


def _matches(labels: Mapping[str, str], constraints: Mapping[str, str]) -> bool:
    """Every constraint label is on the node with the same value."""
    return all(labels.get(key) == value for key, value in constraints.items())


def _allows(allows: tuple[str, ...], needs: tuple[str, ...]) -> bool:
    """The node's allow-list covers what the job needs (privileged, host network, mounts)."""
    return not needs or permits_all(allows, needs)


def _has_gpus(node: NodeView, gpu: GpuFilter | None) -> bool:
    """The node's GPUs are of the model and memory the job asks for, if it asks."""
    return gpu is None or gpu.admits(node.gpu_model, node.gpu_memory_mb)


def _fit_memory(node: NodeView) -> int:
    """Memory a job may take: the allocation view, capped by live free RAM when known."""
    live = node.live_free_memory_mb
    free = node.free_memory_mb
    return free if live is None or live >= free else live


def fits(node: NodeView, job: JobRequest, now: float) -> bool:
    """Whether ``job`` may be placed on ``node`` at time ``now``: the one fit check."""
    return (
        _is_available(node, now)
        and node.free_slots >= 1
        and node.free_cpu >= job.cpu - CPU_EPSILON
        and _fit_memory(node) >= job.memory_mb
        and node.free_gpus >= job.gpus
        and _matches(node.labels, job.constraints)
        and _allows(node.allows, job.needs)
        and _has_gpus(node, job.gpu)
    )


def _availability_blocker(node: NodeView, now: float, offline: bool) -> str | None:
    """Why the node takes no job at all (``_is_available`` is false), if it does not."""
    if offline:
        return OFFLINE
    if node.draining:
        return DRAINING
    if node.cooldown_until is not None and node.cooldown_until > now:
        return COOLDOWN
    if not node.healthy:
        return UNHEALTHY
    return None


def _static_blocker(node: NodeView, job: JobRequest, now: float, offline: bool) -> str | None:
    """The first cause that no change of capacity within a pass can lift, if any."""
    why = _availability_blocker(node, now, offline)
    if why is not None:
        return why
    if not _allows(node.allows, job.needs):
        return ALLOW_LIST
    if not _matches(node.labels, job.constraints):
        return LABELS
    if not _has_gpus(node, job.gpu):
        return GPU_MODEL
    return None


def _capacity_blocker(
    slots: int, cpu: float, memory: int, gpus: int, job: JobRequest
) -> str | None:
    """The first resource the node has too little of for ``job``, if any."""
    if slots < 1:
        return PARALLEL_LIMIT
    if cpu < job.cpu - CPU_EPSILON:
        return CPU
    if memory < job.memory_mb:
        return MEMORY
    if gpus < job.gpus:
        return GPUS
    return None


def blocker(node: NodeView, job: JobRequest, now: float, *, offline: bool = False) -> str | None:
    """Why ``node`` cannot take ``job`` at ``now``: the first cause in PENDING_KEYS order,
    or None when it fits (then and only then ``fits`` is true). ``offline``: the node is
    not heard from (the view says only that it is not healthy)."""
    return _static_blocker(node, job, now, offline) or _capacity_blocker(
        node.free_slots, node.free_cpu, _fit_memory(node), node.free_gpus, job
    )


def _cores(cpu: float) -> str:
    return f"{cpu:g} core" + ("" if cpu == 1 else "s")


def _cause(key: str, count: int, job: JobRequest) -> str:
    """How ``count`` nodes blocked by ``key`` are told, e.g. "2 lack memory (needs 512 MiB)"."""
    one = count == 1
    if key == ALLOW_LIST:
        what = ", ".join(describe(n) for n in job.needs)
        flags = " ".join(f"--allow {n}" for n in job.needs)
        return f"{'does' if one else 'do'} not allow {what} ({flags})"
    if key == LABELS:
        return f"{'does' if one else 'do'} not match the constraints"
    if key == GPU_MODEL:
        asked = job.gpu.describe() if job.gpu is not None else "GPUs as asked"
        return f"{'has' if one else 'have'} no {asked}"
    if key == PARALLEL_LIMIT:
        return f"at {'its' if one else 'their'} parallel limit"
    lack = "lacks" if one else "lack"
    if key == CPU:
        return f"{lack} CPU (needs {_cores(job.cpu)})"
    if key == MEMORY:
        return f"{lack} memory (needs {job.memory_mb} MiB)"
    if key == GPUS:
        return f"{lack} GPUs (needs {job.gpus})"
    return {
        OFFLINE: "offline",
        DRAINING: "draining",
        COOLDOWN: "in cooldown",
        UNHEALTHY: "unhealthy",
        RESERVED: "reserved for an earlier job" if one else "reserved for earlier jobs",
    }[key]


def waiting_sentence(total: int, pending: Mapping[str, int], job: JobRequest) -> str:
    """Kubernetes' "0/5 nodes are available: 2 at their parallel limit, 2 lack memory
    (needs 512 MiB), 1 draining": the causes by count, most first, ties in PENDING_KEYS
    order."""
    causes = sorted(
        ((n, key) for key, n in pending.items() if n), key=lambda c: (-c[0], _PRECEDENCE[c[1]])
    )
    told = ", ".join(f"{n} {_cause(key, n, job)}" for n, key in causes)
    return f"{REASON_NODES_PREFIX}{total} nodes are available: {told}"


# --- score -------------------------------------------------------------------------------


def _fit_score(free_pct_cpu: float, free_pct_mem: float, spread: bool) -> float:
    """Nomad's ScoreFitBinPack / ScoreFitSpread (nomad/structs/funcs.go), scaled to 0..1.

    The arguments are the fractions of CPU and memory left free once the job is placed.
    total = 10^freeCpu + 10^freeMem is 20 on an empty node and 2 on a node filled exactly.
    Binpack scores 20 - total (18 for a perfect fit), spread scores total - 2 (18 for an
    untouched node); both are clamped to [0, 18] and divided by 18, as Nomad's
    BinPackIterator does. The powers of ten make the last bits of free space count most,
    so binpack strongly prefers the node the job nearly fills.
    """
    total: float = 10.0**free_pct_cpu + 10.0**free_pct_mem
    score = total - 2.0 if spread else 20.0 - total
    if score > MAX_FIT_SCORE:
        score = MAX_FIT_SCORE
    elif score < 0.0:
        score = 0.0
    return score / MAX_FIT_SCORE


def _free_after(free: float, request: float, total: float) -> float:
    """Fraction of ``total`` still free once ``request`` is taken (0 for a node of no size)."""
    return (free - request) / _positive_or_inf(total)


def _positive_or_inf(total: float) -> float:
    return total if total > 0 else math.inf


def _load_penalty(cpu_percent: float) -> float:
    """0 up to LOAD_PENALTY_START percent, then linear up to LOAD_PENALTY_MAX at 100 %."""
    if cpu_percent <= LOAD_PENALTY_START:
        return 0.0
    over = min(cpu_percent, 100.0) - LOAD_PENALTY_START
    return LOAD_PENALTY_MAX * over / (100.0 - LOAD_PENALTY_START)


def _score(
    node: NodeView, job: JobRequest, spread: bool, scale: tuple[float, float] | None
) -> float:
    total_cpu, total_memory = scale or (node.total_cpu, node.total_memory_mb)
    fit = _fit_score(
        _free_after(node.free_cpu, job.cpu, total_cpu),
        _free_after(node.free_memory_mb, job.memory_mb, total_memory),
        spread,
    )
    score = fit - _load_penalty(node.cpu_percent)
    if node.id in job.avoid:
        score -= AVOID_PENALTY
    return score


def score_binpack(
    node: NodeView, job: JobRequest, scale: tuple[float, float] | None = None
) -> float:
    """Best fit: higher for the node the job leaves fullest; minus load and avoid penalties.

    With ``scale`` (the largest node's CPU and memory: size-aware), the room left is
    measured in cores and MiB rather than as a share of this node, so a small job fills
    a small node before it breaks into a big one that a big job may need.
    """
    return _score(node, job, False, scale)


def score_spread(node: NodeView, job: JobRequest) -> float:
    """Worst fit: higher for the node the job leaves emptiest; minus the same penalties."""
    return _score(node, job, True, None)


def size_scale(nodes: Sequence[NodeView]) -> tuple[float, float]:
    """The largest CPU and memory of any node: what size-aware scores measure room by."""
    return (
        max((n.total_cpu for n in nodes), default=0.0),
        max((float(n.total_memory_mb) for n in nodes), default=0.0),
    )


# --- the working state of one pass -------------------------------------------------------


class _Cluster:
    """Free capacity of the nodes during one pass, as flat lists indexed like ``nodes``.

    A node that no job of this pass could still use (no free slot, or less CPU or memory
    than the smallest request in the queue) is marked gone: its free CPU becomes _GONE
    and ``gone`` counts it, so candidate lists can drop it.
    """

    __slots__ = (
        "fit_memory",
        "free_cpu",
        "free_gpus",
        "free_memory",
        "free_slots",
        "gone",
        "gone_cpu",
        "held",
        "ids",
        "index",
        "load_penalty",
        "min_cpu",
        "min_memory",
        "placed",
        "total_cpu",
        "total_memory",
    )

    def __init__(
        self,
        nodes: Sequence[NodeView],
        min_cpu: float,
        min_memory: int,
        scale: tuple[float, float] | None,
    ) -> None:
        self.ids = [node.id for node in nodes]
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        self.free_cpu = [node.free_cpu for node in nodes]
        self.free_memory = [node.free_memory_mb for node in nodes]
        self.fit_memory = [_fit_memory(node) for node in nodes]
        self.free_gpus = [node.free_gpus for node in nodes]
        self.free_slots = [node.free_slots for node in nodes]
        if scale is None:
            self.total_cpu = [_positive_or_inf(node.total_cpu) for node in nodes]
            self.total_memory = [_positive_or_inf(node.total_memory_mb) for node in nodes]
        else:
            self.total_cpu = [_positive_or_inf(scale[0])] * len(nodes)
            self.total_memory = [_positive_or_inf(scale[1])] * len(nodes)
        #: per node: the reservation kept there in this pass, if any
        self.held: list[Held | None] = [None] * len(nodes)
        #: how many jobs the pass has placed (what is free changes only then)
        self.placed = 0
        self.load_penalty = [_load_penalty(node.cpu_percent) for node in nodes]
        self.min_cpu = min_cpu - CPU_EPSILON
        self.min_memory = min_memory
        self.gone = 0
        #: the free CPU a gone node really has (for telling why a job waits)
        self.gone_cpu: dict[int, float] = {}

    def consume(self, i: int, job: JobRequest, now: float) -> None:
        """Take ``job``'s request from node ``i`` (and from the room beside a
        reservation there, for as long as it is expected to run into it)."""
        held = self.held[i]
        if held is not None:
            held.take(job, now)
        self.placed += 1
        self.free_cpu[i] -= job.cpu
        self.free_memory[i] -= job.memory_mb
        self.fit_memory[i] -= job.memory_mb
        self.free_gpus[i] -= job.gpus
        self.free_slots[i] -= 1
        if (
            self.free_slots[i] < 1
            or self.free_cpu[i] < self.min_cpu
            or self.fit_memory[i] < self.min_memory
        ):
            self.gone_cpu[i] = self.free_cpu[i]
            self.free_cpu[i] = _GONE
            self.gone += 1


class _CandidateList:
    """The nodes that pass a job's static filter, in a shuffled order.

    ``ring`` is the order written twice, so a scan from any offset is one slice. The
    ``max_*`` fields bound what any node in the list has free; capacity only shrinks in
    a pass, so a request above a bound is rejected without a scan, and a bound stays
    valid until it is tightened (after a scan that found nothing).
    """

    __slots__ = ("gone_seen", "max_cpu", "max_gpus", "max_memory", "order", "ring")

    def __init__(
        self,
        order: list[int],
        cluster: _Cluster,
        bounds: tuple[float, float, float] | None = None,
    ) -> None:
        self.order = order
        self.ring = order + order
        self.gone_seen = cluster.gone
        self.max_cpu: float
        self.max_memory: float
        self.max_gpus: float
        if bounds is None:
            self.tighten(cluster)
        else:
            self.max_cpu, self.max_memory, self.max_gpus = bounds

    def admits(self, cpu: float, memory: int, gpus: int) -> bool:
        return (
            cpu - CPU_EPSILON <= self.max_cpu
            and memory <= self.max_memory
            and gpus <= self.max_gpus
        )

    def compacted(self, cluster: _Cluster) -> _CandidateList:
        """The same list without the nodes that are gone; the bounds carry over."""
        free_cpu = cluster.free_cpu
        order = [i for i in self.order if free_cpu[i] != _GONE]
        return _CandidateList(order, cluster, (self.max_cpu, self.max_memory, self.max_gpus))

    def tighten(self, cluster: _Cluster) -> None:
        """Set the bounds to what the nodes have free now."""
        order = self.order
        self.max_cpu = max((cluster.free_cpu[i] for i in order), default=_GONE)
        self.max_memory = max((cluster.fit_memory[i] for i in order), default=-1.0)
        self.max_gpus = max((cluster.free_gpus[i] for i in order), default=-1.0)


ConstraintKey = tuple[tuple[str, str], ...]
#: what a job's static filter depends on: its constraint labels, the permissions it
#: needs and what it asks of the GPUs' model and memory
FilterKey = tuple[ConstraintKey, tuple[str, ...], GpuFilter | None]
_NO_FILTER: FilterKey = ((), (), None)


def filter_key(job: JobRequest) -> FilterKey:
    if not job.constraints and not job.needs and job.gpu is None:
        return _NO_FILTER
    labels = tuple(sorted(job.constraints.items())) if job.constraints else ()
    return (labels, job.needs, job.gpu)


class _Candidates:
    """Filter stage: available nodes with a free slot whose labels match the constraints,
    whose allow-list covers what the job needs and whose GPUs are what it asks for.

    Availability, labels and allow-lists do not change within a pass and free slots only
    shrink, so a list is built once per (filter key, needs GPUs); nodes that fill up are
    dropped from it now and then. Labels are matched through an index from each (label,
    value) to the available nodes carrying it: a node matches when it is in the index
    entry of every constraint, which is ``_matches`` without a pass over every node for
    every distinct set of constraints. The few jobs that need permissions filter the
    label matches once more with ``_allows``, and those that name a GPU model or memory
    filter what is left with ``_has_gpus``.
    """

    __slots__ = (
        "_allows",
        "_available",
        "_by_label",
        "_cluster",
        "_labels",
        "_lists",
        "_matching",
        "_nodes",
        "_reasons",
        "_rng",
        "_unavailable",
    )

    def __init__(
        self, nodes: Sequence[NodeView], now: float, cluster: _Cluster, rng: random.Random
    ) -> None:
        self._cluster = cluster
        self._rng = rng
        self._nodes = nodes
        self._labels = [node.labels for node in nodes]
        self._allows = [node.allows for node in nodes]
        self._available = [i for i, node in enumerate(nodes) if _is_available(node, now)]
        self._by_label: dict[tuple[str, str], list[int]] | None = None
        self._matching: dict[FilterKey, list[int]] = {_NO_FILTER: self._available}
        self._lists: dict[tuple[FilterKey, bool], _CandidateList] = {}
        self._reasons: dict[FilterKey, str] = {}
        self._unavailable: list[int] | None = None

    @property
    def any_available(self) -> bool:
        return bool(self._available)

    def blocked(
        self,
        key: FilterKey,
        nodes: Sequence[NodeView],
        now: float,
        is_offline: Callable[[str], bool],
    ) -> tuple[dict[str, int], list[int]]:
        """For a job with this filter key: the nodes that no capacity would let take it,
        counted by cause (offline, draining, cooldown, unhealthy, allow_list, labels,
        gpu_model), and the indexes of the others. Only the unavailable nodes are looked
        at one by one; the other counts are the differences of the filter's lists."""
        counts: dict[str, int] = {}
        available = self._available
        if len(available) < len(nodes):
            if self._unavailable is None:
                taking = set(available)
                self._unavailable = [i for i in range(len(nodes)) if i not in taking]
            for i in self._unavailable:
                node = nodes[i]
                why = _availability_blocker(node, now, is_offline(node.id)) or UNHEALTHY
                counts[why] = counts.get(why, 0) + 1
        passing = self._matching_nodes(key)
        labels, needs, gpu = key
        allowing = self._matching_nodes(((), needs, None)) if needs else available
        labelled = self._matching_nodes((labels, needs, None)) if gpu is not None else passing
        if len(available) > len(allowing):
            counts[ALLOW_LIST] = len(available) - len(allowing)
        if len(allowing) > len(labelled):
            counts[LABELS] = len(allowing) - len(labelled)
        if len(labelled) > len(passing):
            counts[GPU_MODEL] = len(labelled) - len(passing)
        return counts, passing

    def get(self, key: FilterKey, needs_gpus: bool) -> _CandidateList:
        cands = self._lists.get((key, needs_gpus))
        cluster = self._cluster
        if cands is None:
            slots = cluster.free_slots
            order = [i for i in self._matching_nodes(key) if slots[i] >= 1]
            if needs_gpus:
                order = [i for i in order if cluster.free_gpus[i] >= 1]
            self._rng.shuffle(order)
            cands = self._lists[(key, needs_gpus)] = _CandidateList(order, cluster)
        elif cluster.gone - cands.gone_seen > len(cands.order) // 8 + 4:
            cands = self._lists[(key, needs_gpus)] = cands.compacted(cluster)
        return cands

    def reason(self, key: FilterKey) -> str:
        """Why a job with this filter key that fits nowhere was not placed; it depends on
        nothing that changes within a pass, so it is worked out once per key."""
        why = self._reasons.get(key)
        if why is None:
            why = self._reasons[key] = _reason(self, key)
        return why

    def matches_any(self, key: FilterKey) -> bool:
        """Whether any available node passes the filter (whatever its capacity)."""
        return bool(self._matching_nodes(key))

    def _matching_nodes(self, key: FilterKey) -> list[int]:
        matching = self._matching.get(key)
        if matching is None:
            labels, needs, gpu = key
            if gpu is not None:
                nodes = self._nodes
                matching = [
                    i
                    for i in self._matching_nodes((labels, needs, None))
                    if _has_gpus(nodes[i], gpu)
                ]
            elif needs:
                allows = self._allows
                matching = [
                    i for i in self._matching_nodes((labels, (), None)) if _allows(allows[i], needs)
                ]
            else:
                by_label = self._label_index()
                carriers = sorted((by_label.get(item, []) for item in labels), key=len)
                others = [set(nodes) for nodes in carriers[1:]]
                matching = [i for i in carriers[0] if all(i in other for other in others)]
            self._matching[key] = matching
        return matching

    def _label_index(self) -> dict[tuple[str, str], list[int]]:
        if self._by_label is None:
            self._by_label = {}
            for i in self._available:
                for item in self._labels[i].items():
                    self._by_label.setdefault(item, []).append(i)
        return self._by_label


class _FailedShapes:
    """Request shapes that fitted nowhere in this pass, per set of constraints.

    Capacity only shrinks within a pass (reservations only add limits), so a later job
    with the same constraints that asks for at least as much on every dimension and is
    expected to run at least as long cannot fit either. Only the minimal shapes are kept.
    """

    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[FilterKey, list[tuple[float, int, int, float]]] = {}

    def covers(self, key: FilterKey, job: JobRequest) -> bool:
        shapes = self._shapes.get(key)
        if shapes:
            cpu, memory, gpus, est = job.cpu, job.memory_mb, job.gpus, job.estimate
            for f_cpu, f_memory, f_gpus, f_est in shapes:
                if cpu >= f_cpu and memory >= f_memory and gpus >= f_gpus and est >= f_est:
                    return True
        return False

    def add(self, key: FilterKey, job: JobRequest) -> None:
        shapes = self._shapes.setdefault(key, [])
        if len(shapes) >= MAX_FAILED_SHAPES:
            return
        new = (job.cpu, job.memory_mb, job.gpus, job.estimate)
        shapes[:] = [s for s in shapes if not all(a >= b for a, b in zip(s, new, strict=True))]
        shapes.append(new)


def _never(_: str) -> bool:
    return False


# --- limit, score and pick ---------------------------------------------------------------


def _default_limit(node_count: int) -> int:
    """Score every node of a small cluster; otherwise Nomad's max(2, ceil(log2(n)))."""
    if node_count <= EXACT_NODE_LIMIT:
        return max(node_count, 1)
    return max(MIN_CANDIDATES, math.ceil(math.log2(node_count)))


def _select(
    cluster: _Cluster,
    cands: _CandidateList,
    job: JobRequest,
    limit: int,
    spread: bool,
    rng: random.Random,
    now: float,
) -> tuple[int, float] | None:
    """Scan the candidates from a random offset; return the best of the first ``limit``.

    Nodes the job should avoid are scored (with AVOID_PENALTY) but do not count towards
    the limit, so another fitting node is looked for before one of them is used. The fit
    test is ``fits`` on the pass's arrays; the score is ``_score`` on the same arrays. A
    node reserved for an earlier job is skipped unless the job would not delay it.
    """
    free_cpu = cluster.free_cpu
    free_memory = cluster.free_memory
    fit_memory = cluster.fit_memory
    free_gpus = cluster.free_gpus
    total_cpu = cluster.total_cpu
    total_memory = cluster.total_memory
    load_penalty = cluster.load_penalty
    held = cluster.held
    cpu = job.cpu
    memory = job.memory_mb
    gpus = job.gpus
    need_cpu = cpu - CPU_EPSILON
    avoid = {cluster.index[n] for n in job.avoid if n in cluster.index} if job.avoid else None

    n = len(cands.order)
    start = int(rng.random() * n) if n > 1 else 0
    best = -math.inf
    pick = -1
    ties = 0
    found = 0
    for i in cands.ring[start : start + n]:
        if free_cpu[i] >= need_cpu and fit_memory[i] >= memory and free_gpus[i] >= gpus:
            kept = held[i]
            if kept is not None and not kept.admits(job, now):
                continue
            score = (
                _fit_score(
                    (free_cpu[i] - cpu) / total_cpu[i],
                    (free_memory[i] - memory) / total_memory[i],
                    spread,
                )
                - load_penalty[i]
            )
            if avoid is not None and i in avoid:
                score -= AVOID_PENALTY
            else:
                found += 1
            if score > best:
                best = score
                pick = i
                ties = 1
            elif score == best:
                # Reservoir sampling: each of the tied nodes is kept with equal chance.
                ties += 1
                if rng.random() * ties < 1.0:
                    pick = i
            if found >= limit:
                break
    return None if pick < 0 else (pick, best)


def _reason(candidates: _Candidates, key: FilterKey) -> str:
    """Why a job with this filter key that fits nowhere was not placed."""
    if not candidates.any_available:
        return REASON_NO_ELIGIBLE
    labels, needs, gpu = key
    if not candidates.matches_any((labels, (), None)):
        return REASON_NO_MATCH
    if needs and not candidates.matches_any((labels, needs, None)):
        return waiting_reason(needs)
    if gpu is not None and not candidates.matches_any(key):
        return f"no node has {gpu.describe()}"
    return REASON_NO_FIT


def queue_order(job: JobRequest) -> tuple[int, int]:
    """The queue's one order: highest priority first, then first submitted."""
    return (-job.priority, job.seq)


def admissible(node: NodeView, job: JobRequest, now: float) -> bool:
    """Whether the node takes jobs at all and passes the job's static filter (labels,
    allow-list and GPU model), whatever it has free: the one availability filter, also
    used to pick the node a starving job holds."""
    return (
        _is_available(node, now)
        and _matches(node.labels, job.constraints)
        and _allows(node.allows, job.needs)
        and _has_gpus(node, job.gpu)
    )


class Pass:
    """One placement pass over a snapshot of nodes, fed one job at a time in queue order.

    Every decision consumes the chosen node's capacity for the rest of the pass, so a
    caller that walks its queue lazily (stopping a run of equal requests at the first
    that fits nowhere) gets the same decisions as ``place`` on the whole list.
    ``min_cpu`` and ``min_memory`` bound what any job of the pass asks for: a node left
    with less can take none of them and is dropped from candidate lists.
    """

    __slots__ = (
        "_candidates",
        "_capacity",
        "_cluster",
        "_failed",
        "_limit",
        "_nodes",
        "_now",
        "_rng",
        "_spread",
        "_static",
    )

    def __init__(
        self,
        nodes: Sequence[NodeView],
        *,
        now: float,
        strategy: Strategy = "binpack",
        rng: random.Random,
        min_cpu: float = 0.0,
        min_memory: int = 0,
        candidate_limit: int | None = None,
        size_aware: bool = False,
    ) -> None:
        if strategy not in ("binpack", "spread"):
            raise ValueError(f"unknown placement strategy {strategy!r}")
        if candidate_limit is not None and candidate_limit < 1:
            raise ValueError("candidate_limit must be at least 1")
        self._limit = _default_limit(len(nodes)) if candidate_limit is None else candidate_limit
        self._spread = strategy == "spread"
        self._rng = rng
        scale = size_scale(nodes) if size_aware and strategy == "binpack" else None
        self._cluster = _Cluster(nodes, min_cpu, min_memory, scale)
        self._candidates = _Candidates(nodes, now, self._cluster, rng)
        self._failed = _FailedShapes()
        self._nodes = nodes
        self._now = now
        #: per filter key: counts of the nodes blocked by a static cause, and the others
        self._static: dict[FilterKey, tuple[dict[str, int], list[int]]] = {}
        #: per request (filter key, cpu, memory, gpus): the jobs placed in the pass when
        #: counted, the counts by capacity, and the nodes with room enough
        self._capacity: dict[
            tuple[FilterKey, float, int, int], tuple[int, dict[str, int], list[int]]
        ] = {}

    def offer(self, job: JobRequest) -> Decision | str:
        """Place ``job`` on the best node that fits it, or say why it fits nowhere."""
        key = filter_key(job)
        cpu, memory, gpus = job.cpu, job.memory_mb, job.gpus
        candidates = self._candidates
        if self._failed.covers(key, job):
            return candidates.reason(key)
        cands = candidates.get(key, gpus > 0)
        picked = None
        if cands.admits(cpu, memory, gpus):
            picked = _select(
                self._cluster, cands, job, self._limit, self._spread, self._rng, self._now
            )
            if picked is None:
                cands.tighten(self._cluster)
        if picked is None:
            self._failed.add(key, job)
            return candidates.reason(key)
        i, score = picked
        self._cluster.consume(i, job, self._now)
        return Decision(job.id, self._cluster.ids[i], score)

    @property
    def placed(self) -> int:
        """How many jobs the pass has placed so far."""
        return self._cluster.placed

    def hold(self, node_id: str, held: Held) -> None:
        """Keep a reservation on the node for the rest of the pass: later jobs may use
        it only as ``held.admits`` allows. Only a job that fitted nowhere in this pass
        is reserved, so it is not offered again and the limit never lifts within it."""
        self._cluster.held[self._cluster.index[node_id]] = held

    def pending(
        self, job: JobRequest, is_offline: Callable[[str], bool] = _never
    ) -> dict[str, int]:
        """Why each node of the pass cannot take ``job`` now, counted by cause (only the
        causes that apply; the counts sum to the number of nodes when ``offer`` found
        none, each node under what ``blocker`` says of it as the pass left it).
        ``is_offline``: whether a node (by id) is not heard from; asked only of nodes
        that take no jobs.

        What does not change within a pass (health, drain, cooldown, allow-list, labels)
        is counted once per filter key, from the filter's lists; the rest reads what the
        pass has left free on the nodes that pass the filter. At most O(nodes), meant for
        the first job of a shape that fits nowhere, not for every queued job.
        """
        key = filter_key(job)
        cluster = self._cluster
        asked = (key, job.cpu, job.memory_mb, job.gpus)
        known = self._capacity.get(asked)
        if known is None or known[0] != cluster.placed:
            static = self._static.get(key)
            if static is None:
                static = self._static[key] = self._candidates.blocked(
                    key, self._nodes, self._now, is_offline
                )
            counts = dict(static[0])
            roomy = []
            free_cpu, gone_cpu = cluster.free_cpu, cluster.gone_cpu
            for i in static[1]:
                cpu = free_cpu[i]
                why = _capacity_blocker(
                    cluster.free_slots[i],
                    gone_cpu[i] if cpu == _GONE else cpu,
                    cluster.fit_memory[i],
                    cluster.free_gpus[i],
                    job,
                )
                if why is None:
                    roomy.append(i)
                else:
                    counts[why] = counts.get(why, 0) + 1
            known = self._capacity[asked] = (cluster.placed, counts, roomy)
        counts = dict(known[1])
        # Only a reservation depends on how long the job runs: the jobs of one size
        # share the rest until the pass places another job.
        held = cluster.held
        for i in known[2]:
            kept = held[i]
            if kept is not None and not kept.admits(job, self._now):
                counts[RESERVED] = counts.get(RESERVED, 0) + 1
        return counts


def place(
    nodes: Sequence[NodeView],
    jobs: Iterable[JobRequest],
    *,
    now: float,
    strategy: Strategy = "binpack",
    rng: random.Random,
    candidate_limit: int | None = None,
    size_aware: bool = False,
) -> PlacementResult:
    """Place ``jobs`` on ``nodes`` in one pass, highest priority first, FIFO within one.

    A job that fits nowhere is reported in ``unplaced`` and smaller jobs behind it are
    still tried (backfill). Every decision consumes the chosen node's capacity for the
    rest of the pass. ``candidate_limit`` caps how many feasible nodes are scored per
    job; by default all of them up to EXACT_NODE_LIMIT nodes, else ceil(log2(n)).
    """
    queue = sorted(jobs, key=queue_order)
    one_pass = Pass(
        nodes,
        now=now,
        strategy=strategy,
        rng=rng,
        min_cpu=min((job.cpu for job in queue), default=0.0),
        min_memory=min((job.memory_mb for job in queue), default=0),
        candidate_limit=candidate_limit,
        size_aware=size_aware,
    )
    decisions: list[Decision] = []
    unplaced: dict[str, str] = {}
    for job in queue:
        outcome = one_pass.offer(job)
        if isinstance(outcome, Decision):
            decisions.append(outcome)
        else:
            unplaced[job.id] = outcome
    return PlacementResult(decisions, unplaced)
