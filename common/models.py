"""The data records of Berth, each defined once.

The same msgspec definition validates a request (with the field path in the error),
encodes the response and produces the JSON schema, so no field is checked by hand.
Records are ``gc=False``: they hold no reference cycles, and leaving them out of the
garbage collector keeps both memory per job and collection pauses small.
"""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from common.history_models import MAX_SAMPLES_PER_REPORT, UsagePoint
from common.states import JobState, NodeState

# Bounds that keep absurd requests out; named once, used by the models below.
MAX_CPU = 1024.0
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB
MAX_GPUS = 64
MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_RETRIES = 100
MAX_PARALLEL = 1024

#: names are stored as text, and PostgreSQL's text holds no NUL character
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
OptName = Annotated[str, Meta(max_length=200, pattern=NO_NUL)]
LabelKey = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-/]+$")]
LabelValue = Annotated[str, Meta(max_length=256)]
Labels = Annotated[dict[LabelKey, LabelValue], Meta(max_length=64)]
Image = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
Arg = Annotated[str, Meta(max_length=65536)]
Cpu = Annotated[float, Meta(gt=0, le=MAX_CPU)]
CpuOrZero = Annotated[float, Meta(ge=0, le=MAX_CPU)]
MemoryMb = Annotated[int, Meta(ge=1, le=MAX_MEMORY_MB)]
MemoryMbOrZero = Annotated[int, Meta(ge=0, le=MAX_MEMORY_MB)]
Gpus = Annotated[int, Meta(ge=0, le=MAX_GPUS)]
Priority = Annotated[int, Meta(ge=0, le=100)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Digest = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
JobId = Annotated[str, Meta(min_length=1, max_length=64)]
EnvName = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
#: a stored secret's name: it is a path segment (/api/v1/secrets/NAME), so no slash
SecretName = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
]
#: a user of the image: a name or uid, optionally with ":group" ("1000", "1000:1000", "app")
UserSpec = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(:[A-Za-z0-9_][A-Za-z0-9_.\-]*)?$",
    ),
]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
GpuModel = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
#: a GPU's index on its host, as NVML numbers them (PCI bus order)
GpuIndex = Annotated[int, Meta(ge=0, lt=MAX_GPUS)]
#: one entry of an agent's allow-list (see common.policy)
AllowItem = Annotated[str, Meta(max_length=4102, pattern=r"^(privileged|host-network|mount:/.*)$")]
#: container paths a job's mount may not take: / and Berth's own mounts
RESERVED_MOUNT_TARGETS = frozenset({"/", "/workspace", "/checkpoint"})


class Resources(Struct, forbid_unknown_fields=True, gc=False):
    """What a job requests, or what a node has: cores, MiB of memory, GPUs."""

    cpu: CpuOrZero = 0.0
    memory_mb: MemoryMbOrZero = 0
    gpus: Gpus = 0


class JobResources(Struct, forbid_unknown_fields=True, gc=False):
    """A job's request: at least some CPU and some memory."""

    cpu: Cpu = 1.0
    memory_mb: MemoryMb = 256
    gpus: Gpus = 0


class Constraints(Struct, forbid_unknown_fields=True, gc=False):
    #: every label here must be present on the node with this value
    labels: Labels = field(default_factory=dict)
    #: every GPU of the node is this model, exactly as its agent registered it
    #: ("NVIDIA A100-SXM4-80GB"; see ``berth nodes``); needs resources.gpus
    gpu_model: GpuModel | None = None
    #: every GPU of the node has at least this many MiB; needs resources.gpus
    gpu_memory_mb: MemoryMb | None = None


class Mount(Struct, forbid_unknown_fields=True, gc=False):
    """A host path shown in the container; runs only on nodes whose allow-list covers
    its source (``berth agent --allow mount:/srv/data``)."""

    #: absolute path on the node
    source: PathText
    #: absolute path in the container
    target: PathText
    read_only: bool = True

    def __post_init__(self) -> None:
        # Raised as a validation error at this mount's path ($.mounts[i]).
        for name, path in (("source", self.source), ("target", self.target)):
            if not path.startswith("/") or ".." in path.split("/") or "\x00" in path:
                raise ValueError(f"{name} must be an absolute path without '..' (got {path!r})")
        if posixpath.normpath(self.target) in RESERVED_MOUNT_TARGETS:
            taken = ", ".join(sorted(RESERVED_MOUNT_TARGETS))
            raise ValueError(f"target may not be one of {taken} (got {self.target!r})")


