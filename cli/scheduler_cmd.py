"""`berth scheduler`: run the scheduler daemon."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal, cast

import click

from cli.loop import event_loop_factory
from cli.tls import server_tls_options, tls_pair
from common.tls import TLSSetupError
from scheduler.config import (
    BLOB_GRACE_S,
    DEFAULT_LISTEN,
    DEFAULT_STATE_DIR,
    ENDED_JOBS_CACHED,
    HEADER_TIMEOUT_S,
    HISTORY_INTERVAL_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_BLOB_BYTES_PER_TOKEN,
    MAX_CONCURRENT_REPLAYS,
    MAX_QUEUED_JOBS,
    MAX_SPEC_BYTES,
    MAX_SPEC_BYTES_PER_TOKEN,
    MAX_STREAMS_PER_TOKEN,
    MAX_SUBSCRIPTIONS_PER_TOKEN,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    RETENTION_INTERVAL_S,
    STREAM_QUEUE_BYTES,
    SUBMIT_BURST,
    SUBMIT_RATE_PER_S,
    UNAUTHENTICATED_EXEMPT,
    SchedulerConfig,
    is_postgres_dsn,
)
from scheduler.secretbox import SecretsKeyError


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _networks(raw: str) -> tuple[str, ...]:
    from scheduler.connguard import parse_networks

    items = tuple(n.strip() for n in raw.split(",") if n.strip())
    try:
        parse_networks(items)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--unauthenticated-exempt") from e
    return items


@click.command()
@click.option(
    "--state-dir",
    envvar="BERTH_STATE_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the database and tokens live.",
)
@click.option(
    "--store",
    envvar="BERTH_STORE",
    show_envvar=True,
    default="",
    help="Where the state is stored: a postgresql://USER@HOST/DB DSN, shared by every "
    "scheduler of a highly available setup; default: SQLite in the state directory.",
)
@click.option(
    "--advertise-url",
    envvar="BERTH_ADVERTISE_URL",
    show_envvar=True,
    default="",
    help="The URL other schedulers, agents and clients are sent to for this scheduler "
    "(default: http(s)://HOST:PORT of --listen).",
)
@click.option(
    "--listen",
    envvar="BERTH_LISTEN",
    show_envvar=True,
    default=DEFAULT_LISTEN,
    show_default=True,
    help="HOST:PORT to serve on.",
)
@click.option(
    "--strategy",
    envvar="BERTH_STRATEGY",
    show_envvar=True,
    type=click.Choice(["binpack", "spread"]),
    default="binpack",
    show_default=True,
    help="binpack fills nodes up; spread keeps load even.",
)
@click.option(
    "--heartbeat-interval",
    envvar="BERTH_HEARTBEAT_INTERVAL",
    show_envvar=True,
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds.",
)
@click.option(
    "--node-ttl",
    envvar="BERTH_NODE_TTL",
    show_envvar=True,
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds of silence before a node is offline.",
)
@click.option(
    "--restart-grace",
    envvar="BERTH_RESTART_GRACE",
    show_envvar=True,
    type=float,
    default=90.0,
    show_default=True,
    help="Seconds every node gets after a scheduler restart before it can be declared offline.",
)
@click.option(
    "--default-queue-timeout",
    envvar="BERTH_DEFAULT_QUEUE_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a job without its own queue_timeout_s may wait to start before it "
    "fails with queue_timeout.  [default: no limit]",
)
@click.option(
    "--queue-order",
    envvar="BERTH_QUEUE_ORDER",
    show_envvar=True,
    type=click.Choice(["fair", "fifo"]),
    default="fair",
    show_default=True,
    help="Within a priority: fair interleaves owners by their recent usage (FIFO within "
    "an owner); fifo goes by submission alone.",
)
@click.option(
    "--fair-share-half-life",
    envvar="BERTH_FAIR_SHARE_HALF_LIFE",
    show_envvar=True,
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="Seconds after which an owner's usage counts half in the fair order.",
)
@click.option(
    "--preemption",
    envvar="BERTH_PREEMPTION",
    show_envvar=True,
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="on: a job that fits nowhere may stop preemptible jobs of lower priority.",
)
@click.option(
    "--reservations",
    envvar="BERTH_RESERVATIONS",
    show_envvar=True,
    type=click.IntRange(0, 1000),
    default=16,
    show_default=True,
    help="How many of the first jobs in queue order that fit nowhere get a node "
    "reserved at the earliest time the running jobs' estimates free it; later jobs "
    "backfill around them. 0: no reservations (large jobs may starve).",
)
@click.option(
    "--node-choice",
    envvar="BERTH_NODE_CHOICE",
    show_envvar=True,
    type=click.Choice(["size", "fraction"]),
    default="size",
    show_default=True,
    help="size: binpack by the room left in cores and MiB, so small jobs fill small "
    "nodes and leave big ones to big jobs; fraction: by the share of the node left.",
)
@click.option(
    "--event-window",
    envvar="BERTH_EVENT_WINDOW",
    show_envvar=True,
    type=click.IntRange(1000, None),
    default=100_000,
    show_default=True,
    help="Events kept beyond those of jobs still kept; older ones may be dropped.",
)
@click.option(
    "--job-retention-days",
    envvar="BERTH_JOB_RETENTION_DAYS",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Ended jobs, with their events, logs and blobs, are deleted this long after they end.",
)
@click.option(
    "--blob-grace",
    envvar="BERTH_BLOB_GRACE",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=BLOB_GRACE_S,
    show_default=True,
    help="Seconds: a blob no kept job names (input, outputs, checkpoint) is deleted once "
    "it was stored this long ago; the time between uploading an input and submitting its job.",
)
@click.option(
    "--retention-interval",
    envvar="BERTH_RETENTION_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    default=RETENTION_INTERVAL_S,
    hidden=True,
    help="Seconds between retention passes (ended jobs, events, blob sweep); for tests.",
)
@click.option(
    "--history-interval",
    envvar="BERTH_HISTORY_INTERVAL",
    show_envvar=True,
    type=click.FloatRange(min=0.1, max=3600),
    default=HISTORY_INTERVAL_S,
    show_default=True,
    help="Seconds between two samples of the cluster's history (berth stats, "
    "GET /api/v1/stats/history, the stats.sample event).",
)
@click.option(
    "--submit-rate",
    envvar="BERTH_SUBMIT_RATE",
    show_envvar=True,
    type=click.FloatRange(min=0),
    default=SUBMIT_RATE_PER_S,
    show_default=True,
    help="Jobs each token may create per second (0: no limit); past it, 429 with Retry-After.",
)
@click.option(
    "--submit-burst",
    envvar="BERTH_SUBMIT_BURST",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=SUBMIT_BURST,
    show_default=True,
    help="Jobs a token may create at once before --submit-rate applies.",
)
@click.option(
    "--max-queued-jobs",
    envvar="BERTH_MAX_QUEUED_JOBS",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=MAX_QUEUED_JOBS,
    show_default=True,
    help="Jobs that may wait in the queue; past it, submits get 429.",
)
@click.option(
    "--max-queued-jobs-per-token",
    envvar="BERTH_MAX_QUEUED_JOBS_PER_TOKEN",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=None,
    help="Jobs one token may have waiting in the queue (admin tokens are exempt); past "
    "it, 429 with Retry-After.  [default: a quarter of --max-queued-jobs]",
)
@click.option(
    "--max-spec-bytes",
    envvar="BERTH_MAX_SPEC_BYTES",
    show_envvar=True,
    type=click.IntRange(min=1024),
    default=MAX_SPEC_BYTES,
    show_default=True,
    help="Largest job spec, as encoded JSON; past it, 413.",
)
@click.option(
    "--ended-jobs-cached",
    envvar="BERTH_ENDED_JOBS_CACHED",
    show_envvar=True,
    type=click.IntRange(min=1100),
    default=ENDED_JOBS_CACHED,
    show_default=True,
    help="Ended jobs whose documents stay in memory (most recently used); the others "
    "are read from the store when asked for.",
)
@click.option(
    "--max-spec-bytes-per-token",
    envvar="BERTH_MAX_SPEC_BYTES_PER_TOKEN",
    show_envvar=True,
    type=click.IntRange(min=1024),
    default=MAX_SPEC_BYTES_PER_TOKEN,
    show_default=True,
    help="Spec bytes of the jobs one token has stored until retention deletes them "
    "(admin tokens are exempt); past it, 429.",
)
@click.option(
    "--max-streams-per-token",
    envvar="BERTH_MAX_STREAMS_PER_TOKEN",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=MAX_STREAMS_PER_TOKEN,
    show_default=True,
    help="Event streams, WebSockets and log follows one token may hold open.",
)
@click.option(
    "--max-subscriptions-per-token",
    envvar="BERTH_MAX_SUBSCRIPTIONS_PER_TOKEN",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=MAX_SUBSCRIPTIONS_PER_TOKEN,
    show_default=True,
    help="Event subscriptions one token may hold across all its SSE streams and WebSockets.",
)
@click.option(
    "--max-concurrent-replays",
    envvar="BERTH_MAX_CONCURRENT_REPLAYS",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=MAX_CONCURRENT_REPLAYS,
    show_default=True,
    help="Event replays (history from ?since= or Last-Event-ID) read and encoded at once; "
    "the others wait their turn.",
)
@click.option(
    "--stream-queue-bytes",
    envvar="BERTH_STREAM_QUEUE_BYTES",
    show_envvar=True,
    type=click.IntRange(min=64 * 1024),
    default=STREAM_QUEUE_BYTES,
    show_default=True,
    help="Unsent event bytes a subscriber may fall behind by before it is cut off.",
)
@click.option(
    "--allowed-origins",
    envvar="BERTH_ALLOWED_ORIGINS",
    show_envvar=True,
    default="",
    help="Comma-separated browser origins (scheme://host:port) besides the scheduler's own "
    "that may open the WebSocket, e.g. a proxy's.",
)
@click.option(
    "--max-blob-bytes-per-token",
    envvar="BERTH_MAX_BLOB_BYTES_PER_TOKEN",
    show_envvar=True,
    type=click.IntRange(min=0),
    default=MAX_BLOB_BYTES_PER_TOKEN,
    show_default=True,
    help="Bytes of blobs a submit token may keep stored (0: no limit; admin and node "
    "tokens are exempt); an upload that could pass it is refused with 413 before it is read.",
)
@click.option(
    "--webhook-allow-private",
    envvar="BERTH_WEBHOOK_ALLOW_PRIVATE",
    show_envvar=True,
    is_flag=True,
    help="Let job webhooks call loopback and private addresses (link-local never).",
)
@click.option(
    "--header-timeout",
    envvar="BERTH_HEADER_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=HEADER_TIMEOUT_S,
    show_default=True,
    help="Seconds a request's header may take from its first byte (from the connection's "
    "opening, for its first request), and a request body may pause; past it the "
    "connection is closed (a stalled body gets 408).",
)
@click.option(
    "--keepalive-timeout",
    envvar="BERTH_KEEPALIVE_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=KEEPALIVE_TIMEOUT_S,
    show_default=True,
    help="Seconds an idle keep-alive connection is kept open.",
)
@click.option(
    "--max-unauthenticated-per-address",
    envvar="BERTH_MAX_UNAUTHENTICATED_PER_ADDRESS",
    show_envvar=True,
    type=click.IntRange(min=0),
    default=MAX_UNAUTHENTICATED_PER_ADDRESS,
    show_default=True,
    help="Connections one client address (an IPv6 one by its /64) may hold open before a "
    "request on them carried a valid token; past it new ones are closed at once (0: no cap).",
)
@click.option(
    "--unauthenticated-exempt",
    envvar="BERTH_UNAUTHENTICATED_EXEMPT",
    show_envvar=True,
    default=",".join(UNAUTHENTICATED_EXEMPT),
    show_default=True,
    help="Comma-separated networks (CIDR) that --max-unauthenticated-per-address does not "
    "count, e.g. a reverse proxy's address; empty: none.",
)
@click.option(
    "--fd-reserve",
    envvar="BERTH_FD_RESERVE",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=None,
    help="File descriptors kept free for the store, blobs and agents: within this many of "
    "the open-files limit, the oldest unauthenticated connections are closed and new "
    "ones wait.  [default: 1/16 of the limit, at least 64]",
)
@click.option(
    "--secrets-key-file",
    envvar="BERTH_SECRETS_KEY_FILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The key stored secrets are encrypted with (32 random bytes, base64; made when "
    "missing); give every scheduler sharing a PostgreSQL store the same file.  "
    "[default: secrets.key in the state directory]",
)
@server_tls_options
@click.option(
    "--log-level", envvar="BERTH_LOG_LEVEL", show_envvar=True, default="info", show_default=True
)
def scheduler(
    state_dir: Path,
    store: str,
    advertise_url: str,
    listen: str,
    strategy: str,
    heartbeat_interval: float,
    node_ttl: float,
    restart_grace: float,
    default_queue_timeout: float | None,
    queue_order: str,
    fair_share_half_life: float,
    preemption: str,
    reservations: int,
    node_choice: str,
    event_window: int,
    job_retention_days: float,
    blob_grace: float,
    retention_interval: float,
    history_interval: float,
    submit_rate: float,
    submit_burst: int,
    max_queued_jobs: int,
    max_queued_jobs_per_token: int | None,
    max_spec_bytes: int,
    ended_jobs_cached: int,
    max_spec_bytes_per_token: int,
    max_streams_per_token: int,
    max_subscriptions_per_token: int,
    max_concurrent_replays: int,
    stream_queue_bytes: int,
    allowed_origins: str,
    max_blob_bytes_per_token: int,
    webhook_allow_private: bool,
    header_timeout: float,
    keepalive_timeout: float,
    max_unauthenticated_per_address: int,
    unauthenticated_exempt: str,
    fd_reserve: int | None,
    secrets_key_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str,
) -> None:
    """Run the scheduler daemon.

    Every flag also reads the environment variable shown beside it.
    """
    from scheduler.app import serve

    tls = tls_pair(tls_cert, tls_key)
    exempt = _networks(unauthenticated_exempt)
    if store and not is_postgres_dsn(store):
        raise click.BadParameter(
            f"{store!r} is not a postgresql:// DSN (leave it empty for SQLite in the "
            "state directory)",
            param_hint="--store",
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = SchedulerConfig(
        state_dir=state_dir,
        listen=listen,
        strategy=cast(Literal["binpack", "spread"], strategy),
        heartbeat_interval_s=heartbeat_interval,
        node_ttl_s=node_ttl,
        restart_grace_s=restart_grace,
        default_queue_timeout_s=default_queue_timeout,
        queue_order=cast(Literal["fair", "fifo"], queue_order),
        fair_share_half_life_s=fair_share_half_life,
        preemption=preemption == "on",
        reservations=reservations,
        size_aware=node_choice == "size",
        event_window=event_window,
        job_retention_s=job_retention_days * 86400,
        blob_grace_s=blob_grace,
        retention_interval_s=retention_interval,
        history_interval_s=history_interval,
        submit_rate_per_s=submit_rate,
        submit_burst=submit_burst,
        max_queued_jobs=max_queued_jobs,
        max_queued_jobs_per_token=max_queued_jobs_per_token,
        max_spec_bytes=max_spec_bytes,
        ended_jobs_cached=ended_jobs_cached,
        max_spec_bytes_per_token=max_spec_bytes_per_token,
        max_streams_per_token=max_streams_per_token,
        max_subscriptions_per_token=max_subscriptions_per_token,
        max_concurrent_replays=max_concurrent_replays,
        stream_queue_bytes=stream_queue_bytes,
        allowed_origins=_origins(allowed_origins),
        max_blob_bytes_per_token=max_blob_bytes_per_token,
        webhook_allow_private=webhook_allow_private,
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
        store=store,
        advertise_url=advertise_url.rstrip("/"),
        header_timeout_s=header_timeout,
        keepalive_timeout_s=keepalive_timeout,
        max_unauthenticated_per_address=max_unauthenticated_per_address,
        unauthenticated_exempt=exempt,
        fd_reserve=fd_reserve,
        secrets_key_file=secrets_key_file,
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(config))
    except (TLSSetupError, SecretsKeyError) as e:
        raise click.ClickException(str(e)) from e
