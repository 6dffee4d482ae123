"""Scheduler settings and their defaults, named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_LISTEN = "127.0.0.1:8750"
DEFAULT_STATE_DIR = Path("./state")
#: how often agents are told to heartbeat
HEARTBEAT_INTERVAL_S = 5.0
#: a node whose last heartbeat is older than interval * 3 is unhealthy (late)
LATE_AFTER_INTERVALS = 3.0
#: TTL + grace: no heartbeat for this long and the node is offline, its jobs lost
NODE_TTL_S = 30.0
#: right after a scheduler restart every node gets this long before it is declared offline
RESTART_GRACE_S = 90.0
#: the longest an agent's assignment long-poll is held open
ASSIGNMENT_WAIT_S = 30.0
#: periodic placement sweep (placement is also triggered by events)
SWEEP_INTERVAL_S = 5.0
#: how often liveness (node expiry, job timeouts, cooldown ends) is checked
LIVENESS_INTERVAL_S = 1.0
#: a silent agent's job is timed out by the scheduler this long after its timeout
TIMEOUT_GRACE_S = 30.0
#: cooldown after the Nth consecutive infrastructure failure: base * 2^(N-threshold)
COOLDOWN_THRESHOLD = 3
COOLDOWN_BASE_S = 30.0
COOLDOWN_MAX_S = 3600.0
#: a queued job that fits nowhere for this long holds a node (no more backfill past it)
#: reservations made per pass for jobs that fit nowhere (Slurm's backfill reserves for
#: the jobs it tests in priority order)
RESERVATIONS = 16
#: largest accepted request body
MAX_BODY_BYTES = 1024 * 1024
#: most changes grouped into one SQLite transaction
MAX_COMMIT_BATCH = 5000
#: longest a blocking query may wait
MAX_WAIT_S = 300.0
#: events kept whatever their job: node events and those of deleted jobs past this
#: window may be dropped (a job's own events are kept as long as the job)
EVENT_WINDOW = 100_000
#: ended jobs (with their events, logs and blobs) are deleted this long after they end
JOB_RETENTION_S = 7 * 24 * 3600.0
#: how often old events and jobs are dropped and blobs nothing names are swept
RETENTION_INTERVAL_S = 60.0
#: how often the leader samples the cluster for its history (GET /api/v1/stats/history)
HISTORY_INTERVAL_S = 10.0
#: a blob no kept job names is deleted once it was last stored this long ago (the time
#: a client has between uploading an input and submitting the job that names it)
BLOB_GRACE_S = 3600.0
#: jobs each token may create per second, and at once (a token bucket); 0: no limit
SUBMIT_RATE_PER_S = 1000.0
SUBMIT_BURST = 10_000
#: jobs that may wait in the queue at once; past it submits get 429
MAX_QUEUED_JOBS = 200_000
#: jobs one token may have waiting at once, by default this share of MAX_QUEUED_JOBS,
#: so that one token cannot fill the queue for everyone (admin tokens are exempt)
QUEUED_SHARE_PER_TOKEN = 0.25
#: largest JobSpec, as encoded JSON; past it a submit gets 413
MAX_SPEC_BYTES = 64 * 1024
#: ended jobs' documents kept in memory, most recently used; the rest are read from
#: the store when asked for (memory holds an index entry per ended job)
ENDED_JOBS_CACHED = 4096
#: encoded spec bytes of the jobs one token has stored (every job not yet deleted by
#: retention); past it submits get 429
MAX_SPEC_BYTES_PER_TOKEN = 256 * 1024 * 1024
#: event streams, WebSockets and log follows one token may hold open at once
MAX_STREAMS_PER_TOKEN = 256
#: bytes of blobs one submit token may keep stored (what it uploaded that is not swept
#: yet); 0: no limit
MAX_BLOB_BYTES_PER_TOKEN = 10 * 1024 * 1024 * 1024
#: event subscriptions one token may hold across all its streams and WebSockets
MAX_SUBSCRIPTIONS_PER_TOKEN = 1024
#: event replays (history sent before a stream goes live) read and encoded at once
MAX_CONCURRENT_REPLAYS = 4
#: unsent bytes one event subscriber may have waiting before it is cut off as too slow
STREAM_QUEUE_BYTES = 4 * 1024 * 1024
#: SSE keep-alive comment interval
KEEPALIVE_S = 15.0
#: a request's header must have arrived this long after its first byte (after the
#: connection opened, for its first request), and its body may pause no longer
HEADER_TIMEOUT_S = 10.0
#: an idle keep-alive connection is closed after this long (aiohttp's own default is an hour)
KEEPALIVE_TIMEOUT_S = 75.0
#: connections one client address may hold open before a request on them carried a
#: valid token (an IPv6 client counts by its /64); past it new ones are closed at once;
#: 0: no cap
MAX_UNAUTHENTICATED_PER_ADDRESS = 64
#: addresses that cap does not count: loopback, that is the local agent and tools, and
#: a reverse proxy on the same host (which then needs limits of its own)
UNAUTHENTICATED_EXEMPT = ("127.0.0.0/8", "::1/128")
#: descriptors kept free for the store, blobs and agents: by default this share of the
#: open-files limit, at least FD_RESERVE_MIN and at most half the limit
FD_RESERVE_SHARE = 1 / 16
FD_RESERVE_MIN = 64


#: the default half-life of owners' usage in the fair-share order (one hour)
FAIR_SHARE_HALF_LIFE_S = 3600.0


@dataclass(slots=True)
class SchedulerConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    listen: str = DEFAULT_LISTEN
    strategy: Literal["binpack", "spread"] = "binpack"
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    node_ttl_s: float = NODE_TTL_S
    restart_grace_s: float = RESTART_GRACE_S
    assignment_wait_s: float = ASSIGNMENT_WAIT_S
    sweep_interval_s: float = SWEEP_INTERVAL_S
    liveness_interval_s: float = LIVENESS_INTERVAL_S
    timeout_grace_s: float = TIMEOUT_GRACE_S
    cooldown_threshold: int = COOLDOWN_THRESHOLD
    cooldown_base_s: float = COOLDOWN_BASE_S
    cooldown_max_s: float = COOLDOWN_MAX_S
    max_body_bytes: int = MAX_BODY_BYTES
    #: how long a job without its own queue_timeout_s may wait to start (None: no limit)
    default_queue_timeout_s: float | None = None
    #: within a priority: "fair" interleaves owners by recent usage, "fifo" by submission
    queue_order: Literal["fair", "fifo"] = "fair"
    #: the half-life of an owner's usage in the fair-share order
    fair_share_half_life_s: float = FAIR_SHARE_HALF_LIFE_S
    #: whether a job that fits nowhere may stop preemptible jobs of lower priority
    preemption: bool = True
    #: how many of the first jobs in queue order that fit nowhere get a reservation
    #: (0: none; then large jobs may wait behind a stream of smaller ones for ever)
    reservations: int = RESERVATIONS
    #: binpack by the absolute room a job leaves (small jobs prefer small nodes) rather
    #: than by the fraction of its node left free
    size_aware: bool = True
    event_window: int = EVENT_WINDOW
    job_retention_s: float = JOB_RETENTION_S
    retention_interval_s: float = RETENTION_INTERVAL_S
    #: seconds between two samples of the cluster's history (scheduler.history)
    history_interval_s: float = HISTORY_INTERVAL_S
    blob_grace_s: float = BLOB_GRACE_S
    submit_rate_per_s: float = SUBMIT_RATE_PER_S
    submit_burst: int = SUBMIT_BURST
    max_queued_jobs: int = MAX_QUEUED_JOBS
    #: None: QUEUED_SHARE_PER_TOKEN of max_queued_jobs (see queued_jobs_per_token)
    max_queued_jobs_per_token: int | None = None
    max_spec_bytes: int = MAX_SPEC_BYTES
    ended_jobs_cached: int = ENDED_JOBS_CACHED
    max_spec_bytes_per_token: int = MAX_SPEC_BYTES_PER_TOKEN
    max_streams_per_token: int = MAX_STREAMS_PER_TOKEN
    max_subscriptions_per_token: int = MAX_SUBSCRIPTIONS_PER_TOKEN
    max_concurrent_replays: int = MAX_CONCURRENT_REPLAYS
    stream_queue_bytes: int = STREAM_QUEUE_BYTES
    #: browser origins besides the scheduler's own that may open the WebSocket (proxies)
    allowed_origins: tuple[str, ...] = ()
    max_blob_bytes_per_token: int = MAX_BLOB_BYTES_PER_TOKEN
    #: whether job webhooks may call loopback and private addresses
    webhook_allow_private: bool = False
    #: PEM certificate (may hold its chain) and private key: with both, HTTPS only
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: where the state is stored: "" for SQLite in the state directory, or a
    #: postgresql:// DSN (then several schedulers may share it, one leading)
    store: str = ""
    #: the URL other schedulers, agents and clients are sent to for this scheduler
    advertise_url: str = ""
    header_timeout_s: float = HEADER_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS
    #: networks (CIDR) whose connections the per-address cap does not count
    unauthenticated_exempt: tuple[str, ...] = UNAUTHENTICATED_EXEMPT
    #: None: FD_RESERVE_SHARE of the open-files limit (see fd_reserve_of)
    fd_reserve: int | None = None
    #: the key stored secrets are sealed with; None: secrets.key in the state directory.
    #: Schedulers sharing a PostgreSQL store need the same one.
    secrets_key_file: Path | None = None

    @property
    def postgres(self) -> bool:
        return is_postgres_dsn(self.store)

    @property
    def queued_jobs_per_token(self) -> int:
        if self.max_queued_jobs_per_token is not None:
            return self.max_queued_jobs_per_token
        return max(1, int(self.max_queued_jobs * QUEUED_SHARE_PER_TOKEN))

    def fd_reserve_of(self, fd_limit: int) -> int:
        """The descriptors kept free under an open-files limit of ``fd_limit``."""
        reserve = self.fd_reserve
        if reserve is None:
            reserve = max(FD_RESERVE_MIN, int(fd_limit * FD_RESERVE_SHARE))
        return max(1, min(reserve, fd_limit // 2))

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


#: the schemes of a PostgreSQL DSN (libpq and asyncpg take both)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_dsn(store: str) -> bool:
    return store.startswith(POSTGRES_SCHEMES)