class Webhook(Struct, forbid_unknown_fields=True, gc=False):
    """Where to POST (HMAC-signed) when the job ends."""

    url: Annotated[str, Meta(max_length=2048, pattern=r"^https?://[^\s]+$")]


#: the most tasks one array may have
MAX_ARRAY_TASKS = 100_000
#: the most times a job is requeued for losses it did not cause
MAX_REQUEUES = 1000

ExitCode = Annotated[int, Meta(ge=-255, le=255)]
ExitCodes = Annotated[list[ExitCode], Meta(max_length=256)]


#: which end of a dependency lets its dependent start
DependencyEnd = Literal["completed", "ended", "failed"]


class Dependency(Struct, forbid_unknown_fields=True, gc=False):
    """A job this one waits for, and which end of it lets this one start (Slurm's
    afterok, afterany and afternotok)."""

    job: JobId
    #: completed: it completed; ended: it ended any way; failed: it ended without completing
    when: DependencyEnd = "completed"


class ArraySpec(Struct, forbid_unknown_fields=True, gc=False):
    """Run the spec as ``count`` tasks, indexed 0..count-1, sharing one array id."""

    count: Annotated[int, Meta(ge=1, le=MAX_ARRAY_TASKS)]
    #: at most this many of the array's tasks are assigned or running at once
    max_concurrent: Annotated[int, Meta(ge=1, le=MAX_ARRAY_TASKS)] | None = None


class SecretRef(Struct, forbid_unknown_fields=True, gc=False):
    """An environment value taken from a stored secret (``POST /api/v1/secrets``): the
    job's document keeps only the name; the value goes to the node that runs an
    attempt, in its assignment, and nowhere else."""

    secret: SecretName


#: when an agent pulls a job's image: before every attempt, only when the node lacks it,
#: or never (the image must be on the node)
PullPolicy = Literal["always", "if-not-present", "never"]


class JobSpec(Struct, forbid_unknown_fields=True, gc=False):
    """What a client submits."""

    image: Image
    name: OptName = ""
    #: a secret of the job's owner (or a shared one) holding the credentials the image
    #: is pulled with: {"registry", "username", "password"} or a Docker config JSON
    #: ({"auths": {...}}); its value goes to the node in the assignment, as env secrets'
    image_pull_secret: SecretName | None = None
    #: unset: the agent's --pull-policy (if-not-present unless its operator chose
    #: otherwise); the process executor pulls nothing and ignores it
    pull_policy: PullPolicy | None = None
    #: a list runs as is (exec form); a string runs under ``sh -c``
    command: Annotated[list[Arg], Meta(max_length=4096)] | Arg | None = None
    #: a value is a string, or {"secret": NAME}: the value of a secret of the job's
    #: owner or a shared one, given to the attempt when it starts
    env: Annotated[dict[EnvName, Arg | SecretRef], Meta(max_length=1024)] = field(
        default_factory=dict
    )
    workdir: Annotated[str, Meta(max_length=4096)] | None = None
    resources: JobResources = field(default_factory=JobResources)
    timeout_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] = 3600.0
    #: how long the job is expected to run; placement plans reservations with it
    #: (backfill). Unset: timeout_s. At most timeout_s.
    expected_runtime_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    max_retries: Annotated[int, Meta(ge=0, le=MAX_RETRIES)] = 0
    #: requeues for losses the job did not cause (its node went offline or was drained
    #: with requeue, its agent or dockerd was lost, it was preempted); they do not
    #: spend max_retries
    max_requeues: Annotated[int, Meta(ge=0, le=MAX_REQUEUES)] = 3
    #: exit codes that are retried (others fail at once); unset: every failure is
    retry_on_exit_codes: ExitCodes | None = None
    #: exit codes that are never retried
    no_retry_on_exit_codes: ExitCodes | None = None
    #: a job not started within this many seconds of entering the queue fails
    #: (error code queue_timeout); unset: the scheduler's --default-queue-timeout
    queue_timeout_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    #: a job that has not ended by this time is cancelled (Slurm's --deadline)
    deadline: datetime | None = None
    #: may be stopped and requeued to make room for a job of higher priority
    preemptible: bool = False
    #: run as an array of tasks (each gets BERTH_ARRAY_INDEX and BERTH_ARRAY_ID)
    array: ArraySpec | None = None
    priority: Priority = 50
    constraints: Constraints = field(default_factory=Constraints)
    #: "host" runs only on nodes that allow it (``--allow host-network``)
    network: Literal["none", "bridge", "host"] = "none"
    #: run as this user of the image (a name or uid, optionally ":group")
    user: UserSpec | None = None
    #: read-only root filesystem; /workspace, /checkpoint and a /tmp tmpfs stay writable
    read_only: bool = False
    #: a privileged container; runs only on nodes that allow it (``--allow privileged``)
    privileged: bool = False
    #: host paths to mount; each runs only on nodes that allow its source
    # A tuple: the empty one is shared by every job.
    mounts: Annotated[tuple[Mount, ...], Meta(max_length=64)] = ()
    #: sha256 of an input archive stored on the scheduler (POST /api/v1/blobs)
    inputs: Digest | None = None
    labels: Labels = field(default_factory=dict)
    #: jobs that must end before this one may start: an id (it must complete), or
    #: {"job": id, "when": "completed" | "ended" | "failed"}
    depends_on: Annotated[list[JobId | Dependency], Meta(max_length=1000)] = field(
        default_factory=list
    )
    #: a concurrency group: at most its max_concurrent jobs are assigned or running
    group: Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL)] | None = None
    #: the group's limit, when this job is the first to name the group
    group_max_concurrent: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    #: first automatic retry waits this long, doubling (with jitter) up to retry_max_delay_s
    retry_delay_s: Annotated[float, Meta(ge=0, le=86_400)] = 1.0
    retry_max_delay_s: Annotated[float, Meta(ge=0, le=86_400)] = 300.0
    #: the agent uploads /checkpoint this often while the job runs (and on pause/cancel)
    checkpoint_interval_s: Annotated[float, Meta(ge=1, le=86_400)] | None = None
    #: told (a signed POST) when the job reaches a terminal state
    webhook: Webhook | None = None

    def __post_init__(self) -> None:
        if self.retry_on_exit_codes is not None and self.no_retry_on_exit_codes is not None:
            raise ValueError("retry_on_exit_codes and no_retry_on_exit_codes exclude each other")
        gpu_asked = self.constraints.gpu_model is not None or self.constraints.gpu_memory_mb
        if gpu_asked and not self.resources.gpus:
            raise ValueError(
                "constraints.gpu_model and constraints.gpu_memory_mb need resources.gpus"
            )
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("deadline must name its timezone (for example 2027-01-01T00:00:00Z)")

    def dependencies(self) -> list[Dependency]:
        """depends_on with every entry in its long form."""
        return [Dependency(d) if isinstance(d, str) else d for d in self.depends_on]

    def secret_names(self) -> list[str]:
        """The secrets an attempt of this job needs, each once: its env's in the order
        named, then its image_pull_secret."""
        names = [v.secret for v in self.env.values() if isinstance(v, SecretRef)]
        if self.image_pull_secret is not None:
            names.append(self.image_pull_secret)
        return list(dict.fromkeys(names))


#: the longest message a progress report may carry
MAX_PROGRESS_MESSAGE = 1024


class Progress(Struct, forbid_unknown_fields=True, gc=False):
    percent: Percent = 0.0
    message: Annotated[str, Meta(max_length=MAX_PROGRESS_MESSAGE)] = ""


class WebhookDelivery(Struct, gc=False):
    """One try to deliver a job's end to its webhook."""

    at: datetime
    attempt: int
    #: the HTTP status the receiver answered, if it answered
    status: int | None = None
    error: str | None = None


class Usage(Struct, forbid_unknown_fields=True, gc=False):
    """What a running job uses, sampled by its agent (docker stats)."""

    cpu_percent: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    memory_mb: Annotated[float, Meta(ge=0, le=1e9)] = 0.0
    peak_cpu_percent: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    peak_memory_mb: Annotated[float, Meta(ge=0, le=1e9)] = 0.0


class Attempt(Struct, gc=False):
    """One finished attempt of a job, kept as history when the job runs again."""

    attempt: int
    node_id: str | None
    state: JobState
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None


class Reservation(Struct, forbid_unknown_fields=True, gc=False):
    """Room kept on a node for a queued job that fits nowhere now."""

    node_id: str
    #: the node's name
    node: str
    #: when the running jobs' estimates (expected_runtime_s, else timeout_s) free the
    #: room: the job's estimated start. None: a job there has no end in sight.
    start: datetime | None = None


class Job(Struct, gc=False):
    id: str
    name: str
    state: JobState
    spec: JobSpec
    created_at: datetime
    reason: str | None = None
    #: a queued job's nodes counted by why each cannot take it ("parallel_limit": 2, ...)
    pending: dict[str, int] | None = None
    attempt: int = 1
    node_id: str | None = None
    #: the node's GPUs (indices) this attempt was given
    gpu_devices: tuple[int, ...] = ()
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    progress: Progress | None = None
    #: the event index of the last change to this job
    index: int = 0
    #: earlier attempts, oldest first
    # Tuples: the empty one is shared by every job, which matters at 100,000 jobs.
    attempts: tuple[Attempt, ...] = ()
    #: nodes where an attempt of this job failed; placement ranks them lower
    failed_nodes: tuple[str, ...] = ()
    #: a requeued job waits until this time (retry backoff)
    not_before: datetime | None = None
    #: when the job last entered the queue (a queue timeout counts from it)
    queued_at: datetime | None = None
    #: automatic retries used so far (manual retries do not count)
    retries: int = 0
    #: requeues after losses the job did not cause (see JobSpec.max_requeues)
    requeues: int = 0
    #: the array this job is a task of, and its index there
    array_id: str | None = None
    array_index: int | None = None
    #: a short code for why the job failed or was cancelled ("queue_timeout", ...)
    error_code: str | None = None
    #: a queued job held back from placement (its array is paused) until released
    held: bool = False
    #: a queued job that fits nowhere now: the node kept for it and when it is
    #: expected to start there (backfill may use the node only around it)
    reservation: Reservation | None = None
    submitted_by: str | None = None
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None
    #: current and peak resource use of the running attempt
    usage: Usage | None = None
    #: sha256 of the archive of what the job left in /workspace/out
    outputs: str | None = None
    #: sha256 of the latest archive of /checkpoint, restored into the next attempt
    checkpoint: str | None = None
    #: the attempt that wrote that checkpoint
    checkpoint_attempt: int = 0
    #: the job's end still has to reach its webhook
    webhook_pending: bool = False
    webhook_deliveries: tuple[WebhookDelivery, ...] = ()


class GpuDevice(Struct, forbid_unknown_fields=True, gc=False):
    """One GPU of a node, as its agent registers it (from NVML, or only by index)."""

    index: GpuIndex
    #: NVML's "GPU-..." UUID; None when the agent was told the index without NVML
    uuid: Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL)] | None = None
    #: NVML's name of the model ("NVIDIA A100-SXM4-80GB"); None when not known
    model: GpuModel | None = None
    #: total memory; None when not known
    memory_mb: MemoryMb | None = None


class GpuUse(Struct, forbid_unknown_fields=True, gc=False):
    """What one GPU is doing, sampled by its agent through NVML."""

    index: GpuIndex
    #: percent of the last sample period a kernel ran on it
    utilization_percent: Percent = 0.0
    memory_used_mb: MemoryMbOrZero = 0


class NodeMetrics(Struct, forbid_unknown_fields=True, gc=False):
    cpu_percent: Percent = 0.0
    ram_total_mb: MemoryMbOrZero = 0
    ram_free_mb: MemoryMbOrZero = 0
    load1: Annotated[float, Meta(ge=0, le=1e6)] = 0.0
    disk_free_mb: Annotated[int, Meta(ge=0)] = 0
    #: per GPU, when the agent has NVML
    gpus: Annotated[list[GpuUse], Meta(max_length=MAX_GPUS)] = field(default_factory=list)


class HeldAttempt(Struct, gc=False):
    """Resources kept for an attempt the scheduler let go of (cancelled, timed out)
    until its agent confirms the attempt stopped."""

    job_id: str
    attempt: int
    resources: Resources
    #: the node's GPUs (indices) the attempt holds
    gpu_devices: tuple[int, ...] = ()


class Node(Struct, gc=False):
    id: str
    name: str
    state: NodeState
    capacity: Resources
    registered_at: datetime
    hostname: str = ""
    reason: str | None = None
    draining: bool = False
    #: why it drains: an operator's words, or the agent shutting down
    drain_reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    reserved: Resources = field(default_factory=Resources)
    allocated: Resources = field(default_factory=Resources)
    max_parallel: int = 1
    running_jobs: list[str] = field(default_factory=list)
    #: attempts that were stopped by the scheduler and may still be running on the node
    releasing: list[HeldAttempt] = field(default_factory=list)
    metrics: NodeMetrics | None = None
    last_heartbeat_at: datetime | None = None
    cooldown_until: datetime | None = None
    #: consecutive infrastructure failures; reset by a healthy run
    infra_failures: int = 0
    #: what the agent last said is wrong with its executor, if anything
    executor_error: str | None = None
    executor: str = "docker"
    version: str = ""
    index: int = 0
    #: what the agent permits beyond the default sandbox (see common.policy)
    allow: list[str] = field(default_factory=list)
    #: its GPUs, as its agent registered them
    devices: list[GpuDevice] = field(default_factory=list)
    #: GPU index -> the job that holds it (running there, or stopping)
    device_jobs: dict[int, str] = field(default_factory=dict)


# --- requests and replies of the agent protocol ---------------------------------------


class RegisterRequest(Struct, forbid_unknown_fields=True):
    name: Name
    capacity: Resources
    hostname: OptName = ""
    labels: Labels = field(default_factory=dict)
    reserved: Resources = field(default_factory=Resources)
    max_parallel: Annotated[int, Meta(ge=1, le=MAX_PARALLEL)] = 1
    executor: Literal["docker", "process"] = "docker"
    version: Annotated[str, Meta(max_length=64)] = ""
    #: the agent's allow-list: privileged, host-network, mount:/path (common.policy)
    allow: Annotated[list[AllowItem], Meta(max_length=256)] = field(default_factory=list)
    #: the node token this agent holds for ``name``: re-registering a registered name
    #: needs it (or an admin token); the join token alone only registers new names
    node_token: Annotated[str, Meta(min_length=1, max_length=512)] | None = None
    #: its GPUs, one per capacity.gpus; without them capacity.gpus counts GPUs known
    #: only by index (0 .. gpus-1)
    devices: Annotated[list[GpuDevice], Meta(max_length=MAX_GPUS)] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.devices:
            return
        if len(self.devices) != self.capacity.gpus:
            raise ValueError(
                f"capacity.gpus is {self.capacity.gpus} but {len(self.devices)} devices are listed"
            )
        if len({d.index for d in self.devices}) != len(self.devices):
            raise ValueError("devices name one index twice")


class RegisterReply(Struct):
    node_id: str
    node_token: str
    heartbeat_interval_s: float
    assignment_wait_s: float


#: the highest attempt number (stored as a 32-bit integer by PostgreSQL)
MAX_ATTEMPT = 2**31 - 1
#: the highest byte offset into a log (a 64-bit integer in the stores)
MAX_OFFSET = 2**63 - 1


class RunningAttempt(Struct, forbid_unknown_fields=True):
    job_id: Annotated[str, Meta(min_length=1, max_length=64)]
    attempt: Annotated[int, Meta(ge=1, le=MAX_ATTEMPT)]
    #: the agent has it paused (docker pause, SIGSTOP)
    paused: bool = False


class HeartbeatRequest(Struct, forbid_unknown_fields=True):
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    running: Annotated[list[RunningAttempt], Meta(max_length=MAX_PARALLEL)] = field(
        default_factory=list
    )
    #: set when the agent's executor is broken (for example dockerd does not answer)
    executor_error: Annotated[str, Meta(max_length=1024)] | None = None
    #: the agent is shutting down: it takes no new jobs and finishes what it runs
    draining: bool = False


class Command(Struct):
    """What the scheduler tells an agent to do with an attempt it runs."""

    action: Literal["cancel", "pause", "resume"]
    job_id: str
    attempt: int
    reason: str = ""


class HeartbeatReply(Struct):
    heartbeat_interval_s: float
    commands: list[Command] = field(default_factory=list)


class Assignment(Struct):
    job_id: str
    attempt: int
    spec: JobSpec
    #: sha256 of the checkpoint to restore into /checkpoint before the job starts
    checkpoint: str | None = None
    #: the values of the secrets the spec names (``JobSpec.secret_names``), by name:
    #: they travel only here, to the node that runs the attempt
    secrets: dict[str, str] = field(default_factory=dict)
    #: the node's GPUs (indices) given to this attempt, one per resources.gpus
    gpu_devices: tuple[int, ...] = ()


class AssignmentsReply(Struct):
    assignments: list[Assignment]
    index: int


ReportState = Literal["running", "completed", "failed", "timed_out", "cancelled"]


class Report(Struct, forbid_unknown_fields=True):
    attempt: Annotated[int, Meta(ge=1, le=MAX_ATTEMPT)]
    state: ReportState | None = None
    exit_code: Annotated[int, Meta(ge=-255, le=255)] | None = None
    error: Annotated[str, Meta(max_length=4096)] | None = None
    #: True when the failure is the node's (container could not start, executor error),
    #: not the job's own; such failures count toward the node's cooldown
    infra_failure: bool = False
    #: the container was killed for using more memory than its limit
    oom_killed: bool = False
    #: the executor lost the attempt (dockerd lost, the container disappeared): the job
    #: did not cause its end, so it is requeued without spending a retry
    lost: bool = False
    progress: Progress | None = None
    usage: Usage | None = None
    #: the usage samples taken since the last report that carried some, oldest first
    samples: Annotated[list[UsagePoint], Meta(max_length=MAX_SAMPLES_PER_REPORT)] | None = None
    #: sha256 of the uploaded archive of /workspace/out (with the final report)
    outputs: Digest | None = None
    #: sha256 of a newly uploaded archive of /checkpoint
    checkpoint: Digest | None = None


class JobReport(Report, forbid_unknown_fields=True, kw_only=True):
    """One item of a batch of reports: a Report naming its job."""

    job_id: JobId


class ReportBatch(Struct, forbid_unknown_fields=True):
    reports: Annotated[list[JobReport], Meta(min_length=1, max_length=1000)]


class ReportResult(Struct):
    job_id: str
    ok: bool
    state: JobState | None = None
    #: set when the report was refused: {"code", "message", "details"}
    error: dict[str, Any] | None = None


class ReportBatchReply(Struct):
    results: list[ReportResult]


class ReportReply(Struct):
    ok: bool
    state: JobState
    commands: list[Command] = field(default_factory=list)


# --- client requests -------------------------------------------------------------------


class DrainRequest(Struct, forbid_unknown_fields=True):
    drain: bool = True
    reason: Annotated[str, Meta(max_length=1024)] = ""
    #: stop the node's jobs now and queue them again elsewhere (each spends one of its
    #: requeues, not a retry); without it they run to their end
    requeue: bool = False


class GroupLimit(Struct, forbid_unknown_fields=True):
    """A concurrency group's limit, as an admin sets it."""

    max_concurrent: Annotated[int, Meta(ge=1, le=100_000)]


class JobBatch(Struct, forbid_unknown_fields=True):
    """Many specs submitted at once: all are accepted or none."""

    jobs: Annotated[list[JobSpec], Meta(min_length=1, max_length=1000)]


class JobFilter(Struct, forbid_unknown_fields=True):
    state: JobState | None = None
    #: every label here must be on the job with this value
    labels: Labels = field(default_factory=dict)
    group: Annotated[str, Meta(max_length=128, pattern=NO_NUL)] | None = None


class JobSelection(Struct, forbid_unknown_fields=True):
    """Jobs named by id, or every job matching a filter (not both)."""

    ids: Annotated[list[JobId], Meta(max_length=10_000)] | None = None
    filter: JobFilter | None = None


class ActionResult(Struct):
    job_id: str
    ok: bool
    state: JobState | None = None
    error: dict[str, Any] | None = None


class ActionResults(Struct):
    results: list[ActionResult]


class JobList(Struct):
    jobs: list[Job]
    next_cursor: str | None
    index: int


class NodeList(Struct):
    nodes: list[Node]
    index: int


class Stats(Struct):
    jobs: dict[str, int]
    nodes: dict[str, int]
    capacity: Resources
    allocated: Resources
    queue_depth: int
    index: int


class Quota(Struct, forbid_unknown_fields=True, gc=False):
    """What one owner's (token name's) jobs may take at once, assigned or running; a
    job past it waits with reason ``quota``. Unset: no limit."""

    max_running_cpu: Annotated[float, Meta(gt=0, le=MAX_CPU * 100_000)] | None = None
    max_running_memory_mb: Annotated[int, Meta(ge=1, le=MAX_MEMORY_MB * 100_000)] | None = None
    max_running_jobs: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None

    def __bool__(self) -> bool:
        return (
            self.max_running_cpu is not None
            or self.max_running_memory_mb is not None
            or self.max_running_jobs is not None
        )


class Owner(Struct, gc=False):
    """An owner of jobs (a token name): its quota and its recent use of the cluster."""

    name: str
    quota: Quota = field(default_factory=Quota)
    #: CPU-seconds used recently, decayed with the fair-share half-life, as of usage_at
    usage_cpu_s: float = 0.0
    usage_at: float = 0.0


class OwnerStatus(Struct):
    """An owner as shown: quota, what its jobs take now, and its fair-share usage."""

    name: str
    quota: Quota
    running_cpu: float
    running_memory_mb: int
    running_jobs: int
    queued_jobs: int
    usage_cpu_s: float


class OwnerList(Struct):
    owners: list[OwnerStatus]


class TokenCreate(Struct, forbid_unknown_fields=True):
    """A new person's token. ``all_jobs`` lets a submit token see and act on every job;
    the ``max_running_*`` fields set its name's quota."""

    role: Literal["admin", "submit", "read"]
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
    all_jobs: bool = False
    max_running_cpu: Annotated[float, Meta(gt=0, le=MAX_CPU * 100_000)] | None = None
    max_running_memory_mb: Annotated[int, Meta(ge=1, le=MAX_MEMORY_MB * 100_000)] | None = None
    max_running_jobs: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None


class TokenInfo(Struct):
    """A token as listed: never its secret."""

    id: str
    name: str
    role: str
    all_jobs: bool = False
    created_at: str | None = None
    created_by: str | None = None
    revoked_at: str | None = None


class TokenCreated(TokenInfo, kw_only=True):
    """The reply to creating a token: the only time its secret is shown."""

    token: str


class TokenList(Struct):
    tokens: list[TokenInfo]


class JoinToken(Struct):
    """The new join token after a rotation; the old one no longer registers agents."""

    id: str
    token: str


class AuditEntry(Struct):
    """Who did what to what, and when."""

    id: int
    at: str
    actor: str
    role: str
    action: str
    target: str | None = None
    details: dict[str, Any] | None = None


class AuditPage(Struct):
    entries: list[AuditEntry]
    #: pass as ``after`` to read on
    next: int


def schema_components() -> dict[str, object]:
    """JSON schema of every public model, for the OpenAPI document."""
    _, components = msgspec.json.schema_components(
        [
            JobSpec,
            Job,
            Node,
            RegisterRequest,
            HeartbeatRequest,
            Report,
            DrainRequest,
            Stats,
            TokenCreate,
            TokenInfo,
            TokenCreated,
            TokenList,
            JoinToken,
            AuditPage,
        ],
        ref_template="#/components/schemas/{name}",
    )
    return dict(components)
